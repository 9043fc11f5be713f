"""Vanilla NeRF: stratified samples -> coarse MLP -> importance samples -> fine MLP -> volume
rendering. The protocol's defaults (see :mod:`nerf_dist.models.base`) fit it; it adds the coarse
estimate to the supervised outputs (one more squared-error loss term)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...render_ops import sampling, volrend
from ..base import ADAM_FLOATS_PER_PARAM, F32, MemoryEstimate, NeRFModel
from ..config import ModelConfig
from ..precision import autocast_context
from .field import NeRFMLP


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

    @classmethod
    def memory_estimate(cls, cfg: ModelConfig) -> MemoryEstimate:
        """Samples per ray: inference keeps one pass alive (n_samples + n_importance for the fine
        pass); training keeps the coarse and fine passes for backward (2 n_samples + n_importance).

        Activation bytes per sample (fp32), fitted to measured peaks (tests/test_memory.py checks
        estimate >= measured, within 2x), with in_x = 3 (1 + 2 pos_freqs), in_d = 3 (1 + 2
        dir_freqs), W = width, D = depth: inference: the trunk's peak at the skip layer (previous
        output, [h, gamma(x)], new output: about 4.5 W floats) + the encodings (in_x + in_d) + ~128
        floats of points, directions and compositing; training: every layer input saved for
        backward ((D + 2.5) W + 3 in_x + 2 in_d) + backward transients (3 W) + ~64 floats.
        Parameters: the coarse MLP, twice with a fine one.
        """
        in_x, in_d = 3 * (1 + 2 * cfg.pos_freqs), 3 * (1 + 2 * cfg.dir_freqs)
        W, D, s, imp = cfg.width, cfg.depth, cfg.n_samples, cfg.n_importance
        samples = {True: 2 * s + imp if imp > 0 else s, False: s + imp if imp > 0 else s}
        floats = {True: (D + 2.5) * W + 3 * in_x + 2 * in_d + 3 * W + 64,
                  False: 4.5 * W + in_x + in_d + 128}
        per_ray = {t: samples[t] * int(math.ceil(floats[t] * F32)) for t in (True, False)}
        n = (in_x + 1) * W + (D - 1) * (W + 1) * W + in_x * W + (W + 1) * (W + 1) \
            + (W + in_d + 1) * (W // 2) + (W // 2 + 1) * 3
        n *= 2 if imp > 0 else 1
        return MemoryEstimate(per_ray[True], per_ray[False], samples[True], samples[False],
                              n * F32, ADAM_FLOATS_PER_PARAM * n * F32)

    def field_at(self, x, viewdirs=None):
        """See :meth:`NeRFModel.field_at`: the fine network (the coarse one without it), the
        density after its ReLU."""
        net = self.fine if self.fine is not None else self.coarse
        d = viewdirs if viewdirs is not None else torch.zeros_like(x)
        rgb, sigma = net(x, d)
        return F.relu(sigma.float()), (rgb.float() if viewdirs is not None else None)

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
