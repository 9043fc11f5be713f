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


def render_rays(sigma: torch.Tensor, rgb: torch.Tensor, t_starts: torch.Tensor,
                t_ends: torch.Tensor, background: torch.Tensor | None = None) -> dict:
    """sigma: [n_rays, n_samples]; rgb: [n_rays, n_samples, 3]; t_starts, t_ends: [n_rays, n_samples].

    Returns dict(rgb [n_rays, 3], depth [n_rays], acc [n_rays], weights [n_rays, n_samples]).
    """
    weights, _, _ = render_weights(sigma, t_ends - t_starts)
    out_rgb, depth, acc = composite(weights, rgb, 0.5 * (t_starts + t_ends), background)
    return {"rgb": out_rgb, "depth": depth, "acc": acc, "weights": weights}
