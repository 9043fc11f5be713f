"""The protocol every model kind implements: the trainer, renderer and checkpoints see only this.

A model kind is a subclass of :class:`NeRFModel` in its own module plus one line in
:data:`nerf_dist.model.MODELS` (and its name in ``config.MODEL_KINDS``, which the config checks
without importing torch). Nothing outside the model's module branches on the kind.

Construction: ``Kind(cfg: ModelConfig, aabb: [2, 3] tensor | None)``; aabb is the scene box (from
the ray cache in training, from the checkpoint when loading); a kind that needs it raises
ValueError on None.

forward(rays_o [n_rays, 3], rays_d [n_rays, 3], viewdirs [n_rays, 3] unit, near, far, *,
        train=False, generator=None, background=None) -> dict
    rgb [n_rays, 3], depth [n_rays] (along rays_d, in its units), acc [n_rays] (opacity),
    samples_per_ray: 0-d tensor (mean field evaluations per ray, logged), plus every key that
    :meth:`NeRFModel.rgb_keys` names ([n_rays, 3] each).
    near, far: floats or [n_rays]; generator: torch.Generator or :class:`sampling.RowNoise` for
    training jitter (None at inference); background: [3] colour composited behind, or None.

State: parameters and buffers only; ``state_dict()`` is what a checkpoint holds, so a checkpoint
loads into ``Kind(cfg, aabb)`` built from the checkpoint's own config and scene box.
NOTE (DDP): buffers are never broadcast by DDP (the trainer tells DDP to ignore them); they must be
identical on every rank, i.e. constants or deterministic functions of (parameters, step,
generator) such as the fast model's occupancy grid.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class NeRFModel(nn.Module):
    """Base class with the protocol's defaults (those of a plain MLP NeRF: nothing to do per step,
    Adam eps 1e-8 on every parameter, nothing extra to log, only ``rgb`` supervised)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def before_step(self, step: int, generator: torch.Generator | None = None) -> bool:
        """Called by the trainer before every training step's forward pass, on the un-wrapped
        module, with a generator seeded from (seed, step) (the same on every rank). Returns True
        when it changed the model's state (e.g. refreshed a grid)."""
        return False

    def rgb_keys(self) -> tuple[str, ...]:
        """Output keys supervised against the pixels' colour, each with weight 1 ('rgb' first)."""
        return ("rgb",)

    def optimizer_settings(self) -> dict:
        """Adam settings: {"params": parameters or param-group dicts, "eps": float}.

        NOTE: the trainer sets every group's lr from its schedule each step, so a group may set its
        own weight_decay or eps but not its lr.
        """
        return {"params": list(self.parameters()), "eps": 1e-8}

    def log_scalars(self) -> dict[str, float]:
        """Scalars logged with the training metrics (as ``model/<name>``) at each logging step."""
        return {}


__all__ = ["NeRFModel"]
