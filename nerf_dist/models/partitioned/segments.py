"""Pure math of a field split in space: each ray's segment in each box, a box's samples in its
segment, the segment's reduction to a few numbers, and the exact compositing of the segments in
ray order (NeRF-XL, Li et al. 2024).

Vocabulary: P boxes with bounds [P, 2, 3]; a ray's segment in box k is [t0_k, t1_k] (along rays_d,
in its units; t1 = t0 when the ray misses the box). A segment reduces to SEG_WIDTH numbers:
colour C_k [3], optical depth tau_k (T_k = exp(-tau_k)), opacity acc_k, depth_k (sum w t) and the
segment's own distortion D_k, all with the segment's local weights (as if it were the whole ray).
Composited with the transmittance of the segments before it, Tp_k = prod_{j before k} T_j:
    C = sum_k Tp_k C_k,  acc = sum_k Tp_k acc_k,  depth = sum_k Tp_k depth_k,
    distortion = sum_k Tp_k^2 D_k + 2 sum_{a before b} (W_a S_b - S_a W_b),
with W_k = Tp_k acc_k, S_k = Tp_k depth_k (the cross terms of sum_ij w_i w_j |m_i - m_j| between
two segments, every sample of a lying before every sample of b). These equal the direct
computation over all samples of the ray in order (tests/test_partition.py).
"""
from __future__ import annotations

import torch

from ...render_ops import proposal, volrend

# Columns of a segment's reduction: rgb (3), tau, acc, depth, distortion, s-moment (sum of w s:
# the distortion's cross-box terms, in normalised distance s).
SEG_WIDTH = 8


def ray_box_segments(rays_o: torch.Tensor, rays_d: torch.Tensor, bounds: torch.Tensor,
                     near, far) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ray's segment in each box, clipped to [near, far].

    rays_o, rays_d: [n_rays, 3]; bounds: [P, 2, 3]; near, far: floats or [n_rays].
    Returns t0, t1: [n_rays, P] with t1 = t0 for a box the ray misses.
    NOTE: a direction component |d| < 1e-10 is taken as +1e-10, so a ray lying in a split plane
    belongs to the box above the plane only (boxes are half-open [lo, hi) for such rays), and the
    two boxes of a split compute a crossing ray's exit and entry from the same plane value, so
    consecutive segments meet exactly.
    """
    n = rays_o.shape[0]
    b = bounds.to(rays_o.dtype)
    d = torch.where(rays_d.abs() < 1e-10, torch.full_like(rays_d, 1e-10), rays_d)
    ta = (b[None, :, 0, :] - rays_o[:, None, :]) / d[:, None, :]                 # [n, P, 3]
    tb = (b[None, :, 1, :] - rays_o[:, None, :]) / d[:, None, :]
    near = torch.as_tensor(near, dtype=rays_o.dtype, device=rays_o.device).reshape(-1, 1)
    far = torch.as_tensor(far, dtype=rays_o.dtype, device=rays_o.device).reshape(-1, 1)
    t0 = torch.maximum(torch.minimum(ta, tb).amax(-1), near.expand(n, 1))
    t1 = torch.minimum(torch.maximum(ta, tb).amin(-1), far.expand(n, 1))
    return t0, torch.maximum(t1, t0)


def segment_samples(t0: torch.Tensor, t1: torch.Tensor, n_samples: int,
                    u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified samples of segments: n_samples equal bins of [t0, t1], one point per bin
    (jittered by u in [0, 1), bin centres when u is None).

    t0, t1: [n_rays]; u: [n_rays, n_samples] or None.
    Returns t_starts, t_ends, t_pos: [n_rays, n_samples] (bins and the points in them).
    """
    k = torch.arange(n_samples + 1, dtype=t0.dtype, device=t0.device) / n_samples
    edges = t0[:, None] + (t1 - t0)[:, None] * k                               # [n, S + 1]
    ts, te = edges[:, :-1], edges[:, 1:]
    frac = 0.5 if u is None else u.to(t0.dtype)
    return ts, te, ts + (te - ts) * frac


