"""Frequency (positional) encoding of the NeRF paper: x -> [x, sin(2^k x), cos(2^k x)]."""
from __future__ import annotations

import torch
from torch import nn


class FrequencyEncoding(nn.Module):
    """gamma(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)].

    x: [..., d] -> [..., d * (1 + 2L)] (input included, as in the NeRF paper's code).
    """

    def __init__(self, n_freqs: int, include_input: bool = True):
        super().__init__()
        self.n_freqs = n_freqs
        self.include_input = include_input
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs, dtype=torch.float32),
                             persistent=False)

    def out_dim(self, in_dim: int) -> int:
        return in_dim * (int(self.include_input) + 2 * self.n_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x] if self.include_input else []
        if self.n_freqs:
            xf = x[..., None, :] * self.freqs[:, None]            # [..., L, d]
            sc = torch.stack([torch.sin(xf), torch.cos(xf)], -2)  # [..., L, 2, d]
            parts.append(sc.flatten(-3))
        return torch.cat(parts, -1)


__all__ = ["FrequencyEncoding"]
