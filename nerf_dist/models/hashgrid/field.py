"""The hash-grid radiance field: hash-grid encoding + small MLPs (instant-ngp style).

forward(x [n, 3] world points, d [n, 3] unit view directions) -> rgb [n, 3] in (0, 1), sigma [n] >= 0.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoding import HashGridEncoding


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): instant-ngp's density activation."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def spherical_harmonics(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 3 (16 functions, orthonormal on the unit sphere).

    d: [n, 3] unit vectors -> [n, 16], ordered by degree l = 0..3 and order m = -l..l.
    """
    x, y, z = d.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),                 # l=0
        -0.48860251190291987 * y,                                # l=1
        0.48860251190291987 * z,
        -0.48860251190291987 * x,
        1.0925484305920792 * xy,                                 # l=2
        -1.0925484305920792 * yz,
        0.94617469575755997 * zz - 0.31539156525251999,
        -1.0925484305920792 * xz,
        0.54627421529603959 * (xx - yy),
        0.59004358992664352 * y * (3.0 * xx - yy),               # l=3 (sign convention of m<0)
        2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (5.0 * zz - 1.0),
        0.3731763325901154 * z * (5.0 * zz - 3.0),
        0.45704579946446572 * x * (5.0 * zz - 1.0),
        1.4453057213202769 * z * (xx - yy),
        0.59004358992664352 * x * (xx - 3.0 * yy),
    ], -1)


class HashField(nn.Module):
    """Hash grid on points normalised to the aabb -> density MLP -> (sigma, geo features);
    colour MLP on [geo features, SH(d)] -> rgb. Points outside the aabb get zero density.

    Density MLP: Linear(L*F, hidden) ReLU Linear(hidden, 1 + geo_features); sigma = trunc_exp.
    Colour MLP: Linear(geo_features + 16, hidden) ReLU Linear(hidden, hidden) ReLU Linear(hidden, 3),
    sigmoid.
    """

    def __init__(self, aabb: torch.Tensor, n_levels: int = 16, n_features: int = 2,
                 log2_size: int = 19, base_res: int = 16, max_res: int = 2048, hidden: int = 64,
                 geo_features: int = 15, density_bias_init: float = 0.0):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        self.encoding = HashGridEncoding(n_levels, n_features, log2_size, base_res, max_res)
        self.density_mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 1 + geo_features))
        if density_bias_init:
            # NOTE: after the default init, so the random draws (and a 0 here) stay as before.
            with torch.no_grad():
                self.density_mlp[-1].bias[0] += density_bias_init
        self.color_mlp = nn.Sequential(nn.Linear(geo_features + 16, hidden), nn.ReLU(),
                                       nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def normalise(self, x: torch.Tensor):
        """x: [n, 3] world points -> u [n, 3] in the unit cube (aabb), inside [n] bool."""
        u = (x.float() - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        return u, ((u >= 0) & (u <= 1)).all(-1)

    def heads(self, feats: torch.Tensor, inside: torch.Tensor, d: torch.Tensor | None = None):
        """feats [n, L*F] encoded points, inside [n], d [n, 3] or None -> (rgb [n, 3] or None,
        sigma [n])."""
        h = self.density_mlp(feats)
        # NOTE: the activation runs in fp32 even under autocast: exp of a bf16 logit is too coarse.
        sigma = trunc_exp(h[:, 0].float()) * inside
        if d is None:
            return None, sigma
        sh = spherical_harmonics(d.float()).to(h.dtype)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([h[:, 1:], sh], -1)).float())
        return rgb, sigma

    def encode_detached(self, x: torch.Tensor):
        """No-grad encoding of world points, for a cheap first pass whose survivors are later
        re-attached with ``self.encoding.attach(feats[keep], idx[keep], wc[keep])``.
        x: [n, 3] -> feats [n, L*F], idx, wc [n, L, 8], inside [n]."""
        u, inside = self.normalise(x)
        feats, idx, wc = self.encoding.encode_detached(u)
        return feats, idx, wc, inside

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, 3] world points -> sigma [n] (fp32)."""
        u, inside = self.normalise(x)
        return self.heads(self.encoding(u), inside)[1]

    def forward(self, x: torch.Tensor, d: torch.Tensor):
        """x: [n, 3] world points, d: [n, 3] unit directions -> rgb [n, 3], sigma [n]."""
        u, inside = self.normalise(x)
        return self.heads(self.encoding(u), inside, d)
