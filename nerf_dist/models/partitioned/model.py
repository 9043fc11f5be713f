"""PartitionedNeRF: the scene box cut into P boxes (kd-tree), each box a field of its own, the
colour head shared; every ray rendered per box segment and composited in ray order.

Implements the model protocol (:mod:`nerf_dist.models.base`). One process holds every box by
default; :meth:`PartitionedNeRF.distribute` (the trainer's hook) keeps only this rank's boxes and
from then on forward exchanges the segment results within the box group (:mod:`.layout`), and
:meth:`sync_gradients` (called after backward instead of DDP) sums the shared head's gradients
over the box group and averages every gradient over the replicas.

Sampling: ``box_samples`` stratified points in each box's segment of each ray; the training
jitter of all P boxes is drawn at once ([n_rays, P * box_samples] from the step's generator, a
RowNoise keyed by the rays' global index), so a box samples the same points on whichever rank
holds it. NOTE: no occupancy grid yet: a box's samples do not skip its empty space.

State: the hash tables and MLPs of the boxes this rank holds (``boxes.<k>.*``), the shared
``colour.*``, and buffers ``bounds`` [P, 2, 3] (the partition), ``partition_source`` (index into
kdtree.SOURCES) and ``partition_points`` (how many points it was derived from), so a checkpoint
carries the partition. A checkpoint is sharded (:meth:`checkpoint_state`): each box's
parameters and Adam state are written by its owner in replica 0 as a part file
(``box-0003.pt``), rank 0 writes the rest; all of it in the one-process layout, so the parts
merged are what a gathered checkpoint holds, and :meth:`load_full_state` loads either onto any
layout (a resuming rank reads only its own boxes' parts, :meth:`checkpoint_parts_held`).
"""
from __future__ import annotations

import time

import torch
import torch.distributed as tdist
from torch import nn

from ...render_ops import contraction, sampling
from ..base import ADAM_FLOATS_PER_PARAM, F32, MemoryEstimate, NeRFModel
from ..config import ModelConfig
from .field import BoxField, ColourHead
from .kdtree import SOURCES, kd_partition, ray_points
from .layout import BoxLayout, make_layout, place
from .segments import (SEG_WIDTH, composite_segments, ray_box_segments, reduce_segment,
                       segment_samples)
from .unbounded import box_unit, open_outer_faces, spaced_samples


def load_balance(crossed: torch.Tensor, box_samples: int, seconds: float) -> dict[str, float]:
    """The model/* load-balance scalars of a training step. crossed: [n_rays, P] bool (ray n
    crosses box k; every rank knows it for every box, no exchange needed).

    box<k>_samples: field samples box k evaluated per ray of the batch; imbalance: the busiest
    box's samples over the mean (a box group runs at the pace of its busiest box: above ~1.5,
    move the split planes, i.e. re-derive the partition from points weighted like the rays);
    box_ms: this rank's time in its own boxes' fields (rank 0's is the one logged).
    """
    per_box = crossed.sum(0).double() * box_samples / max(crossed.shape[0], 1)
    out = {f"box{k}_samples": float(v) for k, v in enumerate(per_box)}
    out["imbalance"] = float(per_box.max() / per_box.mean().clamp_min(1e-12))
    out["box_ms"] = 1000.0 * seconds
    return out


# Points drawn along each training ray the partition is derived from (init_from_rays).
RAY_POINTS = 8


