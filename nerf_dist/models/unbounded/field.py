"""The unbounded kind's networks, all on contracted space (:mod:`nerf_dist.render_ops.contraction`):

- :class:`ContractedField`: the radiance field, a hash grid (the fast kind's encoding) on
  contracted points, a density MLP, and a colour MLP on [geo features, SH(d), appearance];
- :class:`ProposalDensity`: a small hash grid + one-hidden-layer MLP giving only density, one per
  proposal level.

Nothing is zeroed outside a box: contract() maps all of space into [-2, 2]^3, normalised to the
unit cube the encoding reads.
"""
from __future__ import annotations

import torch
from torch import nn

from ...render_ops.contraction import contract
from ..hashgrid.encoding import HashGridEncoding
from ..hashgrid.field import spherical_harmonics, trunc_exp


def to_unit_cube(x: torch.Tensor, order: str) -> torch.Tensor:
    """x: [n, 3] scene points -> [n, 3] contracted and normalised into [0, 1]^3."""
    return (contract(x.float(), order) + 2.0) / 4.0


class ProposalDensity(nn.Module):
    """x [n, 3] scene points -> sigma [n] >= 0 (fp32). Hash grid (L levels, 2 features, base
    resolution 16 up to max_res) -> Linear(2L, hidden) ReLU Linear(hidden, 1) -> trunc_exp."""

    def __init__(self, order: str, n_levels: int, log2_size: int, max_res: int, hidden: int):
        super().__init__()
        self.order = order
        self.encoding = HashGridEncoding(n_levels, 2, log2_size, min(16, max_res), max_res)
        self.mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.encoding(to_unit_cube(x, self.order)))
        return trunc_exp(h[:, 0].float())


class ContractedField(nn.Module):
    """forward(x [n, 3] scene points, d [n, 3] unit directions, app [n, appearance_dim] or None)
    -> rgb [n, 3] in (0, 1), sigma [n] >= 0.

    Density MLP: Linear(L*F, hidden) ReLU Linear(hidden, 1 + geo_features); sigma = trunc_exp.
    Colour MLP: Linear(geo_features + 16 + appearance_dim, hidden) ReLU Linear(hidden, hidden)
    ReLU Linear(hidden, 3), sigmoid.
    """

    def __init__(self, order: str, n_levels: int, n_features: int, log2_size: int, base_res: int,
                 max_res: int, hidden: int, geo_features: int, appearance_dim: int):
        super().__init__()
        self.order = order
        self.encoding = HashGridEncoding(n_levels, n_features, log2_size, base_res, max_res)
        self.density_mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 1 + geo_features))
        self.color_mlp = nn.Sequential(nn.Linear(geo_features + 16 + appearance_dim, hidden),
                                       nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                       nn.Linear(hidden, 3))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, 3] -> sigma [n] (fp32)."""
        return self.density_unit(to_unit_cube(x, self.order))

    def density_unit(self, u: torch.Tensor) -> torch.Tensor:
        """u: [n, 3] contracted points normalised into [0, 1]^3 -> sigma [n] (fp32)."""
        h = self.density_mlp(self.encoding(u))
        return trunc_exp(h[:, 0].float())

    def forward(self, x: torch.Tensor, d: torch.Tensor, app: torch.Tensor | None = None):
        h = self.density_mlp(self.encoding(to_unit_cube(x, self.order)))
        # NOTE: the activation runs in fp32 even under autocast: exp of a bf16 logit is too coarse.
        sigma = trunc_exp(h[:, 0].float())
        parts = [h[:, 1:], spherical_harmonics(d.float()).to(h.dtype)]
        if app is not None:
            parts.append(app.to(h.dtype))
        rgb = torch.sigmoid(self.color_mlp(torch.cat(parts, -1)).float())
        return rgb, sigma


__all__ = ["ContractedField", "ProposalDensity", "to_unit_cube"]
