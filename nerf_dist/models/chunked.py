"""Any kind's model over many rays, in bounded memory: the call the renderer makes."""
from __future__ import annotations

import torch


@torch.no_grad()
def render_chunked(model: torch.nn.Module, rays: dict, near, far, chunk: int,
                   background: torch.Tensor | None = None,
                   keys: tuple[str, ...] = ("rgb", "depth", "acc")) -> dict:
    """Render many rays in chunks of `chunk` rays (eval mode) so memory stays bounded.

    rays: dict of rays_o, rays_d, viewdirs, each [n_rays, 3]. Returns dict of the requested keys,
    concatenated along rays (on the rays' device).
    """
    n = rays["rays_o"].shape[0]
    outs: dict[str, list] = {k: [] for k in keys}
    for s in range(0, n, chunk):
        o = model(rays["rays_o"][s:s + chunk], rays["rays_d"][s:s + chunk],
                  rays["viewdirs"][s:s + chunk], near, far, train=False, background=background)
        for k in keys:
            outs[k].append(o[k])
    return {k: torch.cat(v, 0) for k, v in outs.items()}


__all__ = ["render_chunked"]
