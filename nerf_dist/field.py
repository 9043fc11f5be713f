"""Radiance fields: (points, viewdirs) -> (rgb, sigma), and the autocast every field runs under.

The vanilla field is the NeRF paper's MLP; the fast field (hash grid) lives in
:mod:`nerf_dist.field_fast`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
import torch.nn.functional as F

from .encoding import FrequencyEncoding


def autocast_context(device: torch.device, precision: str):
    """Autocast for a field evaluation (model.precision); fp32 = no autocast. fp16 falls back to
    bf16 on CPU."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" or device.type != "cuda" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class NeRFMLP(nn.Module):
    """The NeRF MLP.

    depth layers of `width` (ReLU) on gamma(x); gamma(x) is concatenated to the output of layer
    `skip` (0-based; skip=4 feeds [h, gamma(x)] into the 6th linear layer, as in the paper's code);
    a density head; a `width` feature joined with gamma(d); one width/2 layer; an RGB head.

    forward(x: [n, 3], d: [n, 3] unit) -> rgb: [n, 3] in (0, 1), sigma: [n] >= 0.
    """

    def __init__(self, depth: int = 8, width: int = 256, skip: int = 4, pos_freqs: int = 10,
                 dir_freqs: int = 4):
        super().__init__()
        self.pos_enc = FrequencyEncoding(pos_freqs)
        self.dir_enc = FrequencyEncoding(dir_freqs)
        in_x, in_d = self.pos_enc.out_dim(3), self.dir_enc.out_dim(3)
        self.skip = skip
        layers = []
        for i in range(depth):
            d_in = in_x if i == 0 else width
            if i == skip + 1:
                d_in = width + in_x
            layers.append(nn.Linear(d_in, width))
        self.trunk = nn.ModuleList(layers)
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.view = nn.Linear(width + in_d, width // 2)
        self.rgb_head = nn.Linear(width // 2, 3)

    def forward(self, x: torch.Tensor, d: torch.Tensor):
        ex, ed = self.pos_enc(x), self.dir_enc(d)
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # NOTE: cat() promotes to the widest input: cast the encodings once so the skip and
            # view concatenations stay in the autocast dtype instead of bouncing through fp32.
            ex = ex.to(torch.get_autocast_dtype(dev))
            ed = ed.to(ex.dtype)
        h = ex
        for i, layer in enumerate(self.trunk):
            if i == self.skip + 1:
                h = torch.cat([h, ex], -1)
            h = F.relu(layer(h), inplace=True)
        sigma = self.sigma_head(h).squeeze(-1)
        feat = self.feature(h)
        h = F.relu(self.view(torch.cat([feat, ed], -1)), inplace=True)
        rgb = torch.sigmoid(self.rgb_head(h))
        return rgb, sigma
