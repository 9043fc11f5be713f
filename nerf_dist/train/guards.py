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
          bad: torch.Tensor, budget_spent: bool, step: int) -> tuple[bool, bool, bool]:
    """(stop signal, non-finite, time budget spent), agreed by every rank in one all-reduce.

    Any rank's stop signal or non-finite value counts; the budget is rank 0's clock.
    """
    flags = torch.zeros(3, device=dist.device)
    flags[0] = float(stop is not None and stop.requested is not None)
    flags[1] = bad.to(flags.dtype)
    flags[2] = float(budget_spent and dist.is_main)
    if dist.distributed:
        what = f"the other ranks to finish step {step}"
        with watchdog.waiting(what), collective(what):
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    a, b, c = (flags > 0).tolist()
    return a, b, c


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
