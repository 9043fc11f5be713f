"""Which checkpoint a run resumes from: decided once, on rank 0, and the same on every rank.

Rank 0 lists, loads and verifies the newest committed checkpoint (falling back past damaged ones),
checks its config against this run's and that steps are left, and broadcasts its verdict. Every
other rank then loads exactly that step. A failure on any rank (a refused config, a storage error
after its retries) is raised on every rank together; a fallback past a damaged checkpoint is said
in every rank's log. It runs before the ray cache is built, so a refusal costs seconds.

A sharded checkpoint (the partitioned kind) is read in part: each rank reads the shared state and
the part files of the boxes it will hold (``checkpoint_parts_held`` of the model class), so no
rank reads the whole model; a damaged part is found by the rank that reads it, said in every
rank's log, and every rank falls back together to the previous committed checkpoint (rank 0
chooses again among the older steps), as past a damaged gathered checkpoint.
"""
from __future__ import annotations

import sys

from .. import storage
from ..checkpoint import CheckpointError, Checkpointer, DamagedCheckpointError, load_url
from ..config import _RUNTIME_MODEL_KEYS, RESUME_SAID_KEYS, Config, ConfigError, diff_keys, from_dict
from ..dist import DistInfo, all_gather_object, broadcast_object, raise_together
from ..lifecycle import StallWatchdog
from ..models import model_class
from ..run_dir import config_at_rest

_TYPES = {"ConfigError": ConfigError, "CheckpointError": CheckpointError}


def check_checkpoint_dir(ckpt: Checkpointer, dist: DistInfo) -> None:
    """Rank 0 checks checkpoint.dir is writable; every rank raises if it is not."""
    err = None
    if dist.is_main:
        try:
            ckpt.check_writable()
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            err = str(e)
    err = broadcast_object(err)
    if err:
        raise RuntimeError(f"checkpoint.dir: {err}")


def resume_state(cfg: Config, ckpt: Checkpointer, dist: DistInfo, watchdog: StallWatchdog,
                 log) -> dict | None:
    """Collective: the checkpoint state to resume from, the same step on every rank (None:
    start at step 0). Raises on every rank together when any rank cannot resume; a part file
    that another rank finds damaged makes every rank fall back together (train.resume=auto)."""
    parts = model_class(cfg.model.kind).checkpoint_parts_held(cfg.model, dist.rank,
                                                              dist.world_size)
    below = None
    while True:
        found = _resume_attempt(cfg, ckpt, dist, watchdog, log, parts, below)
        if found is None or found[0] == "state":
            return None if found is None else found[1]
        below = found[1]     # ("damaged", step): every rank tries the steps before it


def _resume_attempt(cfg: Config, ckpt: Checkpointer, dist: DistInfo, watchdog: StallWatchdog,
                    log, parts: set[str] | None, below: int | None):
    """One round of :func:`resume_state`: None (start at 0), ("state", state) or ("damaged",
    step): a rank other than 0 found a part of step `step` damaged (said on every rank)."""
    verdict, state, mine = None, None, None
    if dist.is_main:
        try:
            verdict, state = choose_checkpoint(cfg, ckpt, log, parts, below)
        except Exception as e:  # noqa: BLE001 - raised on every rank below
            if not dist.distributed:
                raise
            verdict, mine = {"error": type(e).__name__, "message": str(e)}, e
    with watchdog.waiting("rank 0 to choose the checkpoint to resume from"):
        verdict = broadcast_object(verdict)
    if verdict.get("error"):
        if mine is not None:
            raise mine
        raise _TYPES.get(verdict["error"], RuntimeError)(
            f"rank 0 refused to resume: {verdict['message']}")
    for note in verdict.get("skipped", []):
        print(f"[rank {dist.rank}] {note}; every rank falls back to the previous checkpoint",
              file=sys.stderr, flush=True)
    step = verdict.get("step")
    if step is None:
        return None
    err, damaged = None, None
    if not dist.is_main:
        try:
            with watchdog.waiting(f"checkpoint step {step} to be read"):
                state = (ckpt.load_step(step, parts) if verdict["url"] is None
                         else load_url(verdict["url"], parts)[1])
            if int(state["step"]) != step:
                err = (f"checkpoint {storage.redact(verdict['url'] or ckpt.url)} read on rank "
                       f"{dist.rank} holds step {state['step']}, rank 0 read step {step}: "
                       f"storage changed under the run")
        except DamagedCheckpointError as e:
            if verdict["url"] is not None:      # an explicit checkpoint: no fallback
                err = f"rank {dist.rank} could not load checkpoint step {step}: {e}"
            else:
                damaged = f"rank {dist.rank}: {e}"
        except Exception as e:  # noqa: BLE001 - raised on every rank below
            err = f"rank {dist.rank} could not load checkpoint step {step}: {e}"
    with watchdog.waiting(f"the other ranks to load checkpoint step {step}"):
        raise_together(err, dist.rank, dist.world_size, CheckpointError)
        # NOTE: rank 0 reads only its own boxes' parts, so the damage of another rank's part is
        # known to that rank alone until it is shared here.
        hurt = [d for d in all_gather_object(damaged, dist.rank, dist.world_size) if d]
    if hurt:
        for note in hurt:
            print(f"[rank {dist.rank}] {note}; every rank falls back to the previous checkpoint",
                  file=sys.stderr, flush=True)
        return "damaged", step
    return "state", state


def choose_checkpoint(cfg: Config, ckpt: Checkpointer, log, parts: set[str] | None = None,
                      below: int | None = None) -> tuple[dict, dict | None]:
    """Rank 0: (verdict for the other ranks, the loaded state or None). Raises on a refusal.
    parts: the part files of a sharded checkpoint rank 0 reads (None: all); below: only the
    steps before it (another rank found that step's part damaged)."""
    mode = cfg.train.resume
    where = storage.redact(ckpt.url)
    if mode == "none":
        existing = ckpt.list()
        if existing:
            raise RuntimeError(
                f"checkpoint.dir {where} already holds checkpoints (newest: step {existing[-1]}) "
                f"and train.resume=none: continue with train.resume=auto, or use another run.dir "
                f"/ checkpoint.dir")
        return {"step": None}, None
    skipped: list[str] = []
    if mode == "auto":
        found = ckpt.newest_good(parts, below)
        if found is None:
            log(f"resume=auto: no checkpoint in {where}, starting from step 0")
            return {"step": None}, None
        step, state, skipped = found
    else:
        step, state = ckpt.load_url(mode, parts)
    saved, now = from_dict(state["config"]), from_dict(config_at_rest(cfg))
    diffs = diff_keys(saved, now, exclude=_RUNTIME_MODEL_KEYS + RESUME_SAID_KEYS)
    if diffs:
        raise ConfigError("cannot resume: the checkpoint was trained with a different model or "
                          "data config (model shapes, the scene frame or its pixels); "
                          "differing keys: " + "; ".join(diffs))
    said = diff_keys(saved, now, RESUME_SAID_KEYS, exclude=())
    if said:
        log(f"resume: from step {step} on with changed loss weights / schedule: "
            + "; ".join(said))
    if step >= cfg.train.steps and not cfg.train.allow_finished:
        raise RuntimeError(
            f"train.resume={mode}: the checkpoint is at step {step} and train.steps="
            f"{cfg.train.steps}, so there is nothing left to train. Raise train.steps to train "
            f"on, or pass train.allow_finished=true to accept a finished run")
    return {"step": int(step), "skipped": skipped, "url": None if mode == "auto" else mode}, state
