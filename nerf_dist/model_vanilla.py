"""Vanilla NeRF: stratified samples -> coarse MLP -> importance samples -> fine MLP -> volume
rendering. The protocol's defaults (see :mod:`nerf_dist.model_base`) fit it; it adds the coarse
estimate to the supervised outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import sampling, volrend
from .config import ModelConfig
from .field import NeRFMLP, autocast_context
from .model_base import NeRFModel


class VanillaNeRF(NeRFModel):
    """Coarse + fine NeRF MLPs; 64 stratified + 128 importance samples by default.

    Outputs (besides the protocol's rgb, depth, acc, samples_per_ray), when the fine network
    exists (n_importance > 0): rgb_coarse [n_rays, 3] (also supervised), depth_coarse, acc_coarse
    [n_rays]. aabb is not used.
    """

    def __init__(self, cfg: ModelConfig, aabb: torch.Tensor | None = None):
        super().__init__(cfg)
        mk = lambda: NeRFMLP(cfg.depth, cfg.width, cfg.skip, cfg.pos_freqs, cfg.dir_freqs)  # noqa: E731
        self.coarse = mk()
        self.fine = mk() if cfg.n_importance > 0 else None
        self.field_fns = {"coarse": self.coarse, "fine": self.fine}
        if cfg.compile:
            self.field_fns = {k: (torch.compile(v) if v is not None else None)
                              for k, v in self.field_fns.items()}

    def rgb_keys(self) -> tuple[str, ...]:
        return ("rgb", "rgb_coarse") if self.fine is not None else ("rgb",)

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


__all__ = ["VanillaNeRF"]
