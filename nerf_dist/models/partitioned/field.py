"""A box's field (its own hash grid + density network) and the colour head every box shares.

BoxField: u [n, 3] points in the box's unit cube -> sigma [n] >= 0, geo [n, geo_features].
ColourHead: geo [n, geo_features], d [n, 3] unit directions -> rgb [n, 3] in (0, 1).
The layers are those of :class:`nerf_dist.models.hashgrid.field.HashField`, split in two.
"""
from __future__ import annotations

import torch
from torch import nn

from ..hashgrid.encoding import HashGridEncoding
from ..hashgrid.field import spherical_harmonics, trunc_exp


class BoxField(nn.Module):
    """Hash grid over one box's unit cube -> Linear(L*F, hidden) ReLU Linear(hidden, 1 + geo)."""

    def __init__(self, cfg):
        super().__init__()
        self.encoding = HashGridEncoding(cfg.hash_levels, cfg.hash_features, cfg.hash_log2_size,
                                         cfg.hash_base_res, cfg.hash_max_res)
        self.density_mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, cfg.hidden), nn.ReLU(),
                                         nn.Linear(cfg.hidden, 1 + cfg.geo_features))

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """u: [n, 3] in [0, 1]^3 -> features [n, L*F] in the table's dtype."""
        table = self.encoding.table
        if table.dtype == torch.float32:
            return self.encoding(u)
        # NOTE: the encoding's fused gather computes in fp32; other dtypes (the float64 of the
        # equivalence tests) gather through plain autograd.
        idx, wc = self.encoding.corners(u)
        L, Fd = self.encoding.n_levels, self.encoding.n_features
        rows = table.reshape(-1, Fd)[idx]                                          # [n, L, 8, F]
        return (wc.to(table.dtype)[..., None] * rows).sum(-2).reshape(u.shape[0], L * Fd)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.density_mlp(self.encode(u))
        return trunc_exp(h[:, 0]), h[:, 1:]


class ColourHead(nn.Module):
    """[geo, SH(d)] -> Linear(geo + 16, hidden) ReLU Linear(hidden, hidden) ReLU Linear(hidden, 3),
    sigmoid: the colour network every box shares."""

    def __init__(self, cfg):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cfg.geo_features + 16, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, 3))

    def forward(self, geo: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        sh = spherical_harmonics(d).to(geo.dtype)
        return torch.sigmoid(self.mlp(torch.cat([geo, sh], -1)))


__all__ = ["BoxField", "ColourHead"]
