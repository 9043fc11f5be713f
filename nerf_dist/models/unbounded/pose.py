"""Per-image camera pose refinement (model.pose_refine): a learnable correction per training
image, applied to its rays in training (:func:`nerf_dist.render_ops.pose.correct_rays`).

The table holds delta / POSE_SCALE, initialised to zero (no correction). NOTE: the scale gives
the poses their own step size under the one Adam the trainer builds: Adam's step is about the
learning rate in parameter units whatever the gradient's size, so a correction moves about
train.lr * POSE_SCALE per step (1e-4 rad and 1e-4 scene units at lr 1e-2), a hundredth of
the field's pace, as nerfstudio's pose optimiser (lr 6e-4 against 1e-2) does.

Held-out views and renders (image=None) get no correction: their poses are taken as given. So
the refined training poses and the held-out poses may disagree by whatever drift the whole set
of training poses took together (a gauge freedom no photo pins down); with accurate poses,
refinement only adds that risk, which is why it is off by default.
"""
from __future__ import annotations

import torch
from torch import nn

from ...render_ops.pose import correct_rays

POSE_SCALE = 0.01


class PoseCorrection(nn.Module):
    """table: [n_images, 6] (delta / POSE_SCALE per training image)."""

    def __init__(self, n_images: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(n_images, 6))

    def deltas(self) -> torch.Tensor:
        """[n_images, 6] the corrections (w radians, u scene units) of every image."""
        return self.table * POSE_SCALE

    def forward(self, rays_o, rays_d, viewdirs, image: torch.Tensor):
        """rays_*: [n_rays, 3]; image: [n_rays] training-image index -> the corrected rays."""
        image = image.to(device=self.table.device, dtype=torch.long)
        if image.numel() and int(image.max()) >= self.table.shape[0]:
            raise ValueError(f"image index {int(image.max())} >= model.appearance_images="
                             f"{self.table.shape[0]}: raise model.appearance_images")
        delta = self.deltas()[image].to(rays_o.dtype)
        return correct_rays(rays_o, rays_d, viewdirs, delta)


__all__ = ["POSE_SCALE", "PoseCorrection"]
