"""A random training background per ray (instant-ngp, nerfacc): one function, every kind that
offers it (the fast kind's model.random_background, the unbounded kind's
model.random_background) calls it from its :meth:`NeRFModel.train_inputs`.

Each training ray gets a colour drawn from the step's background noise (one row per global-batch
row, so 1 rank and N ranks draw alike); the ray's target is re-composited over it by the pixel's
alpha. With an opaque target (alpha 1) the model must explain the pixel with the scene itself, so
transparency cannot hide behind a fixed colour. Evaluation and rendering use the background they
are given (the scene's).

NOTE: a cache without an alpha channel gives alpha 1 for every pixel (see the loader): right for
photographs, but an RGBA scene whose alpha the cache dropped (a downscaled Blender scene is stored
as rgb16, composited) then has its background pixels taken for opaque ones.
"""
from __future__ import annotations

import torch

from ..render_ops.sampling import uniform


def random_background(batch: dict, background: torch.Tensor, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (bg [n_rays, 3] a U[0, 1) colour per ray, target_rgb [n_rays, 3] over bg).

    batch: the loader's (rgb [n_rays, 3] composited over `background`, alpha [n_rays] or absent);
    background: [3] the colour the loader composited over; noise: the step's RowNoise.
    """
    target = batch["rgb"]
    bg = uniform(target.shape[0], 3, noise, target.device)
    alpha = batch.get("alpha")
    if alpha is not None:
        # NOTE: the loader composited RGBA over `background`; swap it for bg.
        target = target + (bg - background.to(target)) * (1.0 - alpha.to(target))[:, None]
    return bg, target


__all__ = ["random_background"]
