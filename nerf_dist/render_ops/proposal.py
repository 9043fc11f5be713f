"""Proposal sampling math (mip-NeRF 360, nerfacto): resampling intervals from a coarse histogram,
the interlevel loss that teaches the proposal histograms to bound the field's, and the distortion
loss. Plain functions of tensors.

Vocabulary: a ray's histogram is ``edges: [n_rays, k + 1]`` sorted interval edges (here in the
normalised s-space of :mod:`.contraction`) and ``weights: [n_rays, k]`` the volume-rendering
weight of each interval.
"""
from __future__ import annotations

import torch

from .sampling import uniform


def anneal(step: int, anneal_steps: int, slope: float = 10.0) -> float:
    """nerfacto's proposal-weight exponent at `step`: 0 at step 0 rising to 1 at anneal_steps
    (Schlick's bias curve of the training fraction, slope 10): early resampling is near uniform."""
    x = min(max(step / anneal_steps, 0.0), 1.0)
    return slope * x / ((slope - 1.0) * x + 1.0)


def resample_edges(edges: torch.Tensor, weights: torch.Tensor, n_samples: int, train: bool,
                   generator=None, eps: float = 1e-5) -> torch.Tensor:
    """New interval edges [n_rays, n_samples + 1] drawn from the piecewise-constant pdf of
    (edges [n_rays, k + 1], weights [n_rays, k]) by inverse transform sampling (no gradient).

    The n_samples + 1 quantiles are stratified: (i + u) / (n_samples + 1) with one u per ray drawn
    from `generator` in training (a torch.Generator or RowNoise), u = 0.5 otherwise. A small
    uniform floor (eps per interval) keeps every part of the ray reachable.
    """
    with torch.no_grad():
        n_rays = edges.shape[0]
        w = weights.detach() + eps
        cdf = torch.cumsum(w / w.sum(-1, keepdim=True), -1)
        cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf.clamp(max=1.0)], -1)   # [n, k + 1]
        m = n_samples + 1
        if train:
            u0 = uniform(n_rays, 1, generator, edges.device)
        else:
            u0 = torch.full((n_rays, 1), 0.5, device=edges.device)
        u = ((torch.arange(m, device=edges.device, dtype=edges.dtype)[None] + u0) / m)
        u = u.clamp(max=1.0 - 1e-6).contiguous()
        idx = torch.searchsorted(cdf.contiguous(), u, right=True)
        lo = (idx - 1).clamp(0, cdf.shape[-1] - 1)
        hi = idx.clamp(0, cdf.shape[-1] - 1)
        c0, c1 = cdf.gather(1, lo), cdf.gather(1, hi)
        e0, e1 = edges.gather(1, lo), edges.gather(1, hi)
        frac = ((u - c0) / (c1 - c0).clamp(min=1e-12)).clamp(0.0, 1.0)
        out = e0 + frac * (e1 - e0)
        # NOTE: the first and last edges are pinned to the ray's ends, so the field's histogram
        # covers the whole ray as the proposal's did.
        out = torch.cat([edges[:, :1], out[:, 1:-1], edges[:, -1:]], -1)
        return torch.sort(out, -1).values


def outer_weights(edges: torch.Tensor, edges_p: torch.Tensor, weights_p: torch.Tensor) -> torch.Tensor:
    """For each interval of (edges [n_rays, k + 1]), the sum of the proposal weights (weights_p
    [n_rays, m] over edges_p [n_rays, m + 1]) of every proposal interval that overlaps it
    (edges_p[j] < edges[i + 1] and edges_p[j + 1] > edges[i]). Returns [n_rays, k]."""
    cw = torch.cat([torch.zeros_like(weights_p[:, :1]), torch.cumsum(weights_p, -1)], -1)
    m = weights_p.shape[-1]
    ep = edges_p.contiguous()
    # first overlapping proposal interval: (number of proposal edges <= edges[i]) - 1
    lo = (torch.searchsorted(ep, edges[:, :-1].contiguous(), right=True) - 1).clamp(0, m)
    # one past the last: number of proposal edges < edges[i + 1]
    hi = torch.searchsorted(ep, edges[:, 1:].contiguous(), right=False).clamp(0, m)
    hi = torch.maximum(hi, lo)
    return cw.gather(1, hi) - cw.gather(1, lo)


def interlevel_loss(edges: torch.Tensor, weights: torch.Tensor, edges_p: torch.Tensor,
                    weights_p: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mip-NeRF 360's proposal loss, per ray: sum_i max(0, w_i - W_i)^2 / (w_i + eps), W_i the
    proposal weight overlapping field interval i (:func:`outer_weights`). The field's weights are
    a fixed target (detached); the gradient reaches only the proposal.

    edges [n_rays, k + 1], weights [n_rays, k]; edges_p [n_rays, m + 1], weights_p [n_rays, m].
    Returns [n_rays].
    """
    w = weights.detach()
    W = outer_weights(edges.detach(), edges_p.detach(), weights_p)
    return (torch.clamp(w - W, min=0.0) ** 2 / (w + eps)).sum(-1)


def distortion_loss(edges: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360's distortion loss, per ray, in O(k):
    sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i), m_i the interval midpoints.

    edges [n_rays, k + 1] sorted, weights [n_rays, k]. Returns [n_rays].
    """
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    return distortion_loss_mw(mid, edges[:, 1:] - edges[:, :-1], weights)


def distortion_loss_mw(mid: torch.Tensor, width: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`distortion_loss` of intervals given by their midpoints mid [n_rays, k] (sorted) and
    widths width [n_rays, k] (they need not tile the ray: gaps are allowed, as after empty-space
    skipping); weights [n_rays, k]. Returns [n_rays]."""
    wm = weights * mid
    # NOTE: sum_{i,j} w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_{<i} - (wm)_{<i}) for sorted m.
    w_before = torch.cumsum(weights, -1) - weights
    wm_before = torch.cumsum(wm, -1) - wm
    cross = 2.0 * (weights * (mid * w_before - wm_before)).sum(-1)
    return cross + (weights ** 2 * width).sum(-1) / 3.0


__all__ = ["anneal", "resample_edges", "outer_weights", "interlevel_loss", "distortion_loss",
           "distortion_loss_mw"]
