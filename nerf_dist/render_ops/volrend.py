"""Pure volume rendering: densities and intervals -> alpha, transmittance, weights -> rgb, depth, acc.

Vocabulary: n_rays rays, n_samples samples per ray; sample k covers the interval
[t_starts[k], t_ends[k]] along a ray with unit direction (metric distances) and has density
sigma[k] and colour rgb[k]. Padded samples simply have zero-length intervals or zero density.
"""
from __future__ import annotations

import torch


def render_weights(sigma: torch.Tensor, deltas: torch.Tensor):
    """Quadrature weights of the volume rendering integral.

    sigma: [n_rays, n_samples] non-negative densities; deltas: [n_rays, n_samples] interval lengths.
    Returns weights, transmittance (before each sample), alpha: each [n_rays, n_samples].
    alpha_k = 1 - exp(-sigma_k * delta_k); T_k = exp(-sum_{j<k} sigma_j delta_j); w_k = T_k alpha_k.
    """
    tau = sigma * deltas
    alpha = 1.0 - torch.exp(-tau)
    # NOTE: exclusive cumsum in log space is exact and stabler than a cumprod of (1 - alpha).
    acc_tau = torch.cumsum(tau, dim=-1)
    trans = torch.exp(-torch.cat([torch.zeros_like(acc_tau[..., :1]), acc_tau[..., :-1]], -1))
    return trans * alpha, trans, alpha


def composite(weights: torch.Tensor, rgb: torch.Tensor, t_mid: torch.Tensor,
              background: torch.Tensor | None = None):
    """Accumulate samples along rays.

    weights: [n_rays, n_samples]; rgb: [n_rays, n_samples, 3]; t_mid: [n_rays, n_samples] sample
    distances; background: [3] colour seen through the remaining transmittance (or None = black).
    Returns rgb [n_rays, 3], depth [n_rays] (expected distance, sum w*t, i.e. 0 for empty rays),
    acc [n_rays] (opacity, sum w).
    """
    acc = weights.sum(-1)
    out_rgb = (weights[..., None] * rgb).sum(-2)
    if background is not None:
        out_rgb = out_rgb + (1.0 - acc)[..., None] * background.to(out_rgb)
    depth = (weights * t_mid).sum(-1)
    return out_rgb, depth, acc


def median_depth(weights: torch.Tensor, t_mid: torch.Tensor) -> torch.Tensor:
    """[n_rays] the distance t_mid [n_rays, n_samples] of the first sample at which the weights'
    running sum reaches half their total (0 for an empty ray).

    NOTE: the expected depth sum(w t) / sum(w) is pulled far out by a small weight tail at large
    t (an unbounded scene's samples reach model.far_bound); the median is not.
    """
    cw = torch.cumsum(weights, -1)
    half = 0.5 * cw[..., -1:]
    k = torch.searchsorted(cw.contiguous(), half.contiguous()).clamp(max=t_mid.shape[-1] - 1)
    return torch.where(half[..., 0] > 0, t_mid.gather(-1, k)[..., 0], torch.zeros_like(half[..., 0]))


def render_rays(sigma: torch.Tensor, rgb: torch.Tensor, t_starts: torch.Tensor,
                t_ends: torch.Tensor, background: torch.Tensor | None = None) -> dict:
    """sigma: [n_rays, n_samples]; rgb: [n_rays, n_samples, 3]; t_starts, t_ends: [n_rays, n_samples].

    Returns dict(rgb [n_rays, 3], depth [n_rays], acc [n_rays], weights [n_rays, n_samples]).
    """
    weights, _, _ = render_weights(sigma, t_ends - t_starts)
    out_rgb, depth, acc = composite(weights, rgb, 0.5 * (t_starts + t_ends), background)
    return {"rgb": out_rgb, "depth": depth, "acc": acc, "weights": weights}
