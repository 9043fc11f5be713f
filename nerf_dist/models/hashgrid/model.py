"""Fast path: occupancy-grid ray marching -> hash-grid field -> volume rendering.

Implements the model protocol (:mod:`nerf_dist.models.base`): model(rays_o, rays_d, viewdirs, near,
far, train=, generator=, background=) -> dict(rgb, depth, acc, samples_per_ray). Its
``before_step(step, generator)``, which the trainer calls every step before the forward pass, keeps
the occupancy grid up to date; Adam runs with eps 1e-15 (hash-table entries see rare, tiny
gradients); it logs the grid's occupied fraction. With model.random_background its
``train_inputs`` trains against a random background per ray (:mod:`nerf_dist.models.background`).

Marching: each ray is cut into steps of length aabb diagonal / march_steps over
[near, far] ∩ aabb (start offset jittered in training); steps whose midpoint lies in an unoccupied
cell are dropped, at most max_samples are kept per ray, and only kept samples reach the field (as one
packed batch; results are scattered back into [n_rays, n_samples] with zero-length padding).
Early termination: in training a no-grad density pass finds where each ray's transmittance falls
below early_stop_eps and the samples behind are dropped before the differentiable pass; at
inference rays are evaluated in segments and opaque rays stop being evaluated.

NOTE (DDP): the occupancy grid lives in buffers. before_step is a deterministic function of the
parameters (identical on all ranks after each all-reduce), the step and the generator (seeded from
(seed, step), the same on every rank), so all ranks keep identical grids without communication and
DDP need not broadcast them (the trainer tells it not to). Call before_step on the un-wrapped
module (ddp.module).
"""
from __future__ import annotations

import torch

from ...render_ops import sampling, volrend
from ..background import random_background
from ..base import ADAM_FLOATS_PER_PARAM, F32, MemoryEstimate, NeRFModel
from ..config import ModelConfig
from ..precision import autocast_context
from .field import HashField
from .occupancy import OccupancyGrid

# Columns (samples per ray) rendered at a time at inference, between early-termination checks.
EVAL_SEGMENT = 32


