"""Pure sampling along rays: stratified samples and importance (inverse-CDF) samples."""
from __future__ import annotations

import torch


def stratified(n_rays: int, n_samples: int, near, far, perturb: bool,
               generator=None, device=None):
    """Stratified samples: [near, far] cut into n_samples equal bins, one sample per bin.

    near, far: floats or [n_rays] tensors. With perturb the sample is uniform in its bin, else at
    its centre. Returns t: [n_rays, n_samples] sample distances and bins: [n_rays, n_samples + 1]
    bin edges (t_starts = bins[:, :-1], t_ends = bins[:, 1:]).
    """
    near = torch.as_tensor(near, dtype=torch.float32, device=device).reshape(-1, 1)
    far = torch.as_tensor(far, dtype=torch.float32, device=device).reshape(-1, 1)
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=device)
    bins = (near + (far - near) * u).expand(n_rays, n_samples + 1)
    if perturb:
        r = uniform(n_rays, n_samples, generator, bins.device)
    else:
        r = torch.full((n_rays, n_samples), 0.5, device=bins.device)
    t = bins[:, :-1] + (bins[:, 1:] - bins[:, :-1]) * r
    return t, bins.contiguous()


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_importance: int, deterministic: bool,
               generator=None, eps: float = 1e-5) -> torch.Tensor:
    """Inverse-transform sampling of a piecewise-constant pdf over bins.

    bins: [n_rays, n_bins + 1] edges; weights: [n_rays, n_bins] (need not be normalised).
    Returns t: [n_rays, n_importance] samples, denser where the weights are larger, sorted.
    """
    weights = weights.detach() + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)      # [n_rays, n_bins + 1]
    n_rays = bins.shape[0]
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_importance, device=bins.device).expand(n_rays, n_importance)
    else:
        u = uniform(n_rays, n_importance, generator, bins.device)
    u = u.contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    cdf_b, cdf_a = cdf.gather(1, below), cdf.gather(1, above)
    bin_b, bin_a = bins.gather(1, below), bins.gather(1, above)
    denom = cdf_a - cdf_b
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    frac = (u - cdf_b) / denom
    t = bin_b + frac * (bin_a - bin_b)
    return torch.sort(t, -1).values


def intervals(t: torch.Tensor, near, far):
    """Sorted sample distances -> intervals bounded by the midpoints between neighbours.

    t: [n_rays, n_samples] sorted. Returns t_starts, t_ends: [n_rays, n_samples] with
    t_starts[:, 0] = near and t_ends[:, -1] = far (clamped so every interval is non-negative).
    """
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    near = torch.as_tensor(near, dtype=t.dtype, device=t.device).reshape(-1, 1).expand(t.shape[0], 1)
    far = torch.as_tensor(far, dtype=t.dtype, device=t.device).reshape(-1, 1).expand(t.shape[0], 1)
    starts = torch.cat([torch.minimum(near, t[:, :1]), mids], -1)
    ends = torch.cat([mids, torch.maximum(far, t[:, -1:])], -1)
    return starts, ends


class RowNoise:
    """Random numbers for a rank's rows of a global batch, independent of the number of ranks.

    Every rank draws the noise of the whole global batch ([n_global, n_cols], from a generator
    seeded by (seed, step)) and keeps its own rows, so 1 rank and N ranks jitter each ray the same
    way. index: [n_rays] positions of this rank's rays in the global batch.
    """

    def __init__(self, seed: int, n_global: int, index: torch.Tensor):
        self.gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
        self.n_global = n_global
        self.index = index.cpu()

    def rand(self, n_rows: int, n_cols: int, device=None) -> torch.Tensor:
        assert n_rows == self.index.numel(), "RowNoise used with a different number of rays"
        return torch.rand(self.n_global, n_cols, generator=self.gen)[self.index].to(device)

    def randn(self, n_rows: int, n_cols: int, device=None) -> torch.Tensor:
        assert n_rows == self.index.numel(), "RowNoise used with a different number of rays"
        return torch.randn(self.n_global, n_cols, generator=self.gen)[self.index].to(device)


def uniform(n_rows: int, n_cols: int, generator=None, device=None) -> torch.Tensor:
    """U[0, 1) noise [n_rows, n_cols] from a torch.Generator, a RowNoise, or the global RNG."""
    if isinstance(generator, RowNoise):
        return generator.rand(n_rows, n_cols, device)
    gdev = generator.device if generator is not None else device
    return torch.rand(n_rows, n_cols, generator=generator, device=gdev).to(device)


def normal(n_rows: int, n_cols: int, generator=None, device=None) -> torch.Tensor:
    """N(0, 1) noise [n_rows, n_cols]; see :func:`uniform`."""
    if isinstance(generator, RowNoise):
        return generator.randn(n_rows, n_cols, device)
    gdev = generator.device if generator is not None else device
    return torch.randn(n_rows, n_cols, generator=generator, device=gdev).to(device)
