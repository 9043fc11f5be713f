"""Building a training run's parts: the scene bounds from the cache, the model under DDP (with a
timed gradient all-reduce), the optimiser and the gradient scaler."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..dist import DistInfo
from ..models import build_model
from .schedule import make_adam


@dataclass(frozen=True)
class SceneBounds:
    """What every ray of the run shares: near/far planes, background colour [3] (on the
    training device) and the scene box aabb [2, 3] (CPU), from the pixel cache's manifest."""
    near: float
    far: float
    background: torch.Tensor
    aabb: torch.Tensor

    @classmethod
    def from_meta(cls, meta: dict, device: torch.device) -> SceneBounds:
        return cls(float(meta["near"]), float(meta["far"]),
                   torch.tensor(meta["background"], dtype=torch.float32, device=device),
                   torch.tensor(meta["aabb"], dtype=torch.float32))

    def state(self) -> dict:
        """The checkpoint's "scene" entry."""
        return {"near": self.near, "far": self.far, "aabb": self.aabb,
                "background": self.background.cpu()}


class CommTimer:
    """DDP communication hook that times each gradient bucket's all-reduce (seconds per step).

    ``error`` records a failure of the all-reduce itself, so the trainer can tell a failed
    collective from any other error of the backward pass by where it happened, not by its text.
    """

    def __init__(self):
        self.seconds = 0.0
        self.error: BaseException | None = None

    def hook(self, state, bucket):
        t0 = time.perf_counter()
        buf = bucket.buffer()
        buf.div_(tdist.get_world_size())
        try:
            fut = tdist.all_reduce(buf, async_op=True).get_future()
        except Exception as e:
            self.error = e
            raise

        def done(f):
            self.seconds += time.perf_counter() - t0
            try:
                return f.value()[0]
            except Exception as e:
                self.error = e
                raise
        return fut.then(done)


def build_model_ddp(cfg: Config, dist: DistInfo, aabb: torch.Tensor
                    ) -> tuple[torch.nn.Module, torch.nn.Module, CommTimer, tuple[int, int] | None]:
    """(model, the module to call for training: DDP-wrapped when distributed, comm timer,
    placement): placement is None for a replicated model, or (replica, n_replicas) for a model
    that placed itself across the ranks (:meth:`NeRFModel.distribute`; not wrapped in DDP)."""
    model = build_model(cfg.model, aabb)
    comm = CommTimer()
    if not dist.distributed:
        model = model.to(dist.device)
        return model, model, comm, None
    # NOTE: before the move to the device, so a rank's device holds only its own part.
    placement = model.distribute(dist.rank, dist.world_size)
    model = model.to(dist.device)
    if placement is not None:
        return model, model, comm, placement
    # NOTE: buffers (occupancy grid, hash-grid index tables) are constants or deterministic
    # functions of (parameters, seed, step), identical on every rank: DDP need not broadcast
    # them (saves the grid's traffic every step; gloo also cannot send bool/int16 buffers).
    # The replica digest (dist.check_replicas) verifies that at resume and every save.
    DDP._set_params_and_buffers_to_ignore_for_model(model, [n for n, _ in model.named_buffers()])
    sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
            inspect.signature(DDP.__init__).parameters else {"broadcast_buffers": False})
    ddp = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
              **sync)
    ddp.register_comm_hook(None, comm.hook)
    return model, ddp, comm, None


def build_optimiser(model: torch.nn.Module, cfg: Config, device: torch.device
                    ) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """Adam over the model's parameter groups, and the gradient scaler (fp16 on CUDA only)."""
    opt = model.optimizer_settings()
    optim = make_adam(opt["params"], cfg.train.lr, opt["eps"], cfg.train.weight_decay)
    # NOTE: fp16 autocast needs loss scaling (its range underflows small gradients); bf16 does not.
    scaler = torch.amp.GradScaler("cuda", enabled=(cfg.model.precision == "fp16"
                                                   and device.type == "cuda"))
    return optim, scaler
