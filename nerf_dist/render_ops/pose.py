"""Small camera pose corrections applied to rays (pure math; the learnable table lives in the
model, :mod:`nerf_dist.models.unbounded.pose`).

A correction is delta = (w, u) [6]: an axis-angle rotation w (radians, world axes) about the
camera centre and a translation u (scene units). A ray of that camera becomes
    rays_o' = rays_o + u,    rays_d' = R(w) rays_d,    viewdirs' = R(w) viewdirs,
i.e. the camera-to-world pose [R_c2w | o] becomes [R(w) R_c2w | o + u]: every rigid motion of
the camera is one delta, and delta = 0 is the identity (exactly, with a gradient).
"""
from __future__ import annotations

import torch


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """w: [n, 3] axis-angle vectors (radians) -> [n, 3, 3] rotation matrices (Rodrigues).

    NOTE: sin(t)/t and (1 - cos(t))/t^2 are taken from their Taylor series below t = 1e-2, so the
    map and its gradient are exact and finite at w = 0 (where every correction starts).
    """
    t2 = (w * w).sum(-1)                                                   # [n]
    t = t2.clamp_min(1e-24).sqrt()
    small = t2 < 1e-4
    a = torch.where(small, 1.0 - t2 / 6.0 + t2 * t2 / 120.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24.0 + t2 * t2 / 720.0,
                    (1.0 - torch.cos(t)) / t2.clamp_min(1e-24))
    zero = torch.zeros_like(w[:, 0])
    k = torch.stack([zero, -w[:, 2], w[:, 1],
                     w[:, 2], zero, -w[:, 0],
                     -w[:, 1], w[:, 0], zero], -1).view(-1, 3, 3)           # [n, 3, 3] = [w]x
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def correct_rays(rays_o: torch.Tensor, rays_d: torch.Tensor, viewdirs: torch.Tensor,
                 delta: torch.Tensor):
    """rays_o, rays_d, viewdirs: [n_rays, 3]; delta: [n_rays, 6] (w, u) per ray (its camera's).
    Returns the corrected (rays_o, rays_d, viewdirs), each [n_rays, 3]; lengths are kept."""
    R = axis_angle_to_matrix(delta[:, :3])
    rot = lambda v: (R @ v[..., None])[..., 0]  # noqa: E731
    return rays_o + delta[:, 3:], rot(rays_d), rot(viewdirs)


__all__ = ["axis_angle_to_matrix", "correct_rays"]
