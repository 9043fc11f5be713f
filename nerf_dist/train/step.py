"""One training step's arithmetic as plain functions: the loss terms of a batch, and the backward
pass with a failed gradient all-reduce told apart from any other error by where it happened."""
from __future__ import annotations

import torch

from ..config import Config
from ..dist import CollectiveError
from ..render_ops.sampling import RowNoise
from .build import CommTimer, SceneBounds
from .schedule import step_seed


def step_losses(ddp: torch.nn.Module, model: torch.nn.Module, batch: dict, cfg: Config,
                step: int, bounds: SceneBounds, world_size: int
                ) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """Forward this rank's part of step `step`'s global batch -> (out, loss terms, sse).

    batch: rays_o, rays_d, viewdirs [n_rays, 3], rgb [n_rays, 3], n_global (rays over all
    ranks), index [n_rays] (positions in the global batch; optional), image, alpha [n_rays]
    (where the loader gives them; see :meth:`NeRFModel.train_inputs`). The sample jitter of each
    ray is drawn from (seed, step, its global index), so N ranks draw what one rank would.
    terms: the model kind's loss terms (:meth:`NeRFModel.losses`); their sum is the loss, scaled
    so that after DDP averages the gradients they are those of the global batch's mean.
    sse: [] the sum of squared colour errors of this rank's rays (no gradient; logged PSNR).
    """
    n_global = int(batch["n_global"])
    index = batch.get("index")
    if index is None:
        index = torch.arange(batch["rgb"].shape[0])
    noise = RowNoise(step_seed(cfg.seed, step, "jitter"), n_global, index)
    # NOTE: the kind says what forward gets besides the rays (its background, the image index)
    # and the colours it is scored against (e.g. re-composited over a random background).
    extra, target = model.train_inputs(batch, bounds.background, RowNoise(
        step_seed(cfg.seed, step, "background"), n_global, index))
    out = ddp(batch["rays_o"], batch["rays_d"], batch["viewdirs"], bounds.near, bounds.far,
              train=True, generator=noise, **extra)
    # NOTE: sum of squared errors / (global rays * 3) * world_size: after DDP averages the
    # gradients this is exactly the gradient of the global batch's mean squared error.
    scale = world_size / (n_global * 3)
    terms = model.losses(out, target, scale)
    with torch.no_grad():
        sse = ((out["rgb"] - target) ** 2).sum()
    return out, terms, sse


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler, comm: CommTimer | None,
             step: int) -> None:
    """loss.backward() through the scaler. With DDP (comm given), a failure of the gradient
    all-reduce itself raises :class:`CollectiveError`; any other error propagates as it is."""
    if comm is None:
        scaler.scale(loss).backward()
        return
    comm.error = None
    try:
        scaler.scale(loss).backward()
    except RuntimeError as e:
        if comm.error is None:
            raise
        raise CollectiveError(f"the gradient all-reduce of step {step}", comm.error) from e
