"""Model registry: rays -> samples -> field -> volume rendering, one class per kind.

Every kind implements the small protocol of :class:`nerf_dist.model_base.NeRFModel` (forward
contract, per-step hook, optimiser settings, logged scalars, supervised outputs), so the trainer,
the renderer, the benchmarks and checkpoints do not care which one runs. A new kind is a new
``model_<kind>.py`` plus one line in :data:`MODELS` (and its name in ``config.MODEL_KINDS``).
"""
from __future__ import annotations

import torch

from .config import ModelConfig
from .model_base import NeRFModel
from .model_fast import FastNeRF
from .model_vanilla import VanillaNeRF

MODELS: dict[str, type[NeRFModel]] = {
    "vanilla": VanillaNeRF,     # coarse + fine MLPs (the NeRF paper)
    "fast": FastNeRF,           # hash grid + occupancy grid (instant-ngp style)
}


def build_model(cfg: ModelConfig, aabb: torch.Tensor | None = None) -> NeRFModel:
    """The model named by cfg.kind. aabb: [2, 3] scene box (needed by the fast path)."""
    if cfg.kind not in MODELS:
        raise ValueError(f"model.kind={cfg.kind!r} is not a registered model: "
                         f"{' | '.join(MODELS)}")
    return MODELS[cfg.kind](cfg, aabb)


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


__all__ = ["MODELS", "NeRFModel", "VanillaNeRF", "FastNeRF", "build_model", "render_chunked"]
