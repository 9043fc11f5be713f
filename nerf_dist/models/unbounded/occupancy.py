"""model.sampler=occupancy: nerfacc-style empty-space skipping on contracted space, a fixed number
of field samples per ray.

The grid is the fast kind's :class:`OccupancyGrid` over the contracted cube [-2, 2]^3 (its aabb),
so one res^3 grid covers all of space, the far field in ever larger cells (in scene units).

Marching (:func:`march`), per ray:
  1. model.occupancy_steps intervals uniform in s-space (:mod:`render_ops.contraction`), one
     jitter per ray in training as the proposal sampler's first level; an interval is occupied
     when its midpoint (contracted) lies in an occupied cell;
  2. the occupied intervals, laid end to end, form the ray's occupied stretch of length C (in s);
     k = model.field_samples samples sit at C (j + 1/2) / k, j = 0 .. k - 1, each snapped to the
     midpoint of the occupied interval it falls in (so every sample lies in an occupied cell);
  3. sample j stands for the occupied stretch [C j / k, C (j + 1) / k]: its width in s is C / k,
     and its metric length (the volume-rendering delta) the scene length of the occupied
     intervals (or parts) that stretch covers.
A ray with no occupied interval gets k samples of zero length (zero weight: the background).

Grid density (:func:`density_per_s`): the field's sigma (per scene unit) times dt/ds at the cell,
so that the grid's opacity test, 1 - exp(-sigma_s / field_samples) > 0.01, asks for the opacity of
one field sample there (when the whole ray is occupied), near and far alike.

NOTE: not one march step (1 / occupancy_steps): a freshly initialised field (sigma ~ 1 per scene
unit) is below 0.01 per march step everywhere within a scene unit, and a cell once empty is never
sampled, so never trained: the first update emptied the whole near field (the objects' region)
and the run stayed at the mean-colour PSNR (measured on the unbounded demo scene).
"""
from __future__ import annotations

import torch

from ...render_ops import contraction
from ...render_ops.sampling import uniform
from ..hashgrid.occupancy import OccupancyGrid

CUBE = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))


def contracted_grid(res: int, samples: int, update_every: int) -> OccupancyGrid:
    """An occupancy grid over the contracted cube whose opacity test uses one field sample's
    length when the whole ray is occupied (1 / samples in s)."""
    return OccupancyGrid(torch.tensor(CUBE), res, 1.0 / samples, update_every=update_every)


def density_per_s(sigma_unit, y: torch.Tensor, order: str, far_bound: float) -> torch.Tensor:
    """sigma_unit: unit-cube points [m, 3] -> sigma [m] (the field's density, per scene unit);
    y: [m, 3] contracted points. Returns [m] the density per unit of s at y.

    NOTE: dt/ds = (g(far) - g(0)) dt/dg, dt/dg = 2 below t = 1 and 2 t^2 beyond; the point's
    distance from the scene centre stands in for t (the cameras sit near the centre), which is
    what matters far away where dt/ds grows as t^2."""
    x = contraction.uncontract(y, order)
    t = x.norm(dim=-1).clamp(min=1.0)
    g_range = 1.0 - 0.5 / far_bound                                  # g(far) - g(0)
    return sigma_unit((y + 2.0) / 4.0).float() * (2.0 * t * t * g_range)


@torch.no_grad()
def march(grid: OccupancyGrid, order: str, rays_o: torch.Tensor, dirs: torch.Tensor,
          near: torch.Tensor, far: torch.Tensor, steps: int, k: int, train: bool,
          generator=None) -> dict[str, torch.Tensor]:
    """Samples in occupied cells, k per ray, sorted along the ray (no gradient).

    rays_o, dirs: [n, 3] (dirs unit length); near, far: [n, 1] scene distances.
    Returns s [n, k] (sample positions in s-space), width [n, k] (s-length each stands for),
    t [n, k] (distances along dirs), delta [n, k] (scene length each stands for, >= 0).
    """
    n, dev = rays_o.shape[0], rays_o.device
    base = torch.linspace(0.0, 1.0, steps + 1, device=dev).expand(n, steps + 1)
    if train:
        # NOTE: as the proposal sampler's first level: one shift per ray, at most half a step.
        u = (uniform(n, 1, generator, dev) - 0.5) / steps
        base = torch.cat([base[:, :1], base[:, 1:-1] + u, base[:, -1:]], -1)
    te = contraction.s_to_t(base, near, far)                                    # [n, S + 1]
    s_mid = 0.5 * (base[:, 1:] + base[:, :-1])
    t_mid = contraction.s_to_t(s_mid, near, far)                                 # [n, S]
    pts = rays_o[:, None, :] + dirs[:, None, :] * t_mid[..., None]
    occ = grid.query(contraction.contract(pts.reshape(-1, 3), order)).view(n, steps).float()
    len_s = (base[:, 1:] - base[:, :-1]) * occ
    len_t = (te[:, 1:] - te[:, :-1]) * occ
    zero = torch.zeros(n, 1, device=dev)
    cs = torch.cat([zero, len_s.cumsum(-1)], -1)                                 # [n, S + 1]
    ct = torch.cat([zero, len_t.cumsum(-1)], -1)
    total = cs[:, -1:]                                                           # [n, 1]
    j = torch.arange(k + 1, device=dev, dtype=base.dtype)[None]
    c_edges = total * j / k                                                      # [n, k + 1]
    c_mid = 0.5 * (c_edges[:, 1:] + c_edges[:, :-1])

    def interval(c):
        """The march interval that occupied-length c falls in: index [n, m] and the fraction."""
        i = (torch.searchsorted(cs.contiguous(), c.contiguous(), right=True) - 1).clamp(0, steps - 1)
        frac = ((c - cs.gather(1, i)) / len_s.gather(1, i).clamp(min=1e-12)).clamp(0.0, 1.0)
        return i, frac

    i_mid, _ = interval(c_mid)
    i_edge, frac = interval(c_edges)
    # NOTE: linear in t within one march interval, exact at every interval's ends.
    t_edge = ct.gather(1, i_edge) + frac * len_t.gather(1, i_edge)
    return {"s": s_mid.gather(1, i_mid), "width": (c_edges[:, 1:] - c_edges[:, :-1]),
            "t": t_mid.gather(1, i_mid), "delta": (t_edge[:, 1:] - t_edge[:, :-1]).clamp(min=0.0)}


__all__ = ["CUBE", "contracted_grid", "density_per_s", "march"]