class FastNeRF(NeRFModel):
    """Hash-grid NeRF with an occupancy grid. aabb: [2, 3] scene box (min, max)."""

    def __init__(self, cfg: ModelConfig, aabb: torch.Tensor | None):
        super().__init__(cfg)
        if aabb is None:
            raise ValueError("model.kind=fast needs the scene's aabb")
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        self.register_buffer("aabb", aabb.clone())
        self.field = HashField(aabb, cfg.hash_levels, cfg.hash_features, cfg.hash_log2_size,
                               cfg.hash_base_res, cfg.hash_max_res, cfg.hidden, cfg.geo_features,
                               cfg.density_bias_init)
        self.step_size = float((aabb[1] - aabb[0]).norm()) / cfg.march_steps
        self.grid = OccupancyGrid(aabb, cfg.grid_res, self.step_size, cfg.grid_threshold,
                                  cfg.grid_update_every, cfg.grid_ema_decay)
        # NOTE: a plain dict, so compiled wrappers are not registered as submodules (state_dict
        # keys stay the same with and without compile).
        self._fns = {"field": self.field, "density": self.field.density, "heads": self.field.heads}
        if cfg.compile:
            self._fns = {k: torch.compile(v, dynamic=True) for k, v in self._fns.items()}

    # ------------------------------------------------------------------ protocol
    def optimizer_settings(self) -> dict:
        return {"params": list(self.parameters()), "eps": 1e-15}

    def log_scalars(self) -> dict[str, float]:
        return {"occupied_frac": self.grid.occupied_frac}

    def train_inputs(self, batch: dict, background: torch.Tensor, noise) -> tuple[dict, torch.Tensor]:
        """See :meth:`NeRFModel.train_inputs`: with model.random_background a random
        colour per ray, the targets composited over it by their alpha; else the scene's."""
        if self.cfg.random_background:
            bg, target = random_background(batch, background, noise)
            return {"background": bg}, target
        return super().train_inputs(batch, background, noise)

    @classmethod
    def memory_estimate(cls, cfg: ModelConfig) -> MemoryEstimate:
        """Samples per ray: inference evaluates at most EVAL_SEGMENT slots per ray at a time;
        training keeps every kept sample, at most max_samples (occupancy and early stopping
        usually keep far fewer: this is the upper bound).

        Activation bytes per sample (fp32), fitted to measured peaks (tests/test_memory.py), with
        L levels, F features, h hidden, g geo features: per level 8 corner indices (int64),
        weights and their transients (320 L bytes at inference, 256 L saved in training) + the
        MLPs (L F + 3 h + 2 g + 40 floats; training 2 L F + 4 h + 3 g + 60) + 64 bytes. Per ray
        besides: the marching tensors ([n_rays, march_steps] float/bool/int64 slots, ~64 B each)
        and [n_rays, max_samples] slot tables (16 B each).
        Parameters: the hash tables and MLPs; the occupancy grid (density + mask) counted alike.
        """
        L, Fd, h, g = cfg.hash_levels, cfg.hash_features, cfg.hidden, cfg.geo_features
        m = cfg.max_samples
        samples = {True: m, False: min(EVAL_SEGMENT, m)}
        per_sample = {True: 256 * L + F32 * (2 * L * Fd + 4 * h + 3 * g + 60) + 64,
                      False: 320 * L + F32 * (L * Fd + 3 * h + 2 * g + 40) + 64}
        march = 64 * (cfg.march_steps + 1) + 16 * m
        per_ray = {t: samples[t] * per_sample[t] + march for t in (True, False)}
        T = 1 << cfg.hash_log2_size
        n = L * T * Fd + (L * Fd + 1) * h + (h + 1) * (1 + g) + (g + 17) * h + (h + 1) * h \
            + (h + 1) * 3
        n += cfg.grid_res ** 3 * 2
        return MemoryEstimate(per_ray[True], per_ray[False], samples[True], samples[False],
                              n * F32, ADAM_FLOATS_PER_PARAM * n * F32)

    def before_step(self, step: int, generator: torch.Generator | None = None) -> bool:
        """Update the occupancy grid if `step` is an update step (else a no-op); True if updated."""
        if step % self.cfg.grid_update_every != 0:
            return False
        dev = self.aabb.device

        def density_fn(pts):
            with autocast_context(dev, self.cfg.precision):
                return self._fns["density"](pts).float()

        with torch.no_grad():
            return self.grid.update(step, density_fn, generator)

    # ------------------------------------------------------------------ marching
    @torch.no_grad()
    def march(self, rays_o, rays_d, near, far, jitter: bool,
              generator=None):
        """Samples in occupied cells, packed.

        rays_o, rays_d: [n_rays, 3]; near, far: floats or [n_rays].
        Returns ray [m], col [m] (sample's ray and its slot in that ray, slots 0, 1, ... in order),
        t_starts, t_ends [m] (along rays_d, in its units), n_samples (max slots used, an int).
        """
        n, dev = rays_o.shape[0], rays_o.device
        near = torch.as_tensor(near, dtype=torch.float32, device=dev).reshape(-1).expand(n)
        far = torch.as_tensor(far, dtype=torch.float32, device=dev).reshape(-1).expand(n)
        d = torch.where(rays_d.abs() < 1e-10, torch.full_like(rays_d, 1e-10), rays_d)
        ta, tb = (self.aabb[0] - rays_o) / d, (self.aabb[1] - rays_o) / d
        t_lo = torch.maximum(torch.minimum(ta, tb).amax(-1), near)
        t_hi = torch.minimum(torch.maximum(ta, tb).amin(-1), far)
        step_t = self.step_size / rays_d.norm(dim=-1)                                # [n_rays]
        n_steps = int(((t_hi - t_lo) / step_t).ceil().clamp(min=0).max()) if n else 0
        if jitter:
            u = sampling.uniform(n, 1, generator, dev)[:, 0]
        else:
            u = torch.zeros(n, device=dev)
        k = torch.arange(n_steps, device=dev, dtype=torch.float32)
        ts = t_lo[:, None] + (k + u[:, None]) * step_t[:, None]                       # [n, S]
        te = torch.minimum(ts + step_t[:, None], t_hi[:, None])
        valid = ts < t_hi[:, None]
        mid = 0.5 * (ts + te)
        pts = rays_o[:, None, :] + rays_d[:, None, :] * mid[..., None]
        valid &= self.grid.query(pts.reshape(-1, 3)).view(n, n_steps)
        rank = valid.cumsum(1)
        keep = valid & (rank <= self.cfg.max_samples)
        ray, si = keep.nonzero(as_tuple=True)
        col = rank[ray, si] - 1
        n_samples = int(col.max()) + 1 if col.numel() else 0
        return ray, col, ts[ray, si], te[ray, si], n_samples

    def surface_box(self, aabb):
        """See :meth:`NeRFModel.surface_box`: the occupied cells of the occupancy grid, one cell
        of margin, within the aabb (all of it when no cell is occupied)."""
        g = self.grid
        occ = g.occupied.bool().view(g.res, g.res, g.res).nonzero()
        if not occ.numel():
            return self.aabb.clone()
        cell = (g.aabb[1] - g.aabb[0]) / g.res
        lo = g.aabb[0] + (occ.amin(0) - 1).float() * cell
        hi = g.aabb[0] + (occ.amax(0) + 2).float() * cell
        return torch.stack([torch.maximum(lo, self.aabb[0]), torch.minimum(hi, self.aabb[1])])

    def field_at(self, x, viewdirs=None):
        """See :meth:`NeRFModel.field_at` (zero density outside the aabb)."""
        if viewdirs is None:
            return self.field.density(x).float(), None
        rgb, sigma = self.field(x, viewdirs)
        return sigma.float(), rgb.float()

    # ------------------------------------------------------------------ rendering
    def _field(self, pts, dirs):
        with autocast_context(pts.device, self.cfg.precision):
            rgb, sigma = self._fns["field"](pts, dirs)
        return rgb.float(), sigma.float()

    def forward(self, rays_o, rays_d, viewdirs, near, far, *, train: bool = False,
                generator=None, background: torch.Tensor | None = None):
        n, dev = rays_o.shape[0], rays_o.device
        ray, col, ts, te, K = self.march(rays_o, rays_d, near, far, jitter=train,
                                         generator=generator)
        scale = rays_d.norm(dim=-1)                                                # metric / t
        if not train:
            return self._render_segments(rays_o, rays_d, viewdirs, ray, col, ts, te, K, scale,
                                         background)
        pts = rays_o[ray] + rays_d[ray] * (0.5 * (ts + te))[:, None]
        if ray.numel() and self.cfg.early_stop_eps > 0:
            # NOTE: one no-grad pass over every sample gives the transmittance; samples behind the
            # point where it passes early_stop_eps are dropped, and the survivors' hash features are
            # re-attached to the table rather than gathered again (the gather dominates on CPU).
            # Transmittance only falls along a ray, so survivors are a prefix: slots stay valid.
            with torch.no_grad(), autocast_context(dev, self.cfg.precision):
                feats, idx, wc, inside = self.field.encode_detached(pts)
                sigma0 = self._fns["heads"](feats, inside)[1].float()
            tau = torch.zeros(n, K, device=dev).index_put_((ray, col), sigma0 * (te - ts) * scale[ray])
            trans = torch.exp(-(tau.cumsum(1) - tau))[ray, col]
            live = (trans > self.cfg.early_stop_eps).nonzero().squeeze(-1)
            ray, col, ts, te = ray[live], col[live], ts[live], te[live]
            K = int(col.max()) + 1 if col.numel() else 0
            with autocast_context(dev, self.cfg.precision):
                f = self.field.encoding.attach(feats[live], idx[live], wc[live])
                rgb_p, sigma_p = self._fns["heads"](f, inside[live], viewdirs[ray])
            rgb_p, sigma_p = rgb_p.float(), sigma_p.float()
        else:
            rgb_p, sigma_p = self._field(pts, viewdirs[ray])
        zeros = torch.zeros(n, K, device=dev)
        sigma = zeros.index_put((ray, col), sigma_p)
        rgb = torch.zeros(n, K, 3, device=dev).index_put((ray, col), rgb_p)
        t_starts, t_ends = zeros.index_put((ray, col), ts), zeros.index_put((ray, col), te)
        out = volrend.render_rays(sigma, rgb, t_starts * scale[:, None], t_ends * scale[:, None],
                                  background)
        out["depth"] = (out["weights"] * 0.5 * (t_starts + t_ends)).sum(-1)
        return {"rgb": out["rgb"], "depth": out["depth"], "acc": out["acc"],
                "samples_per_ray": torch.tensor(ray.numel() / max(n, 1))}

    def _render_segments(self, rays_o, rays_d, viewdirs, ray, col, ts, te, K, scale, background):
        """Inference: evaluate slots [c, c + segment) of rays still transparent enough, composite
        front to back, and stop evaluating a ray once its transmittance < early_stop_eps."""
        n, dev = rays_o.shape[0], rays_o.device
        valid = torch.zeros(n, K, dtype=torch.bool, device=dev).index_put_((ray, col), torch.ones_like(col, dtype=torch.bool))
        t_starts = torch.zeros(n, K, device=dev).index_put_((ray, col), ts)
        t_ends = torch.zeros(n, K, device=dev).index_put_((ray, col), te)
        trans = torch.ones(n, device=dev)
        rgb_acc, depth, acc = torch.zeros(n, 3, device=dev), torch.zeros(n, device=dev), torch.zeros(n, device=dev)
        n_eval = 0
        for c0 in range(0, K, EVAL_SEGMENT):
            c1 = min(K, c0 + EVAL_SEGMENT)
            alive = trans > self.cfg.early_stop_eps
            m = valid[:, c0:c1] & alive[:, None]
            r, c = m.nonzero(as_tuple=True)
            if r.numel() == 0:
                if not bool(alive.any()):
                    break
                continue
            n_eval += r.numel()
            s, e = t_starts[r, c0 + c], t_ends[r, c0 + c]
            mid = 0.5 * (s + e)
            rgb_p, sigma_p = self._field(rays_o[r] + rays_d[r] * mid[:, None], viewdirs[r])
            w_ = c1 - c0
            sigma = torch.zeros(n, w_, device=dev).index_put_((r, c), sigma_p)
            delta = torch.zeros(n, w_, device=dev).index_put_((r, c), (e - s) * scale[r])
            rgb = torch.zeros(n, w_, 3, device=dev).index_put_((r, c), rgb_p)
            tmid = torch.zeros(n, w_, device=dev).index_put_((r, c), mid)
            w, _, _ = volrend.render_weights(sigma, delta)
            w = w * trans[:, None]
            rgb_acc += (w[..., None] * rgb).sum(1)
            depth += (w * tmid).sum(1)
            acc += w.sum(1)
            trans = trans * torch.exp(-(sigma * delta).sum(1))
        if background is not None:
            rgb_acc = rgb_acc + (1.0 - acc)[:, None] * background.to(rgb_acc)
        return {"rgb": rgb_acc, "depth": depth, "acc": acc,
                "samples_per_ray": torch.tensor(n_eval / max(n, 1))}