def distortion(weights: torch.Tensor, t_pos: torch.Tensor, t_starts: torch.Tensor,
               t_ends: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360's distortion of samples sorted along each ray:
    sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t_end_i - t_start_i).

    weights, t_pos (the points m), t_starts, t_ends: [n_rays, n_samples] -> [n_rays].
    (render_ops.proposal.distortion_loss_mw with midpoints t_pos and widths t_ends - t_starts.)
    """
    return proposal.distortion_loss_mw(t_pos, t_ends - t_starts, weights)


def reduce_segment(sigma: torch.Tensor, rgb: torch.Tensor, t_starts: torch.Tensor,
                   t_ends: torch.Tensor, t_pos: torch.Tensor, scale: torch.Tensor,
                   s: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """One box's samples of each ray -> the segment's reduction [n_rays, SEG_WIDTH].

    sigma: [n_rays, n_samples] densities (per metric unit); rgb: [n_rays, n_samples, 3];
    t_starts, t_ends, t_pos: [n_rays, n_samples] (along rays_d); scale: [n_rays] |rays_d|.
    s: the same samples' (s_starts, s_ends, s_pos) in normalised ray distance, where the
    distortion is measured (model.distortion_weight); None: t itself.
    """
    delta = (t_ends - t_starts) * scale[:, None]
    w, _, _ = volrend.render_weights(sigma, delta)
    tau = (sigma * delta).sum(-1)
    s_starts, s_ends, s_pos = s if s is not None else (t_starts, t_ends, t_pos)
    return torch.cat([(w[..., None] * rgb).sum(-2), tau[:, None], w.sum(-1, keepdim=True),
                      (w * t_pos).sum(-1, keepdim=True),
                      distortion(w, s_pos, s_starts, s_ends)[:, None],
                      (w * s_pos).sum(-1, keepdim=True)], -1)


def ray_order(t0: torch.Tensor) -> torch.Tensor:
    """before[n, k, j]: box j's segment comes before box k's on ray n (entry t0_j < t0_k, ties by
    box index). t0: [n_rays, P] -> bool [n_rays, P, P].
    NOTE: only non-empty segments can be in front of one another, and two non-empty segments of
    non-overlapping boxes never share an entry point; a missed box (tau = 0) is transparent
    wherever it sorts, so the tie rule only has to be deterministic."""
    P = t0.shape[1]
    idx = torch.arange(P, device=t0.device)
    tj, tk = t0[:, None, :], t0[:, :, None]
    return (tj < tk) | ((tj == tk) & (idx[None, :] < idx[:, None])[None])


def composite_segments(seg: torch.Tensor, t0: torch.Tensor,
                       background: torch.Tensor | None = None) -> dict:
    """Composite the boxes' segments of each ray in ray order.

    seg: [n_rays, P, SEG_WIDTH] (:func:`reduce_segment` of every box); t0: [n_rays, P] entries.
    Returns rgb [n_rays, 3] (over background [3] if given), depth, acc, distortion [n_rays] and
    trans_before [n_rays, P] (Tp_k, the light reaching box k's segment).
    """
    C, tau, acc_k, depth_k, dist_k = seg[..., :3], seg[..., 3], seg[..., 4], seg[..., 5], seg[..., 6]
    s_k = seg[..., 7]
    before = ray_order(t0).to(seg.dtype)                                          # [n, P, P]
    tp = torch.exp(-(before * tau[:, None, :]).sum(-1))                           # [n, P]
    rgb = (tp[..., None] * C).sum(1)
    acc = (tp * acc_k).sum(1)
    depth = (tp * depth_k).sum(1)
    W, S = tp * acc_k, tp * s_k
    # cross[n, b, a] = W_a S_b - S_a W_b for a before b.
    cross = before * (W[:, None, :] * S[:, :, None] - S[:, None, :] * W[:, :, None])
    dist = (tp ** 2 * dist_k).sum(1) + 2.0 * cross.sum((1, 2))
    if background is not None:
        rgb = rgb + (1.0 - acc)[:, None] * background.to(rgb)
    return {"rgb": rgb, "depth": depth, "acc": acc, "distortion": dist, "trans_before": tp}


__all__ = ["SEG_WIDTH", "composite_segments", "distortion", "ray_box_segments", "ray_order",
           "reduce_segment", "segment_samples"]
