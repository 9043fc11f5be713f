"""Unbounded scenes (model.kind=unbounded): contracted space, proposal sampling, per-image
appearance, a random training background (nerfacto / mip-NeRF 360 style).

Sampling, per ray (distances t along the unit view direction, from near to model.far_bound):
  1. model.proposal_samples[0] intervals uniform in s-space (:mod:`render_ops.contraction`: linear
     in t up to 1 scene unit, uniform in disparity beyond), jittered in training;
  2. for each proposal level: its density network at the intervals' midpoints -> weights ->
     model.proposal_samples[l + 1] (or model.field_samples after the last level) new intervals
     resampled from weights ** anneal (:func:`render_ops.proposal.anneal`, 0 -> 1 over
     model.proposal_anneal_steps; 1 at inference);
  3. the radiance field at the last intervals' midpoints -> volume rendering.
With model.sampler=occupancy there are no proposal networks: an occupancy grid over the contracted
cube skips empty space and model.field_samples samples are spread over each ray's occupied stretch
(:mod:`.occupancy`); the grid is updated in before_step from the field's density.

Losses (:meth:`UnboundedNeRF.losses`): the squared colour error; the interlevel loss of every
proposal level against the field's (detached) weights (sampler=proposal only); mip-NeRF 360's
distortion loss on the field's weights; the last two in s-space, as means over the global batch's
rays.

Appearance (model.appearance_dim > 0): a table of one embedding per training image, initialised to
zero. The forward pass takes ``image: [n_rays]`` (the batch's image index); without it (held-out
views, renders) every ray gets the mean embedding of the images trained so far (the rows that are
not all zero: an untrained row stays exactly zero under Adam).

Pose refinement (model.pose_refine): a correction per training image applied to its rays
(:mod:`.pose`); none for held-out views and renders.

Background (model.random_background): :meth:`UnboundedNeRF.train_inputs` draws one colour per ray
(per global-batch row, so 1 rank and N ranks draw alike) and composites the RGBA targets over it
with their alpha; evaluation and rendering use the background they are given.

NOTE (DDP): the anneal exponent is a plain attribute set by before_step from the step alone, the
same on every rank; all parameters (field, proposals, appearance table) reach DDP and the
checkpoint through the module's state_dict. The occupancy grid (sampler=occupancy) is buffers,
updated as the fast kind's: a deterministic function of the parameters (identical on every rank
after each all-reduce), the step and the trainer's per-step generator, so every rank holds the same
grid without communication, and the checkpoint holds it.
"""
from __future__ import annotations

import torch

from ...render_ops import contraction, proposal, volrend
from ...render_ops.sampling import uniform
from ..background import random_background
from ..base import ADAM_FLOATS_PER_PARAM, F32, MemoryEstimate, NeRFModel, sse
from ...config_check import ConfigError
from ..config import ModelConfig
from ..precision import autocast_context
from .config import int_list
from .field import ContractedField, ProposalDensity
from .occupancy import contracted_grid, density_per_s, march
from .pose import PoseCorrection