class PartitionedNeRF(NeRFModel):
    """P hash-grid boxes + a shared colour head. aabb: [2, 3] scene box (min, max)."""

    uses_sparse_points = True

    def __init__(self, cfg: ModelConfig, aabb: torch.Tensor | None,
                 place_as: tuple[int, int] | None = None):
        """place_as: (rank, world_size) to build only the boxes that rank holds once placed
        (:meth:`build_placed`); None: every box, the one-process layout."""
        super().__init__(cfg)
        if aabb is None:
            raise ValueError("model.kind=partitioned needs the scene's aabb")
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        P = cfg.partitions
        self.register_buffer("aabb", aabb.clone())
        self.register_buffer("bounds", kd_partition(None, aabb, P).float())
        if cfg.far_bound > 0:
            self.bounds.copy_(open_outer_faces(self.bounds, aabb))
        self.register_buffer("partition_source", torch.tensor(SOURCES.index("even")))
        self.register_buffer("partition_points", torch.tensor(0))
        # NOTE: placed, the layout has no process groups yet: forward refuses to run until
        # distribute() makes them.
        self.layout = make_layout(P) if place_as is None else place(P, *place_as)
        self.boxes = nn.ModuleDict({str(k): BoxField(cfg) for k in self.layout.owned})
        self.colour = ColourHead(cfg)
        self._load: dict[str, float] = {}

    # ------------------------------------------------------------------ partition and layout
    @torch.no_grad()
    def set_partition(self, points: torch.Tensor | None, source: str) -> None:
        """Re-cut the scene box at the kd-tree median splits of points [n, 3] (before training:
        the boxes' fields are not moved). source: one of kdtree.SOURCES."""
        n = 0 if points is None else int(points.reshape(-1, 3).shape[0])
        bounds = kd_partition(points, self.aabb, self.cfg.partitions)
        if self.cfg.far_bound > 0:
            bounds = open_outer_faces(bounds, self.aabb.double())
        self.bounds.copy_(bounds)
        self.partition_source.fill_(SOURCES.index(source))
        self.partition_points.fill_(n)

    def init_from_rays(self, rays_o, rays_d, near, far, points=None) -> None:
        """The partition from the scene's sparse points when given, else from points along the
        training rays (RAY_POINTS per ray)."""
        if points is not None and len(points):
            self.set_partition(torch.as_tensor(points).reshape(-1, 3), "sparse")
            return
        pts = ray_points(rays_o.double(), rays_d.double(), near, far, self.aabb.double().cpu(),
                         RAY_POINTS, torch.Generator().manual_seed(0))
        self.set_partition(pts, "rays")

    def distribute(self, rank: int, world_size: int) -> tuple[int, int]:
        """Collective, once, before training: take this rank's place in the layout (drop the
        boxes other ranks hold). Returns (replica, n_replicas): the shard of the global batch this
        rank reads (every rank of a box group reads the same rays)."""
        lay = place(self.cfg.partitions, rank, world_size)
        missing = [k for k in lay.owned if str(k) not in self.boxes]
        if missing:
            raise ValueError(f"rank {rank} of {world_size} holds boxes {list(lay.owned)} of "
                             f"model.partitions={self.cfg.partitions}, but this model was built "
                             f"without box(es) {missing} (built for another placement)")
        self.layout = make_layout(self.cfg.partitions, rank, world_size)
        for k in range(self.cfg.partitions):
            if k not in self.layout.owned and str(k) in self.boxes:
                del self.boxes[str(k)]
        return self.layout.replica, self.layout.n_replicas

    def watch_collectives(self, watch) -> None:
        """``watch(what)`` around the segment exchange of every forward (:mod:`.layout`)."""
        self.layout.watch = watch

    @classmethod
    def build_placed(cls, cfg: ModelConfig, aabb, rank: int = 0, world_size: int = 1
                     ) -> PartitionedNeRF:
        """Only the boxes rank `rank` of `world_size` holds (and the shared head), so a model
        larger than one process loads (`nerf-dist eval` / `render` under torchrun); forward
        needs :meth:`distribute` first. ValueError when the ranks do not fit the boxes."""
        return cls(cfg, aabb, place_as=(rank, world_size))

    def sync_gradients(self) -> None:
        """Collective, after backward: the shared head's gradients summed over the box group,
        every gradient averaged over the replicas (what DDP does for a replicated model)."""
        lay = self.layout
        if lay.world_group is None:
            return
        for params, group in ((list(self.boxes.parameters()), lay.replica_group),
                              (list(self.colour.parameters()), lay.world_group)):
            if group is None:
                continue
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            tdist.all_reduce(flat, group=group)
            flat /= lay.n_replicas
            i = 0
            for p in params:
                n = p.numel()
                p.grad = flat[i:i + n].view_as(p).clone()
                i += n

    def replica_key(self) -> int:
        """Ranks of equal member hold the same boxes (dist.check_replicas compares each box
        between the ranks holding it, and the shared head and partition between all ranks)."""
        return self.layout.member

    def render_split(self, rank: int, world_size: int) -> tuple[int, int, bool]:
        """Placed across ranks (training): a render's tiles are shared among the replicas, every
        rank of a box group renders its replica's (its forward exchanges segment results with
        the group), and the group's member 0 sends them. Holding every box: the default."""
        lay = self.layout
        if lay.world_group is None:
            return rank, world_size, True
        return lay.replica, lay.n_replicas, lay.member == 0

    def _full_names(self) -> list[str]:
        """Parameter names of the one-process layout, in its order (the optimiser's indices)."""
        box = [n for n, _ in BoxField(self.cfg).named_parameters()] if not len(self.boxes) else \
            [n for n, _ in next(iter(self.boxes.values())).named_parameters()]
        return [f"boxes.{k}.{n}" for k in range(self.cfg.partitions) for n in box] + \
            [f"colour.{n}" for n, _ in self.colour.named_parameters()]

    @staticmethod
    def part_name(k: int) -> str:
        """Box k's part file in a sharded checkpoint."""
        return f"box-{k:04d}.pt"

    @classmethod
    def checkpoint_parts_held(cls, cfg: ModelConfig, rank: int, world_size: int) -> set[str]:
        """The part files rank `rank` of `world_size` reads on resume: its own boxes' only."""
        return {cls.part_name(k) for k in place(cfg.partitions, rank, world_size).owned}

    def checkpoint_state(self, optimizer: torch.optim.Optimizer
                         ) -> tuple[dict, dict, dict[str, dict]]:
        """(shared model state, shared optimiser state, {part file: state}), all in the
        one-process layout (optimiser indices of :meth:`_full_names`); no collective.

        Shared: everything but the boxes (colour head, aabb, partition) and the colour head's
        Adam state with the parameter group. Parts: one per box this rank holds when it is in
        replica 0 (its boxes' owner for the checkpoint; none elsewhere), each {"model":
        boxes.<k>.*, "optimizer": {"state": {index: Adam state}}}. Merged back
        (:func:`nerf_dist.checkpoint.files.merge_part`) they are the gathered checkpoint.
        """
        cpu = lambda v: v.cpu() if torch.is_tensor(v) else v                      # noqa: E731
        names = [n for n, _ in self.named_parameters()]
        index = {n: i for i, n in enumerate(self._full_names())}
        opt = optimizer.state_dict()
        by_index = {index[names[i]]: {k: cpu(v) for k, v in st.items()}
                    for i, st in opt["state"].items()}
        model = {k: v.cpu() for k, v in self.state_dict().items()}
        group = {k: v for k, v in opt["param_groups"][0].items() if k != "params"}
        box_of = lambda name: int(name.split(".")[1]) if name.startswith("boxes.") else None  # noqa: E731
        full = self._full_names()
        shared = ({k: v for k, v in model.items() if box_of(k) is None},
                  {"state": {i: st for i, st in by_index.items() if box_of(full[i]) is None},
                   "param_groups": [{**group, "params": list(range(len(full)))}]})
        parts = {}
        if self.layout.replica == 0:
            for k in self.layout.owned:
                parts[self.part_name(k)] = {
                    "model": {n: v for n, v in model.items() if box_of(n) == k},
                    "optimizer": {"state": {i: st for i, st in by_index.items()
                                            if box_of(full[i]) == k}}}
        return shared[0], shared[1], parts

    def load_full_state(self, model_state: dict, optimizer_state: dict,
                        optimizer: torch.optim.Optimizer) -> None:
        """A one-process checkpoint onto this layout: this rank's boxes and the shared head, and
        their optimiser state (one parameter group, indexed in the one-process order)."""
        self.load_state_dict(model_state)
        index = {n: i for i, n in enumerate(self._full_names())}
        names = [n for n, _ in self.named_parameters()]
        group = {k: v for k, v in optimizer_state["param_groups"][0].items() if k != "params"}
        state = {j: optimizer_state["state"][index[n]] for j, n in enumerate(names)
                 if index[n] in optimizer_state["state"]}
        optimizer.load_state_dict({"state": state,
                                   "param_groups": [{**group, "params": list(range(len(names)))}]})

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """A checkpoint of any layout onto this one: keys of boxes this rank does not hold are
        skipped (a one-process checkpoint holds every box)."""
        held = set(self.boxes.keys())
        state = {k: v for k, v in state.items()
                 if not k.startswith("boxes.") or k.split(".")[1] in held}
        return super().load_state_dict(state, strict=strict, assign=assign)

    # ------------------------------------------------------------------ protocol
    def optimizer_settings(self) -> dict:
        return {"params": list(self.parameters()), "eps": 1e-15}

    def log_scalars(self) -> dict[str, float]:
        return dict(self._load)

    def progress_fields(self) -> dict[str, str]:
        """The load balance of the last training step in the progress line: samples per ray of
        each box ("box=31/12") and the imbalance (model/imbalance: busiest box over the mean)."""
        if not self._load:
            return {}
        per_box = [self._load[f"box{k}_samples"] for k in range(self.cfg.partitions)]
        return {"box": "/".join(f"{v:.0f}" for v in per_box),
                "imb": f"{self._load['imbalance']:.2f}"}

    def losses(self, out: dict, target_rgb: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        terms = super().losses(out, target_rgb, scale)
        if self.cfg.distortion_weight > 0:
            # NOTE: scale * 3 turns a per-ray sum into the global batch's per-ray mean share.
            terms["distortion"] = self.cfg.distortion_weight * out["distortion"].sum() * scale * 3
        return terms

    @classmethod
    def memory_estimate(cls, cfg: ModelConfig) -> MemoryEstimate:
        """Of one process holding every box; param_split=P: a rank of a box group of G ranks
        holds 1/G of the boxes' weights and the whole colour head (param_shared; the memory
        checks of training, validation, eval and render count that share). Per sample as the fast kind's
        field; box_samples per box crossed, at most P boxes per ray (a rank of a box group
        evaluates its boxes for its replica's rays: the same bytes per rank)."""
        L, Fd, h, g, P = cfg.hash_levels, cfg.hash_features, cfg.hidden, cfg.geo_features, \
            cfg.partitions
        samples = cfg.box_samples * P
        per_sample = {True: 256 * L + F32 * (2 * L * Fd + 4 * h + 3 * g + 60) + 64,
                      False: 320 * L + F32 * (L * Fd + 3 * h + 2 * g + 40) + 64}
        shared = (g + 17) * h + (h + 1) * h + (h + 1) * 3
        n = P * (L * (1 << cfg.hash_log2_size) * Fd + (L * Fd + 1) * h + (h + 1) * (1 + g)) \
            + shared
        return MemoryEstimate(samples * per_sample[True], samples * per_sample[False], samples,
                              samples, n * F32, ADAM_FLOATS_PER_PARAM * n * F32, param_split=P,
                              param_shared=shared * F32)

    # ------------------------------------------------------------------ rendering
    def render_box(self, k: int, rays_o, rays_d, viewdirs, t0, t1, u, near=None, far=None
                   ) -> torch.Tensor:
        """Box k's segment of each ray -> its reduction [n_rays, SEG_WIDTH].
        t0, t1: [n_rays] the segment; u: [n_rays, box_samples] jitter or None; near, far:
        [n_rays] the whole ray's ends, where normalised distance s is 0 and 1 (None: the
        distortion is measured in t)."""
        S, n = self.cfg.box_samples, rays_o.shape[0]
        # NOTE: only rays crossing the box reach its field; a missed box's reduction is exactly
        # zero (no colour, optical depth, opacity, depth or distortion).
        hit = (t1 > t0).nonzero().squeeze(-1)
        rays_o, rays_d, viewdirs = rays_o[hit], rays_d[hit], viewdirs[hit]
        uk = None if u is None else u[hit]
        lo, hi = self.bounds[k, 0].to(rays_o), self.bounds[k, 1].to(rays_o)
        if self.cfg.far_bound > 0:
            ts, te, tpos = spaced_samples(t0[hit], t1[hit], S, uk, rays_d.norm(dim=-1),
                                          self._unit())
            pts = rays_o[:, None, :] + rays_d[:, None, :] * tpos[..., None]     # [m, S, 3]
            unit = box_unit(pts.reshape(-1, 3), lo, hi, self.aabb)
        else:
            ts, te, tpos = segment_samples(t0[hit], t1[hit], S, uk)
            pts = rays_o[:, None, :] + rays_d[:, None, :] * tpos[..., None]     # [m, S, 3]
            unit = ((pts - lo) / (hi - lo)).reshape(-1, 3)
        sigma, geo = self.boxes[str(k)](unit)
        d = viewdirs[:, None, :].expand(-1, S, -1).reshape(-1, 3)
        rgb = self.colour(geo, d)
        m = hit.numel()
        s = None if near is None else self._to_s((ts, te, tpos), near[hit], far[hit],
                                                 rays_d.norm(dim=-1))
        seg = reduce_segment(sigma.view(m, S), rgb.view(m, S, 3), ts, te, tpos,
                             rays_d.norm(dim=-1), s)
        return seg.new_zeros(n, SEG_WIDTH).index_put((hit,), seg)

    def _to_s(self, ts: tuple, near: torch.Tensor, far: torch.Tensor, ray_scale: torch.Tensor
              ) -> tuple:
        """Ray parameters t [m, S] (each of ts) -> normalised distance s in [0, 1] (near -> 0,
        far -> 1): linear in t when bounded, in the samples' spacing (linear near, disparity far)
        with model.far_bound > 0, as the unbounded kind's s. near, far, ray_scale: [m]."""
        if self.cfg.far_bound > 0:
            m = (ray_scale / self._unit())[:, None]
            g0, g1 = contraction.spacing(near[:, None] * m), contraction.spacing(far[:, None] * m)
            return tuple((contraction.spacing(t * m) - g0) / (g1 - g0) for t in ts)
        span = (far - near).clamp_min(1e-12)[:, None]
        return tuple((t - near[:, None]) / span for t in ts)

    def field_at(self, x, viewdirs=None):
        """See :meth:`NeRFModel.field_at`: each point is evaluated by the box holding it (boxes
        are half-open [lo, hi) so a point on a shared face has one owner; the scene box's far
        faces are closed); zero density outside every box. Needs every box on this rank (a
        model loaded by run_dir.load_model holds them all)."""
        missing = sorted(set(range(self.cfg.partitions)) - set(self.layout.owned))
        if missing:
            raise ValueError(f"field_at needs every box on this rank; boxes {missing} are not here")
        return self.field_at_boxes(x, viewdirs, range(self.cfg.partitions))

    def field_at_boxes(self, x, viewdirs=None, boxes=()):
        """:meth:`field_at` of the points x [n, 3] that the boxes `boxes` (held on this rank) own,
        zero density and colour for every other point -> (sigma [n], rgb [n, 3] | None). Summed
        over a set of ranks whose boxes together are every box once, it is field_at exactly (the
        mesh export of a model placed across ranks, nerf_dist.export.mesh.split_field)."""
        wanted = set(boxes)
        n = x.shape[0]
        sigma = x.new_zeros(n, dtype=torch.float32)
        rgb = x.new_zeros(n, 3, dtype=torch.float32) if viewdirs is not None else None
        taken = torch.zeros(n, dtype=torch.bool, device=x.device)
        for k in range(self.cfg.partitions):
            lo, hi = self.bounds[k, 0].to(x), self.bounds[k, 1].to(x)
            top = hi >= self.aabb[1].to(x)
            inside = ((x >= lo) & ((x < hi) | (top & (x <= hi)))).all(-1) & ~taken
            taken |= inside
            if k not in wanted:
                continue
            idx = inside.nonzero().squeeze(-1)
            if not idx.numel():
                continue
            pts = x[idx]
            unit = (box_unit(pts, lo, hi, self.aabb) if self.cfg.far_bound > 0
                    else (pts - lo) / (hi - lo))
            s, geo = self.boxes[str(k)](unit)
            sigma[idx] = s.float()
            if viewdirs is not None:
                rgb[idx] = self.colour(geo, viewdirs[idx]).float()
        return sigma, rgb

    def _unit(self) -> float:
        """The scene box's half-size: where a box's sample spacing turns from linear in distance
        to linear in disparity (model.far_bound > 0)."""
        return float((self.aabb[1] - self.aabb[0]).max()) / 2

    def forward(self, rays_o, rays_d, viewdirs, near, far, *, train: bool = False,
                generator=None, background: torch.Tensor | None = None):
        """See :mod:`nerf_dist.models.base`; with model.far_bound > 0, `far` is
        replaced by that many scene units along each ray."""
        n, P, S = rays_o.shape[0], self.cfg.partitions, self.cfg.box_samples
        if self.cfg.far_bound > 0:
            far = self.cfg.far_bound / rays_d.norm(dim=-1)
        t0, t1 = ray_box_segments(rays_o, rays_d, self.bounds, near, far)        # [n, P]
        near_n, far_n = (torch.as_tensor(v, dtype=rays_o.dtype, device=rays_o.device)
                         .reshape(-1).expand(n) for v in (near, far))
        u = None
        if train:
            u = sampling.uniform(n, P * S, generator, rays_o.device).to(rays_o.dtype).view(n, P, S)
        local = []
        t_start = time.perf_counter()
        for k in self.layout.owned:
            local.append(self.render_box(k, rays_o, rays_d, viewdirs, t0[:, k], t1[:, k],
                                         None if u is None else u[:, k], near_n, far_n))
        seconds = time.perf_counter() - t_start
        seg = self.layout.gather(torch.stack(local, 1))                          # [n, P, W]
        out = composite_segments(seg, t0, background)
        crossed = (t1 > t0)[:, list(self.layout.owned)].sum()
        if train:
            self._load = load_balance(t1 > t0, S, seconds)
        return {"rgb": out["rgb"], "depth": out["depth"], "acc": out["acc"],
                "distortion": out["distortion"],
                "samples_per_ray": torch.tensor(float(crossed) * S / max(n, 1))}


__all__ = ["BoxLayout", "PartitionedNeRF"]
