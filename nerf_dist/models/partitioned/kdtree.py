"""Cutting the scene box into P boxes: a kd-tree of median splits of points.

The points are whatever tells where the scene's content is: COLMAP sparse points when a scene has
them, otherwise sample points along training rays (:func:`ray_points`); any [n, 3] array. Each
split cuts one box in two at the quantile of its points that gives the halves counts of boxes in
proportion (the median for a power of two), on the axis whose children are closest to cubes. The
leaves tile the scene box exactly (no gaps, no overlaps), whatever the points.
"""
from __future__ import annotations

import torch

from ...render_ops import sampling

# How the partition was derived (stored with the model as a code): no points (even splits of the
# scene box), sample points along training rays, sparse (COLMAP) points.
SOURCES = ("even", "rays", "sparse")
# NOTE: a split plane is kept at least this fraction of the box's side from its faces, so that a
# box with (almost) no points is still split into boxes of usable size.
MIN_SIDE_FRAC = 0.05


def _aspect(lo: torch.Tensor, hi: torch.Tensor) -> float:
    """Longest over shortest side of the box [lo, hi] (1 for a cube)."""
    side = hi - lo
    return float(side.max() / side.min().clamp_min(1e-12))


def _split_at(coords: torch.Tensor, lo: float, hi: float, frac: float) -> float:
    """The plane on [lo, hi] leaving `frac` of coords below it (the middle fraction without
    points), kept MIN_SIDE_FRAC of the side away from either face."""
    if coords.numel():
        s = float(torch.quantile(coords.double(), frac))
    else:
        s = lo + frac * (hi - lo)
    m = MIN_SIDE_FRAC * (hi - lo)
    return min(max(s, lo + m), hi - m)


def kd_partition(points: torch.Tensor | None, aabb: torch.Tensor, partitions: int
                 ) -> torch.Tensor:
    """Box bounds [P, 2, 3] (min, max per box) tiling aabb [2, 3].

    points: [n, 3] (outside aabb ignored) or None (even splits). Boxes are listed in kd-tree order
    (the lower child's boxes first), a deterministic function of (points, aabb, P).
    """
    aabb = torch.as_tensor(aabb, dtype=torch.float64).reshape(2, 3)
    if points is None:
        pts = torch.zeros(0, 3, dtype=torch.float64)
    else:
        pts = torch.as_tensor(points).reshape(-1, 3).double()
        pts = pts[((pts >= aabb[0]) & (pts <= aabb[1])).all(-1)]
    out: list[torch.Tensor] = []

    def split(lo: torch.Tensor, hi: torch.Tensor, p: torch.Tensor, n_boxes: int) -> None:
        if n_boxes == 1:
            out.append(torch.stack([lo, hi]))
            return
        n_low = n_boxes // 2
        frac = n_low / n_boxes
        best = None
        for axis in range(3):
            s = _split_at(p[:, axis], float(lo[axis]), float(hi[axis]), frac)
            hi_a, lo_b = hi.clone(), lo.clone()
            hi_a[axis], lo_b[axis] = s, s
            score = max(_aspect(lo, hi_a), _aspect(lo_b, hi))
            if best is None or score < best[0] - 1e-12:
                best = (score, axis, s, hi_a, lo_b)
        _, axis, s, hi_a, lo_b = best
        below = p[:, axis] < s
        split(lo, hi_a, p[below], n_low)
        split(lo_b, hi, p[~below], n_boxes - n_low)

    split(aabb[0].clone(), aabb[1].clone(), pts, partitions)
    return torch.stack(out)


def ray_points(rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float,
               aabb: torch.Tensor, per_ray: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Points along rays where a field would be sampled: per_ray uniform samples of each ray's
    [near, far] ∩ aabb. rays_o, rays_d: [n_rays, 3] -> [m, 3] (rays missing the box give none)."""
    aabb = torch.as_tensor(aabb, dtype=rays_o.dtype).reshape(2, 3)
    d = torch.where(rays_d.abs() < 1e-10, torch.full_like(rays_d, 1e-10), rays_d)
    ta, tb = (aabb[0] - rays_o) / d, (aabb[1] - rays_o) / d
    t0 = torch.minimum(ta, tb).amax(-1).clamp_min(near)
    t1 = torch.maximum(ta, tb).amin(-1).clamp_max(far)
    u = sampling.uniform(rays_o.shape[0], per_ray, generator, rays_o.device).to(rays_o.dtype)
    t = t0[:, None] + u * (t1 - t0)[:, None]
    pts = rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]
    return pts[t1 > t0].reshape(-1, 3)


__all__ = ["MIN_SIDE_FRAC", "SOURCES", "kd_partition", "ray_points"]
