"""Partitions that cover all of space (model.far_bound > 0): the kd-tree's boxes tile
the scene box as usual, then every face lying on the scene box is pushed to infinity, so the outer boxes
reach the far field and every point of space lies in exactly one box.

NOTE: why not cut the contracted cube (mip-NeRF 360's space) instead: a box of contracted space
is not convex in world space (an axis-aligned plane y_x = s, 0 < |s| < 1, pulls back to a bent
surface), so a straight ray can enter and leave it twice and a box's piece of a ray would not be
one segment; the exact compositing in ray order (segments.py) needs one segment per box. Boxes
stay convex in world space here, and each box contracts its own far side instead:
:func:`box_unit` maps a box with infinite faces onto its grid's unit cube, one axis at a time
(linear inside the scene box, 1 - 1/(1 + d/w) beyond it, C1 at the scene box's face).

Samples of a segment are spaced as the unbounded kind's (linear in distance up to the scene box's
half-size, uniform in disparity beyond: :func:`spaced_samples`), so a segment reaching
far_bound spends few samples far away.
"""
from __future__ import annotations

import torch

from ...render_ops import contraction

# Share of a box's unit range given to each of its infinite sides (the far field).
TAIL = 1.0 / 3.0


def open_outer_faces(bounds: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """bounds: [P, 2, 3] boxes tiling aabb [2, 3] -> the same boxes with every face on aabb's
    faces moved to -inf (min) or +inf (max): the boxes then tile all of space."""
    out = bounds.clone()
    a = aabb.to(bounds)
    lo, hi = out[:, 0], out[:, 1]
    lo[lo <= a[0]] = float("-inf")
    hi[hi >= a[1]] = float("inf")
    return out


def box_unit(pts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, aabb: torch.Tensor
             ) -> torch.Tensor:
    """Points of one box -> its grid's unit cube, axis by axis.

    pts: [n, 3] inside the box; lo, hi: [3] its bounds (infinite faces allowed); aabb: [2, 3]
    the scene box. A finite axis maps linearly ([lo, hi] -> [0, 1], as for a bounded box). On an
    axis with an infinite side, the part inside the scene box [c0, c1] maps linearly onto the
    middle of [0, 1] and each infinite side onto a TAIL-wide end by 1 - 1/(1 + d/w) (d: distance
    beyond c0 or c1; w chosen so the slope is continuous). Returns [n, 3] in [0, 1].
    """
    lo, hi = lo.to(pts), hi.to(pts)
    a = aabb.to(pts)
    open_lo, open_hi = torch.isinf(lo), torch.isinf(hi)
    c0 = torch.where(open_lo, a[0], lo)
    c1 = torch.where(open_hi, a[1], hi)
    e0 = open_lo.to(pts.dtype) * TAIL
    e1 = 1.0 - open_hi.to(pts.dtype) * TAIL
    width = c1 - c0
    slope = (e1 - e0) / width                                   # inner: du/dx
    w = TAIL / slope                                            # tails: du/dx = TAIL / w at 0
    inner = e0 + (pts - c0) * slope
    above = e1 + TAIL * (1.0 - 1.0 / (1.0 + (pts - c1).clamp_min(0) / w))
    below = e0 - TAIL * (1.0 - 1.0 / (1.0 + (c0 - pts).clamp_min(0) / w))
    u = torch.where(open_hi & (pts > c1), above, torch.where(open_lo & (pts < c0), below, inner))
    return u.clamp(0.0, 1.0)


def spaced_samples(t0: torch.Tensor, t1: torch.Tensor, n_samples: int, u: torch.Tensor | None,
                   ray_scale: torch.Tensor, unit: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified samples of segments, uniform in the unbounded kind's s-space (distance scaled
    by `unit`: linear up to `unit`, uniform in disparity beyond).

    t0, t1: [n_rays] the segments (along rays_d); u: [n_rays, n_samples] jitter in [0, 1) or None
    (bin centres); ray_scale: [n_rays] |rays_d|; unit: the scene box's half-size.
    Returns t_starts, t_ends, t_pos: [n_rays, n_samples] (along rays_d).
    """
    m = (ray_scale / unit)[:, None]                             # t -> distance in units
    g0, g1 = contraction.spacing(t0[:, None] * m), contraction.spacing(t1[:, None] * m)
    k = torch.arange(n_samples + 1, dtype=t0.dtype, device=t0.device) / n_samples
    edges = contraction.spacing_inv(g0 + (g1 - g0) * k) / m                  # [n, S + 1]
    # NOTE: the ends exactly, so consecutive boxes' segments still meet at the same t.
    edges[:, 0], edges[:, -1] = t0, t1
    frac = 0.5 if u is None else u.to(t0.dtype)
    gb = g0 + (g1 - g0) * (k[:-1] + frac / n_samples)
    pos = (contraction.spacing_inv(gb) / m).clamp(edges[:, :-1], edges[:, 1:])
    return edges[:, :-1], edges[:, 1:], pos


__all__ = ["TAIL", "box_unit", "open_outer_faces", "spaced_samples"]