class UnboundedNeRF(NeRFModel):
    """Contracted hash-grid field with proposal networks. aabb is not used (all of space is
    modelled); it is accepted for the protocol's constructor."""

    EXTRA_OUTPUTS = ("depth_median",)

    def __init__(self, cfg: ModelConfig, aabb: torch.Tensor | None = None):
        super().__init__(cfg)
        occupancy = cfg.sampler == "occupancy"
        self.n_proposal = [] if occupancy else int_list(cfg.proposal_samples)
        res = [] if occupancy else int_list(cfg.proposal_max_res)
        self.field = ContractedField(cfg.contraction, cfg.hash_levels, cfg.hash_features,
                                     cfg.hash_log2_size, cfg.hash_base_res, cfg.hash_max_res,
                                     cfg.hidden, cfg.geo_features, cfg.appearance_dim)
        self.proposals = torch.nn.ModuleList(
            ProposalDensity(cfg.contraction, cfg.proposal_levels, cfg.proposal_log2_size, r,
                            cfg.proposal_hidden) for r in res)
        self.grid = (contracted_grid(cfg.occupancy_res, cfg.field_samples,
                                     cfg.occupancy_update_every) if occupancy else None)
        if cfg.appearance_dim > 0:
            # NOTE: zeros, so a row no image trained stays exactly zero (see the module doc).
            self.appearance = torch.nn.Parameter(torch.zeros(cfg.appearance_images,
                                                             cfg.appearance_dim))
        else:
            self.appearance = None
        self.pose = PoseCorrection(cfg.appearance_images) if cfg.pose_refine else None
        self.anneal = 1.0

    # ------------------------------------------------------------------ protocol
    def optimizer_settings(self) -> dict:
        # NOTE: hash tables see rare, tiny gradients: Adam eps 1e-15 as in the fast kind.
        return {"params": list(self.parameters()), "eps": 1e-15}

    def before_step(self, step: int, generator: torch.Generator | None = None) -> bool:
        """The proposal anneal exponent; sampler=occupancy: update the grid if `step` is an
        update step (True if updated)."""
        self.anneal = proposal.anneal(step, self.cfg.proposal_anneal_steps)
        if self.grid is None or step % self.cfg.occupancy_update_every != 0:
            return False
        dev = self.grid.density.device

        def density_fn(y):
            with autocast_context(dev, self.cfg.precision):
                return density_per_s(self.field.density_unit, y, self.cfg.contraction,
                                     self.cfg.far_bound)

        return self.grid.update(step, density_fn, generator)

    def log_scalars(self) -> dict[str, float]:
        if self.grid is not None:
            return {"occupied_frac": self.grid.occupied_frac}
        return {"proposal_anneal": float(self.anneal)}

    def train_inputs(self, batch: dict, background: torch.Tensor, noise) -> tuple[dict, torch.Tensor]:
        """See :meth:`NeRFModel.train_inputs`: a random background per ray (model.random_background)
        with the targets composited over it by their alpha, and the batch's image indices."""
        extra: dict = {"image": batch.get("image"), "background": background}
        target = batch["rgb"]
        if self.cfg.random_background:
            extra["background"], target = random_background(batch, background, noise)
        return extra, target

    def losses(self, out: dict, target_rgb: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """rgb (squared error), interlevel and distortion (weighted per-ray means, in the same
        units: a mean over the global batch's rays is sum * 3 * scale)."""
        terms = {"rgb": sse(out["rgb"], target_rgb) * scale}
        per_ray = 3.0 * scale
        weights = out["weights"]
        if self.grid is None:
            edges = out["edges"]
            inter = sum(proposal.interlevel_loss(edges, weights, e, w).sum()
                        for e, w in out["proposal"])
            terms["interlevel"] = inter * per_ray * self.cfg.interlevel_weight
        if self.cfg.distortion_weight > 0:
            dist = (proposal.distortion_loss_mw(out["s"], out["width"], weights)
                    if self.grid is not None else proposal.distortion_loss(out["edges"], weights))
            terms["distortion"] = dist.sum() * per_ray * self.cfg.distortion_weight
        return terms

    @classmethod
    def check_scene(cls, cfg: ModelConfig, n_images: int) -> None:
        """The per-image tables (appearance embeddings, pose corrections) need a row per training
        image: refused before the first step, not found inside forward."""
        uses = [k for k, on in (("model.appearance_dim", cfg.appearance_dim > 0),
                                ("model.pose_refine", cfg.pose_refine)) if on]
        if uses and cfg.appearance_images < n_images:
            raise ConfigError(f"config key 'model.appearance_images': {cfg.appearance_images} rows "
                              f"for a scene of {n_images} training images (the per-image table "
                              f"of {' and '.join(uses)}): set model.appearance_images >= "
                              f"{n_images}")

    @classmethod
    def memory_estimate(cls, cfg: ModelConfig) -> MemoryEstimate:
        """Samples per ray: every proposal level's and the field's (training keeps them all for
        backward; inference holds the largest level's at a time). Bytes per sample as the fast kind's
        estimate for the field (L levels, F features, h hidden, g geo features) and for each
        proposal network (its Lp levels, 2 features, hp hidden), plus 64 bytes of sampling
        tensors (edges, weights, s/t conversions) per sample. Checked against measured peaks in
        tests/test_unbounded.py.
        sampler=occupancy: no proposal samples; instead the march's [n_rays, occupancy_steps]
        tensors (s and t edges and midpoints, points, contracted points, cell indices, the
        occupancy mask and cumulative lengths: 128 bytes a step, training and inference alike).
        Parameters: the field's and proposals' hash tables and MLPs, the appearance and pose
        tables; the occupancy grid (density + mask counted as 2 floats a cell, its cell table
        6 bytes)."""
        L, Fd, h, g = cfg.hash_levels, cfg.hash_features, cfg.hidden, cfg.geo_features
        Lp, hp = cfg.proposal_levels, cfg.proposal_hidden
        occ = cfg.sampler == "occupancy"
        props, k = ([] if occ else int_list(cfg.proposal_samples)), cfg.field_samples
        a = cfg.appearance_dim
        field = {True: 256 * L + F32 * (2 * L * Fd + 4 * h + 3 * g + 60 + a) + 128,
                 False: 320 * L + F32 * (L * Fd + 3 * h + 2 * g + 40 + a) + 128}
        prop = {True: 256 * Lp + F32 * (4 * Lp + 2 * hp + 16) + 128,
                False: 320 * Lp + F32 * (2 * Lp + hp + 16) + 128}
        # NOTE: inference holds one level's samples at a time (the largest), plus every level's
        # edges and weights (16 bytes a sample); training keeps every level for backward.
        march = 128 * cfg.occupancy_steps if occ else 0
        per_ray = {True: sum(props) * prop[True] + k * field[True] + march,
                   False: max(max(props, default=0) * prop[False], k * field[False])
                   + 16 * (sum(props) + k) + march}
        T, Tp = 1 << cfg.hash_log2_size, 1 << cfg.proposal_log2_size
        n = L * T * Fd + (L * Fd + 1) * h + (h + 1) * (1 + g) + (g + 17 + a) * h + (h + 1) * h \
            + (h + 1) * 3
        n += len(props) * (Lp * Tp * 2 + (2 * Lp + 1) * hp + hp + 1)
        n += cfg.appearance_images * (a + (6 if cfg.pose_refine else 0))
        if occ:
            n += cfg.occupancy_res ** 3 * 2 + (cfg.occupancy_res ** 3 * 6 + F32 - 1) // F32
        samples = sum(props) + k
        return MemoryEstimate(per_ray[True], per_ray[False], samples, samples, n * F32,
                              ADAM_FLOATS_PER_PARAM * n * F32)

    # ------------------------------------------------------------------ rendering
    def appearance_of(self, image: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        """[n, appearance_dim] embeddings of the rays' images; the mean trained embedding for
        image=None; None when appearance is off."""
        if self.appearance is None:
            return None
        if image is None:
            used = (self.appearance.detach() != 0).any(-1)
            mean = (self.appearance[used].mean(0) if bool(used.any())
                    else torch.zeros_like(self.appearance[0]))
            return mean.expand(n, -1)
        image = image.to(device=self.appearance.device, dtype=torch.long)
        if image.numel() and int(image.max()) >= self.appearance.shape[0]:
            raise ValueError(f"image index {int(image.max())} >= model.appearance_images="
                             f"{self.appearance.shape[0]}: raise model.appearance_images")
        return self.appearance[image]

    def surface_box(self, aabb):
        """See :meth:`NeRFModel.surface_box`: the uncontracted region, the cube [-1, 1]^3 (the
        contraction maps everything beyond it into a shell of the grid at lower resolution)."""
        return torch.tensor([[-1.0] * 3, [1.0] * 3])

    def field_at(self, x, viewdirs=None):
        """See :meth:`NeRFModel.field_at`: colours with the mean trained appearance embedding."""
        if viewdirs is None:
            return self.field.density(x).float(), None
        rgb, sigma = self.field(x, viewdirs, self.appearance_of(None, x.shape[0], x.device))
        return sigma.float(), rgb.float()

    def _intervals(self, edges_s, near, far):
        """s-space edges [n, k + 1] -> t_starts, t_ends, t_mid [n, k] along unit directions."""
        t = contraction.s_to_t(edges_s, near, far)
        return t[:, :-1], t[:, 1:], 0.5 * (t[:, :-1] + t[:, 1:])

    def forward(self, rays_o, rays_d, viewdirs, near, far, *, train: bool = False,
                generator=None, background: torch.Tensor | None = None,
                image: torch.Tensor | None = None):
        """See :mod:`nerf_dist.models.base`; `far` is replaced by model.far_bound (scene units).
        image: [n_rays] int training-image index per ray, or None (the mean embedding, no pose
        correction; model.pose_refine corrects a training image's rays first). In
        training the output also holds edges [n, k + 1], weights [n, k] (s-space, the field's)
        and proposal: [(edges, weights)] per proposal level, for :meth:`losses`."""
        n, dev = rays_o.shape[0], rays_o.device
        if self.pose is not None and image is not None:
            rays_o, rays_d, viewdirs = self.pose(rays_o, rays_d, viewdirs, image)
        scale = rays_d.norm(dim=-1, keepdim=True)                       # metric length per t
        near_m = (torch.as_tensor(near, dtype=torch.float32, device=dev).reshape(-1, 1)
                  * scale).expand(n, 1)
        far_m = torch.full_like(near_m, float(self.cfg.far_bound))
        with autocast_context(dev, self.cfg.precision):
            if self.grid is not None:
                smp = march(self.grid, self.cfg.contraction, rays_o, viewdirs, near_m, far_m,
                            self.cfg.occupancy_steps, self.cfg.field_samples, train, generator)
                tm, delta, extra = smp["t"], smp["delta"], {"s": smp["s"], "width": smp["width"]}
            else:
                tm, delta, extra = self._proposal_samples(rays_o, viewdirs, near_m, far_m, train,
                                                          generator)
            pts = rays_o[:, None, :] + viewdirs[:, None, :] * tm[..., None]
            k = tm.shape[1]
            dirs = viewdirs[:, None, :].expand(n, k, 3).reshape(-1, 3)
            app = self.appearance_of(image, n, dev)
            app = None if app is None else app[:, None, :].expand(n, k, -1).reshape(n * k, -1)
            rgb, sigma = self.field(pts.reshape(-1, 3), dirs, app)
        rgb, sigma = rgb.float().view(n, k, 3), sigma.float().view(n, k)
        w, _, _ = volrend.render_weights(sigma, delta)
        out_rgb, depth, acc = volrend.composite(w, rgb, tm, background)
        out = {"rgb": out_rgb, "depth": depth / scale[:, 0], "acc": acc,
               "depth_median": volrend.median_depth(w, tm) / scale[:, 0],
               "samples_per_ray": torch.tensor(float(sum(self.n_proposal) + k))}
        if train:
            out.update(weights=w, **extra)
        return out

    def _proposal_samples(self, rays_o, viewdirs, near_m, far_m, train: bool, generator):
        """Steps 1-2 of the module doc (under the caller's autocast): the field's sample
        distances t_mid [n, k] and lengths [n, k] (scene units), and for :meth:`losses` edges
        [n, k + 1] (s-space) and proposal: [(edges, weights)] per proposal level."""
        n, dev = rays_o.shape[0], rays_o.device
        anneal = self.anneal if train else 1.0
        k0 = self.n_proposal[0]
        base = torch.linspace(0.0, 1.0, k0 + 1, device=dev).expand(n, k0 + 1)
        if train:
            # NOTE: one shift per ray, at most half a bin, keeps the edges sorted and in [0, 1].
            u = (uniform(n, 1, generator, dev) - 0.5) / k0
            edges = torch.cat([base[:, :1], (base[:, 1:-1] + u), base[:, -1:]], -1)
        else:
            edges = base
        sizes = self.n_proposal[1:] + [self.cfg.field_samples]
        prop_out = []
        for net, k in zip(self.proposals, sizes):
            ts, te, tm = self._intervals(edges, near_m, far_m)
            pts = rays_o[:, None, :] + viewdirs[:, None, :] * tm[..., None]
            if train:
                sigma = net(pts.reshape(-1, 3)).view(n, -1)
            else:
                with torch.no_grad():
                    sigma = net(pts.reshape(-1, 3)).view(n, -1)
            w, _, _ = volrend.render_weights(sigma, te - ts)
            prop_out.append((edges, w))
            edges = proposal.resample_edges(edges, w.detach() ** anneal, k, train, generator)
        ts, te, tm = self._intervals(edges, near_m, far_m)
        return tm, te - ts, {"edges": edges, "proposal": prop_out}


__all__ = ["UnboundedNeRF"]
