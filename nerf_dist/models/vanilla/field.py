"""The vanilla radiance field: the NeRF paper's MLP, (points, viewdirs) -> (rgb, sigma)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .encoding import FrequencyEncoding


class NeRFMLP(nn.Module):
    """The NeRF MLP.

    depth layers of `width` (ReLU) on gamma(x); gamma(x) is concatenated to the output of layer
    `skip` (0-based; skip=4 feeds [h, gamma(x)] into the 6th linear layer, as in the paper's code);
    a density head; a `width` feature joined with gamma(d); one width/2 layer; an RGB head.

    forward(x: [n, 3], d: [n, 3] unit) -> rgb: [n, 3] in (0, 1), sigma: [n] the raw density
    (any sign: the model adds the training noise model.raw_noise_std first, then a ReLU).
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
