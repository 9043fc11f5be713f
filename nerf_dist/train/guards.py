"""What stops or skips a step, agreed by every rank: stop signals, non-finite values, the time
budget (one all-reduce per step), and the train.on_nonfinite policy."""
from __future__ import annotations

import torch
import torch.distributed as tdist

from ..config import Config
from ..dist import DistInfo, collective
from ..lifecycle import NonFiniteError, StallWatchdog, StopSignals


def nonfinite(loss: torch.Tensor, model: torch.nn.Module,
              scaler: torch.amp.GradScaler) -> torch.Tensor:
    """0-d bool tensor: the loss or (without fp16 loss scaling) any gradient is non-finite.

    NOTE: with fp16 loss scaling, inf gradients are routine (GradScaler skips those steps and
    lowers the scale), so only the loss is checked there.
    """
    bad = ~torch.isfinite(loss.detach().float())
    if not scaler.is_enabled():
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            # NOTE: the max-abs norm is NaN/inf exactly when some element is (no overflow).
            peak = torch.stack(torch._foreach_norm(grads, float("inf")))
            bad = bad | ~torch.isfinite(peak).all()
    return bad


def agree(dist: DistInfo, watchdog: StallWatchdog, stop: StopSignals | None,
          bad: torch.Tensor, budget_spent: bool, step: int,
          overflow: torch.Tensor | None = None) -> tuple[bool, bool, bool, bool]:
    """(stop signal, non-finite, time budget spent, fp16 overflow), agreed by every rank in one
    all-reduce.

    Any rank's stop signal, non-finite value or fp16 gradient overflow (:func:`scaler_overflow`)
    counts; the budget is rank 0's clock.
    """
    flags = torch.zeros(4, device=dist.device)
    flags[0] = float(stop is not None and stop.requested is not None)
    flags[1] = bad.to(flags.dtype)
    flags[2] = float(budget_spent and dist.is_main)
    if overflow is not None:
        flags[3] = overflow.to(flags)
    if dist.distributed:
        what = f"the other ranks to finish step {step}"
        with watchdog.waiting(what), collective(what):
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    a, b, c, d = (flags > 0).tolist()
    return a, b, c, d


def scaler_overflow(scaler: torch.amp.GradScaler, optim: torch.optim.Optimizer) -> torch.Tensor:
    """0-d bool: with fp16 loss scaling, this rank's gradients overflowed (the step GradScaler
    skips, lowering the scale). Unscales the gradients (``scaler.unscale_``; the step then uses
    them as they are). False without loss scaling.

    NOTE: GradScaler decides per process from its own gradients. Replicas under DDP hold the
    same averaged gradients, but a model placed across ranks (the partitioned kind) holds each
    box's gradients on its own ranks: one rank's inf must make every rank skip
    (:func:`agree`, then :func:`scaler_step`), or the shared head and the scales part ways.
    """
    if not scaler.is_enabled():
        return torch.zeros((), dtype=torch.bool)
    scaler.unscale_(optim)
    # NOTE: GradScaler's own record of this optimizer's check (what scaler.step reads), as
    # torch's ShardedGradScaler (FSDP) reads it to agree across ranks.
    found = scaler._found_inf_per_device(optim).values()
    return torch.tensor(bool(sum(float(v) for v in found) > 0))


def scaler_step(scaler: torch.amp.GradScaler, optim: torch.optim.Optimizer,
                overflow_anywhere: bool, take: bool = True) -> None:
    """scaler.step + scaler.update with the skip decided by every rank together: when any rank
    overflowed (:func:`agree`), this rank skips too and lowers its scale alike. take=False (a
    step skipped as non-finite): no optimiser step, and the scaler counts it as an overflow
    (its unscale_ of this step is closed, the scale lowered, on every rank alike)."""
    if not take and not scaler.is_enabled():
        return
    if (overflow_anywhere or not take) and scaler.is_enabled():
        for found in scaler._found_inf_per_device(optim).values():
            found.fill_(1.0)
    if take:
        scaler.step(optim)
    scaler.update()


def stop_anywhere(dist: DistInfo, watchdog: StallWatchdog, stop: StopSignals | None,
                  what: str) -> bool:
    """Collective: a stop signal arrived on any rank (`what` names the wait)."""
    flag = torch.tensor([float(stop is not None and stop.requested is not None)],
                        device=dist.device)
    if dist.distributed:
        with watchdog.waiting(what), collective(what):
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def on_nonfinite(cfg: Config, loss: float, step: int, in_a_row: int, skipped_total: int,
                 last_good: str) -> str:
    """train.on_nonfinite for a step whose loss or gradient was not finite: the line to log when
    the step is skipped; NonFiniteError (naming the step and the last good checkpoint) when the
    policy stops training."""
    t = cfg.train
    if t.on_nonfinite == "skip" and in_a_row < t.max_nonfinite:
        return (f"step {step}: non-finite loss or gradient (loss {loss:g}); step skipped "
                f"({in_a_row} in a row, {skipped_total + 1} in all; "
                f"train.max_nonfinite={t.max_nonfinite})")
    what = (f"{in_a_row} non-finite steps in a row (train.max_nonfinite={t.max_nonfinite})"
            if t.on_nonfinite == "skip" else "a non-finite loss or gradient")
    cause = (f"likely cause: the learning rate is too high for this model (train.lr={t.lr:g}); "
             f"lower it, or check the data (a corrupt image or ray cache) and model.precision")
    raise NonFiniteError(
        f"stopped at step {step}: {what} (loss {loss:g}); the optimiser step was not taken and "
        f"no checkpoint was written. Last good checkpoint: {last_good}. {cause}. "
        f"train.on_nonfinite=skip skips such steps instead")
