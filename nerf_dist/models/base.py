"""The protocol every model kind implements: the trainer, renderer, memory checks and checkpoints
see only this.

A model kind is a subclass of :class:`NeRFModel` (``nerf_dist/models/<kind>/model.py``) registered
with its config dataclass in :data:`nerf_dist.models.registry.KINDS`. Nothing outside the kind's
folder branches on the kind.

Construction: ``Kind(cfg: ModelConfig, aabb: [2, 3] tensor | None)``; cfg is the whole model.*
section (common keys + every kind's, :mod:`nerf_dist.models.config`); aabb is the scene box (from
the ray cache in training, from the checkpoint when loading); a kind that needs it raises
ValueError on None.

forward(rays_o [n_rays, 3], rays_d [n_rays, 3], viewdirs [n_rays, 3] unit, near, far, *,
        train=False, generator=None, background=None) -> dict
    rgb [n_rays, 3], depth [n_rays] (along rays_d, in its units), acc [n_rays] (opacity),
    samples_per_ray: 0-d tensor (mean field evaluations per ray, logged), plus every key that
    :meth:`NeRFModel.rgb_keys` names ([n_rays, 3] each).
    near, far: floats or [n_rays]; generator: torch.Generator or
    :class:`nerf_dist.render_ops.sampling.RowNoise` for training jitter (None at inference);
    background: [3] colour composited behind, or None.

losses(out, target_rgb [n_rays, 3], scale) -> {name: 0-d tensor}: the terms the loss is the sum of.
train_inputs(batch, background, noise) -> (forward keywords, target_rgb): what a training step
    passes to forward beyond the rays (default: the scene background) and scores against.
memory_estimate(cfg) (a classmethod) -> :class:`MemoryEstimate`: what a model of this config needs,
    known before it is built (the memory checks of nerf_dist.memory use it).
check_scene(cfg, n_images) (a classmethod): refuses a scene the config cannot train, before any
    work (e.g. model.appearance_images smaller than the training images).
surface_box(aabb [2, 3]) -> [2, 3]: where the surface of this model can be (mesh export's default
    box; default: the scene box).
field_at(x [n, 3], viewdirs [n, 3] | None) -> (sigma [n] >= 0, rgb [n, 3] | None): the field at
    scene points, no ray involved (the exporters of nerf_dist.export use it); rgb is None when
    viewdirs is None.

Placement hooks (defaults: a model replicated under DDP, as every kind was before):
init_from_rays (what the model derives from the scene's rays or sparse points, once per run),
distribute (a model that places itself across ranks returns its data shard; build_placed builds
only what a rank holds, for loading), sync_gradients, watch_collectives,
replica_key, checkpoint_state / load_full_state (checkpoints of the one-process layout).

State: parameters and buffers only; ``state_dict()`` is what a checkpoint holds, so a checkpoint
loads into ``Kind(cfg, aabb)`` built from the checkpoint's own config and scene box.
NOTE (DDP): buffers are never broadcast by DDP (the trainer tells DDP to ignore them); they must be
identical on every rank, i.e. constants or deterministic functions of (parameters, step,
generator) such as the fast model's occupancy grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Bytes of one float32: the unit of every estimate (upper bounds for fp32; bf16/fp16 need less).
F32 = 4
# Adam keeps, per parameter, a gradient and two moments: 3 floats beside the weight itself.
ADAM_FLOATS_PER_PARAM = 3


@dataclass(frozen=True)
class MemoryEstimate:
    """Upper-bound memory of one model kind for a config, in bytes (fp32), checked against
    measured peaks in tests/test_memory.py."""
    train_bytes_per_ray: int
    """Activations a training step holds per ray (forward pass kept for backward)."""
    render_bytes_per_ray: int
    """Activations rendering holds per ray in one model call (no grad)."""
    train_samples_per_ray: int
    """Field samples per ray held at once in training (for the check's message)."""
    render_samples_per_ray: int
    """Field samples per ray held at once when rendering."""
    param_bytes: int
    """Weights and buffers (the model's own memory, whatever it does)."""
    optimizer_bytes: int
    """What training adds per weight: gradients and the optimiser's state."""
    param_split: int = 1
    """Ranks the weights are split over (a partitioned model's boxes): on N ranks each holds
    1/min(param_split, N) of param_bytes and optimizer_bytes, besides :attr:`param_shared`."""
    param_shared: int = 0
    """Of param_bytes, what every rank holds whole however the rest is split (a partitioned
    model's shared colour head)."""

    def rank_param_bytes(self, world_size: int = 1, train: bool = False) -> int:
        """Weights (train: plus gradients and optimiser state) one rank of world_size holds: the
        shared part whole, the rest split over min(param_split, world_size) ranks."""
        total = self.param_bytes + (self.optimizer_bytes if train else 0)
        shared = -(-self.param_shared * total // max(self.param_bytes, 1))
        return shared + -(-(total - shared) // max(1, min(self.param_split, world_size)))

    def bytes_per_ray(self, train: bool) -> int:
        return self.train_bytes_per_ray if train else self.render_bytes_per_ray

    def samples_per_ray(self, train: bool) -> int:
        return self.train_samples_per_ray if train else self.render_samples_per_ray


def sse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors: pred, target [n_rays, 3] -> 0-d tensor."""
    return ((pred - target) ** 2).sum()


class NeRFModel(nn.Module):
    """Base class with the protocol's defaults (those of a plain MLP NeRF: nothing to do per step,
    Adam eps 1e-8 on every parameter, nothing extra to log, only ``rgb`` supervised, by squared
    error). A kind must say how much memory it needs (:meth:`memory_estimate`)."""

    EXTRA_OUTPUTS: tuple[str, ...] = ()
    """Keys forward returns besides rgb, depth and acc that the renderer may ask for
    (RenderSetup.extra_keys): 'depth_median' [n_rays], the median distance of the weights."""

    def __init__(self, cfg):
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

    def train_inputs(self, batch: dict, background: torch.Tensor, noise) -> tuple[dict, torch.Tensor]:
        """What a training step passes to forward besides the rays, and the colours it is scored
        against: ({keyword: value}, target_rgb [n_rays, 3]).

        batch: the loader's batch (rgb [n_rays, 3] composited over `background`; alpha [n_rays]
        and image [n_rays] int64 where the loader gives them); background: [3] the scene's colour;
        noise: a RowNoise of this step (per global-batch row, so any world size draws alike).
        Default: the scene's background, the batch's colours.
        """
        return {"background": background}, batch["rgb"]

    def losses(self, out: dict, target_rgb: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """The loss terms of a training step: {name: 0-d tensor}; the loss is their sum.

        out: this model's forward output in training; target_rgb: [n_rays, 3] the pixels' colours;
        scale: the factor that turns a sum of squared errors over this rank's rays into its share
        of the global batch's mean (the trainer's, so that DDP's gradient average is exact).
        Default: the squared error of every :meth:`rgb_keys` output, one term each, named by key.
        """
        return {key: sse(out[key], target_rgb) * scale for key in self.rgb_keys()}

    def optimizer_settings(self) -> dict:
        """Adam settings: {"params": parameters or param-group dicts, "eps": float}.

        NOTE: the trainer sets every group's lr from its schedule each step, so a group may set its
        own weight_decay or eps but not its lr.
        """
        return {"params": list(self.parameters()), "eps": 1e-8}

    uses_sparse_points: bool = False
    """Whether :meth:`init_from_rays` wants the scene's sparse points (read only when True)."""

    def init_from_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float,
                       far: float, points: torch.Tensor | None = None) -> None:
        """Called once as a run is built (before a resume loads its state), on every rank, with
        the same fixed sample of the training rays, rays_o, rays_d: [n_rays, 3] (CPU), and the
        scene's sparse points [n, 3] when it has them (COLMAP): what a model derives from the
        scene (the partitioned kind cuts its boxes at the medians of the sparse points, else of
        points along the rays). Must be a deterministic function of its inputs. Default:
        nothing."""

    @classmethod
    def build_placed(cls, cfg, aabb, rank: int = 0, world_size: int = 1) -> NeRFModel:
        """The model as rank `rank` of `world_size` holds it once placed (:meth:`distribute`),
        built without what other ranks hold; no collective. For loading a checkpoint into (its
        initial values are not the one-process model's). Default: the whole model."""
        return cls(cfg, aabb)

    def distribute(self, rank: int, world_size: int) -> tuple[int, int] | None:
        """Collective hook, called once on every rank before training when world_size > 1.

        None (the default): the model is replicated on every rank and the trainer wraps it in
        DDP. A model that places itself across ranks (the partitioned kind: box k on rank k)
        returns (replica, n_replicas): this rank reads shard `replica` of `n_replicas` of each
        global batch; the trainer then calls :meth:`sync_gradients` after every backward instead
        of DDP, compares the replica digest among ranks of equal :meth:`replica_key`, and saves
        what :meth:`checkpoint_state` returns.
        """
        return None

    def watch_collectives(self, watch) -> None:
        """Placed models: put ``watch(what)`` (a StallWatchdog's ``waiting``) around the
        exchanges inside forward, so a frozen or dead partner is named. Default: nothing (a
        replicated model's forward holds no collective)."""

    def sync_gradients(self) -> None:
        """Collective (placed models only): make every gradient what the global batch gives."""

    def render_split(self, rank: int, world_size: int) -> tuple[int, int, bool]:
        """(share, n_shares, sends): which of n_shares shares of a render's tiles rank `rank`
        renders, and whether it sends them to rank 0 (one rank per share does). Default: every
        rank its own share (rank, world_size, True)."""
        return rank, world_size, True

    def replica_key(self) -> int:
        """Ranks with the same key hold the same state (a placed model: the same boxes)."""
        return 0

    def checkpoint_state(self, optimizer: torch.optim.Optimizer
                         ) -> tuple[dict, dict, dict[str, dict] | None]:
        """(model state, optimiser state, parts) this rank contributes to a checkpoint, as one
        process holding the whole model would have them; no collective. parts None (the
        default): rank 0 writes the model and optimiser state in one file. A sharded model (the
        partitioned kind) returns the shared state and {part file name: state} of the parts this
        rank writes (possibly none); every part merged into the shared state is the whole."""
        return self.state_dict(), optimizer.state_dict(), None

    @classmethod
    def check_scene(cls, cfg, n_images: int) -> None:
        """ConfigError (naming the key) when a model of config cfg cannot train a scene of
        n_images training images; called on every rank alike, from the cache's manifest, before
        the model is built (default: any scene)."""

    @classmethod
    def checkpoint_parts_held(cls, cfg, rank: int, world_size: int) -> set[str] | None:
        """The part files of a sharded checkpoint rank `rank` of `world_size` reads on resume
        (None, the default: all of them)."""
        return None

    def load_full_state(self, model_state: dict, optimizer_state: dict,
                        optimizer: torch.optim.Optimizer) -> None:
        """Load a checkpoint's model and optimiser state (as :meth:`checkpoint_state` gave them) into
        this model, whatever its layout, and the optimiser over its parameters."""
        self.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)

    def progress_fields(self) -> dict[str, str]:
        """Short fields shown in the training progress line (rank 0). Default: none."""
        return {}

    def log_scalars(self) -> dict[str, float]:
        """Scalars logged with the training metrics (as ``model/<name>``) at each logging step."""
        return {}

    def surface_box(self, aabb: torch.Tensor) -> torch.Tensor:
        """[2, 3] (min, max): the box a mesh export covers by default, given the scene box aabb
        [2, 3] (the default: aabb itself)."""
        return aabb

    def field_at(self, x: torch.Tensor, viewdirs: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The field at scene points: x [n, 3] -> (sigma [n] fp32 >= 0, rgb [n, 3] fp32 seen along
        viewdirs [n, 3] unit, or None when viewdirs is None). No grad is needed by the callers
        (mesh export evaluates it under torch.no_grad)."""
        raise NotImplementedError(f"model kind {type(self).__name__} cannot be queried at points: "
                                  f"define {type(self).__name__}.field_at")

    @classmethod
    def memory_estimate(cls, cfg) -> MemoryEstimate:
        """What a model of config cfg needs (before it is built); every kind says."""
        raise NotImplementedError(f"model kind {cls.__name__} does not estimate its memory: "
                                  f"define {cls.__name__}.memory_estimate (see MemoryEstimate)")


__all__ = ["ADAM_FLOATS_PER_PARAM", "F32", "MemoryEstimate", "NeRFModel", "sse"]
