"""Rays -> samples -> field -> volume rendering, coarse and fine (vanilla NeRF); model factory.

Every model takes the same inputs and returns the same dict, so the trainer, the renderer and the
benchmarks do not care which one runs:

    model(rays_o [n_rays, 3], rays_d [n_rays, 3], viewdirs [n_rays, 3], near, far,
          train=bool, generator=torch.Generator | None, background=[3]) -> dict
        rgb [n_rays, 3], depth [n_rays], acc [n_rays]  (final estimate)
        rgb_coarse ... (vanilla: coarse network's estimate, also supervised)
        samples_per_ray: scalar tensor (mean field evaluations per ray)
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig
from .field import NeRFMLP
from . import sampling, volrend


def autocast_context(device: torch.device, precision: str):
    """Autocast for the field evaluation; fp32 = no autocast. fp16 falls back to bf16 on CPU."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" or device.type != "cuda" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class VanillaNeRF(nn.Module):
    """Coarse + fine NeRF MLPs; 64 stratified + 128 importance samples by default."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        mk = lambda: NeRFMLP(cfg.depth, cfg.width, cfg.skip, cfg.pos_freqs, cfg.dir_freqs)  # noqa: E731
        self.coarse = mk()
        self.fine = mk() if cfg.n_importance > 0 else None
        self.field_fns = {"coarse": self.coarse, "fine": self.fine}
        if cfg.compile:
            self.field_fns = {k: (torch.compile(v) if v is not None else None)
                              for k, v in self.field_fns.items()}

    def _eval(self, name: str, rays_o, rays_d, viewdirs, t, t_starts, t_ends, train, generator,
              background):
        n_rays, n_samples = t.shape
        pts = rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]      # [n_rays, n_samples, 3]
        dirs = viewdirs[:, None, :].expand(n_rays, n_samples, 3)
        with autocast_context(rays_o.device, self.cfg.precision):
            rgb, sigma = self.field_fns[name](pts.reshape(-1, 3), dirs.reshape(-1, 3))
        rgb = rgb.float().reshape(n_rays, n_samples, 3)
        sigma = sigma.float().reshape(n_rays, n_samples)
        if train and self.cfg.raw_noise_std > 0:
            sigma = sigma + self.cfg.raw_noise_std * sampling.normal(
                n_rays, n_samples, generator, sigma.device)
        sigma = F.relu(sigma)
        # NOTE: distances are along rays_d; scale by |rays_d| (1 except in NDC) for metric deltas.
        scale = rays_d.norm(dim=-1, keepdim=True)
        out = volrend.render_rays(sigma, rgb, t_starts * scale, t_ends * scale, background)
        out["depth"] = (out["weights"] * t).sum(-1)
        return out

    def forward(self, rays_o, rays_d, viewdirs, near, far, *, train: bool = False,
                generator=None, background: torch.Tensor | None = None):
        n_rays = rays_o.shape[0]
        cfg = self.cfg
        t, bins = sampling.stratified(n_rays, cfg.n_samples, near, far,
                                      perturb=train and cfg.perturb, generator=generator,
                                      device=rays_o.device)
        coarse = self._eval("coarse", rays_o, rays_d, viewdirs, t, bins[:, :-1], bins[:, 1:],
                            train, generator, background)
        if self.fine is None:
            out = {k: coarse[k] for k in ("rgb", "depth", "acc")}
            out["samples_per_ray"] = torch.tensor(float(cfg.n_samples))
            return out
        t_imp = sampling.sample_pdf(bins, coarse["weights"], cfg.n_importance,
                                    deterministic=not (train and cfg.perturb), generator=generator)
        t_all = torch.sort(torch.cat([t, t_imp], -1), -1).values
        starts, ends = sampling.intervals(t_all, near, far)
        fine = self._eval("fine", rays_o, rays_d, viewdirs, t_all, starts, ends, train, generator,
                          background)
        return {"rgb": fine["rgb"], "depth": fine["depth"], "acc": fine["acc"],
                "rgb_coarse": coarse["rgb"], "depth_coarse": coarse["depth"],
                "acc_coarse": coarse["acc"],
                "samples_per_ray": torch.tensor(float(cfg.n_samples * 2 + cfg.n_importance))}


def build_model(cfg: ModelConfig, aabb: torch.Tensor | None = None) -> nn.Module:
    """The model named by cfg.kind. aabb: [2, 3] scene box (needed by the fast path)."""
    if cfg.kind == "vanilla":
        return VanillaNeRF(cfg)
    from .model_fast import FastNeRF
    if aabb is None:
        raise ValueError("model.kind=fast needs the scene's aabb")
    return FastNeRF(cfg, aabb)


@torch.no_grad()
def render_chunked(model: nn.Module, rays: dict, near, far, chunk: int,
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
