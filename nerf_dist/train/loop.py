"""The Trainer: builds a run from its parts and trains it in a short loop; :func:`train` runs one
and records how it ended in RUN_DIR/status.json.

Single process and DistributedDataParallel share one code path: `DistInfo` says rank and world
size; with world_size == 1 no process group exists and nothing is wrapped.

Determinism: every random draw of step k comes from generators seeded by (seed, k) (ray batch
positions in the loader, sample jitter via :class:`render_ops.sampling.RowNoise`), so a resumed
run repeats the uninterrupted one, and N ranks follow the trajectory of one rank.
"""
from __future__ import annotations

import os
import time

import torch

from .. import memory, storage
from ..checkpoint import CheckpointError, Checkpointer
from ..config import Config
from ..dist import (CollectiveError, DistInfo, all_gather_object, check_replicas, collective,
                    raise_together)
from ..lifecycle import StallWatchdog, StopSignals, write_status
from ..loader import RayLoader
from ..logger import make_logger
from ..metrics import mse_to_psnr
from ..models import model_class
from ..ray_cache import ensure_cache, even_indices
from ..run_dir import config_at_rest, run_paths, write_config
from ..scenes import sparse_points
from . import guards
from .build import SceneBounds, build_model_ddp, build_optimiser
from .resume import check_checkpoint_dir, resume_state
from .schedule import lr_at, step_seed
from .step import backward, step_losses
from .validation import Validator


class Trainer:
    """Train a NeRF as configured. Methods: train_step, train, evaluate_val, save, close."""

    def __init__(self, cfg: Config, dist: DistInfo, stop: StopSignals | None = None):
        self.cfg, self.dist, self.device, self.stop = cfg, dist, dist.device, stop
        self.paths = run_paths(cfg)
        self.watchdog = StallWatchdog(dist.rank, cfg.dist.stall_warn_s,
                                      cfg.dist.timeout_s if dist.distributed else None)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if self.device.type == "cpu":
            # NOTE: subnormal floats (tiny gradients, Adam moments) make x86 arithmetic many times
            # slower as training goes on; flushing them to zero changes no result that matters.
            torch.set_flush_denormal(True)
        torch.manual_seed(cfg.seed)
        self.log = make_logger(dist.is_main, self.paths["tb"], cfg.log.progress)
        if dist.is_main:
            os.makedirs(cfg.run.dir, exist_ok=True)
        self.ckpt = Checkpointer(self.paths["checkpoints"], cfg.checkpoint.keep, dist.is_main)
        check_checkpoint_dir(self.ckpt, dist)
        # NOTE: the resume decision (and its config checks) comes before the ray-cache build, so a
        # mistyped override on an existing run is refused in seconds and changes nothing.
        resume = resume_state(cfg, self.ckpt, dist, self.watchdog, self.log.info)

        with self.watchdog.waiting("the ray cache (building or reading it, or a peer doing so)"):
            self.cache = ensure_cache(cfg.data, self.paths["cache"], dist.rank, dist.world_size,
                                      log=self.log.info)
        # NOTE: from the manifest every rank holds alike, so every rank refuses alike, before work.
        model_class(cfg.model.kind).check_scene(cfg.model, self.cache.n_images)
        # NOTE: on every rank, so a rank short of memory never leaves the others in a collective.
        memory.on_all_ranks(lambda: memory.check_train_batch(cfg, self.cache.n_pixels,
                                                             dist.world_size, self.device),
                            dist.rank, dist.world_size)
        self.bounds = SceneBounds.from_meta(self.cache.meta, self.device)
        self.model, self.ddp, self.comm, self.placement = build_model_ddp(cfg, dist,
                                                                          self.bounds.aabb)
        self.model.watch_collectives(self.watchdog.waiting)
        # NOTE: the same fixed sample of training rays on every rank (cameras only, no shard read),
        # and the scene's sparse points where it has them (COLMAP), read by every rank alike.
        sample = self.cache.rays(even_indices(self.cache.n_pixels, 4096))
        self.model.init_from_rays(sample["rays_o"], sample["rays_d"], self.bounds.near,
                                  self.bounds.far, points=sparse_points(cfg.data)
                                  if self.model.uses_sparse_points else None)
        # NOTE: a model placed across ranks (model.partitions boxes) reads one shard per replica:
        # every rank of a box group sees the same rays; the global batch is the same either way.
        self.shard = self.placement or (dist.rank, dist.world_size)
        self.loader = RayLoader(self.cache, *self.shard, cfg.train.rays_per_batch,
                                cfg.seed, cfg.train.precrop_steps, cfg.train.precrop_frac,
                                device=self.device, cache_memory=cfg.data.cache_memory_bytes,
                                log=self.log.info, watch=self.watchdog.waiting,
                                agree=(dist.rank, dist.world_size))
        self.optim, self.scaler = build_optimiser(self.model, cfg, self.device)
        self.validator = Validator(cfg, dist, self.log, self.watchdog, stop)
        self.step = 0
        self.saved_step = -1        # newest checkpoint this run wrote or resumed from
        self.nonfinite_total = 0    # steps skipped for a non-finite loss/gradient (this session)
        self.elapsed = 0.0          # training seconds accumulated over all sessions of this run
        self.digest_ms = 0.0        # time of the newest replica check (ms)
        if resume is not None:
            self.load_state_dict(resume)
            del resume
            self.log.info(f"resumed from step {self.step} "
                          f"({storage.redact(self.paths['checkpoints'])})")
            self._check_replicas(f"resume at step {self.step}")
        # NOTE: written only once the resume checks passed: a refused resume leaves it untouched.
        if dist.is_main:
            write_config(cfg)

    # ------------------------------------------------------------------ state
    def state_dict(self, model_state: dict | None = None, optim_state: dict | None = None
                   ) -> dict:
        """The checkpoint's state (model_state, optim_state: a sharded model's shared part)."""
        return {
            "step": self.step,
            "model": self.model.state_dict() if model_state is None else model_state,
            "optimizer": self.optim.state_dict() if optim_state is None else optim_state,
            "grad_scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "seed": self.cfg.seed},
            "config": config_at_rest(self.cfg),
            "elapsed": self.elapsed,
            "world_size": self.dist.world_size,
            "scene": self.bounds.state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_full_state(state["model"], state["optimizer"], self.optim)
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = int(state["step"])
        self.saved_step = self.step
        self.elapsed = float(state.get("elapsed", 0.0))

    def _check_replicas(self, when: str) -> str:
        """dist.check_replicas under the watchdog; times it (self.digest_ms)."""
        t0 = time.perf_counter()
        with self.watchdog.waiting(f"the replica check ({when})"):
            digest = check_replicas(self.model, self.dist.rank, self.dist.world_size, when,
                                    key=self.model.replica_key())
        self.digest_ms = (time.perf_counter() - t0) * 1e3
        return digest

    def save(self) -> None:
        """Collective: check the replicas, then write checkpoint ``self.step``.

        Rank 0 writes the state; a sharded model's parts are written by their owners first
        (:meth:`_write_parts`). A replica mismatch raises on every rank and writes nothing; a
        failed write on any rank is raised on every rank together, and commits nothing.
        """
        digest = self._check_replicas(f"checkpoint step {self.step}")
        model_state, optim_state, parts = self.model.checkpoint_state(self.optim)
        entries = None if parts is None else self._write_parts(parts)
        err = None
        if self.dist.is_main:
            state = self.state_dict(model_state, optim_state)
            state["replicas"] = {"world_size": self.dist.world_size, "digest": digest}
            try:
                with self.watchdog.waiting(f"checkpoint step {self.step} to be written"):
                    self.ckpt.save(self.step, state, entries)
            except Exception as e:  # noqa: BLE001 - raised on every rank below
                if not self.dist.distributed:
                    raise
                err = f"rank 0 could not write checkpoint step {self.step}: {e}"
            del state
        with self.watchdog.waiting(f"rank 0 to write checkpoint step {self.step}"):
            raise_together(err, self.dist.rank, self.dist.world_size, CheckpointError)
        self.saved_step = self.step
        self.log.info(f"checkpoint step {self.step} -> "
                      f"{storage.redact(self.ckpt.step_url(self.step))} (replicas agree: "
                      f"{self.dist.world_size} rank(s), digest {digest}, checked in "
                      f"{self.digest_ms:.1f} ms{'' if entries is None else f', {len(entries)} part files'})")

    def _write_parts(self, parts: dict[str, dict]) -> list[dict]:
        """Collective: rank 0 un-commits the step, every rank writes and verifies its part files
        (a sharded checkpoint), rank 0 receives every part's entry. Any rank's failure is raised
        on every rank (nothing is committed)."""
        rank, world, step = self.dist.rank, self.dist.world_size, self.step
        err = None
        try:
            self.ckpt.begin(step)
        except Exception as e:  # noqa: BLE001 - raised on every rank below
            err = f"rank 0 could not begin checkpoint step {step}: {e}"
        with self.watchdog.waiting(f"rank 0 to begin checkpoint step {step}"):
            raise_together(err, rank, world, CheckpointError)
        mine = []
        try:
            with self.watchdog.waiting(f"checkpoint step {step}'s part files to be written"):
                mine = [self.ckpt.write_part(step, name, part) for name, part in parts.items()]
        except Exception as e:  # noqa: BLE001 - raised on every rank below
            err = f"rank {rank} could not write its part of checkpoint step {step}: {e}"
        with self.watchdog.waiting(f"the other ranks to write their parts of checkpoint {step}"):
            raise_together(err, rank, world, CheckpointError)
            every = all_gather_object(mine, rank, world)
        return [e for part in every if part for e in part]

    # ------------------------------------------------------------------ training
    def train_step(self, budget_spent: bool = False) -> dict:
        """One optimisation step on this rank's part of the global batch. Returns timings/loss.

        The ranks agree (one all-reduce) on four flags after the backward pass: a stop signal on
        any rank, a non-finite loss or gradient on any rank, rank 0's ``budget_spent``, and an
        fp16 gradient overflow on any rank (every rank's GradScaler then skips the step: a
        partitioned model's ranks hold different box gradients). On a non-finite value the
        optimiser step is not taken and ``self.step`` does not advance.
        """
        t0 = time.perf_counter()
        batch = self.loader.next()
        step = self.step
        self.model.before_step(step, torch.Generator().manual_seed(
            step_seed(self.cfg.seed, step, "grid")))
        for g in self.optim.param_groups:
            g["lr"] = lr_at(self.cfg, step)
        t1 = time.perf_counter()
        self.comm.seconds = 0.0
        out, terms, sse = step_losses(self.ddp, self.model, batch, self.cfg, step, self.bounds,
                                      self.shard[1])
        loss = sum(terms.values())
        self.optim.zero_grad(set_to_none=True)
        with self.watchdog.waiting(f"the gradient all-reduce of step {step}"):
            backward(loss, self.scaler, self.comm if self.dist.distributed else None, step)
            if self.placement is not None:
                t_sync = time.perf_counter()
                with collective(f"the gradient all-reduce of step {step}"):
                    self.model.sync_gradients()
                self.comm.seconds += time.perf_counter() - t_sync
        stop, bad, budget, overflow = guards.agree(
            self.dist, self.watchdog, self.stop, guards.nonfinite(loss, self.model, self.scaler),
            budget_spent, step, guards.scaler_overflow(self.scaler, self.optim))
        if bad:
            # NOTE: the parameters and Adam moments stay as they were before this step.
            self.optim.zero_grad(set_to_none=True)
            guards.scaler_step(self.scaler, self.optim, overflow, take=False)
        else:
            guards.scaler_step(self.scaler, self.optim, overflow)
            self.step += 1
        return {"sse": sse, "loss": loss.detach(), "n_local": batch["rgb"].shape[0],
                "n_global": int(batch["n_global"]), "t_data": t1 - t0,
                "t_compute": time.perf_counter() - t1, "t_allreduce": self.comm.seconds,
                "stop": stop, "nonfinite": bad, "budget": budget,
                "samples_per_ray": float(out["samples_per_ray"])}

    def _guarded_step(self, t_start: float) -> dict:
        """train_step, with a failed collective named with the step and the newest checkpoint."""
        budget = self.cfg.train.max_seconds
        try:
            return self.train_step(budget > 0 and time.time() - t_start >= budget)
        except CollectiveError as e:
            raise CollectiveError(
                f"step {self.step}: waiting for {e.what}", e.cause,
                f"(dist.timeout_s={self.cfg.dist.timeout_s:g}) Newest checkpoint: step "
                f"{self.saved_step}; resume with train.resume=auto.") from e

    def _skip_or_stop(self, res: dict, in_a_row: int) -> None:
        """train.on_nonfinite for a non-finite step: skip it (logged) or raise NonFiniteError."""
        last = (f"step {self.saved_step} in {storage.redact(self.paths['checkpoints'])}"
                if self.saved_step >= 0 else "none yet")
        line = guards.on_nonfinite(self.cfg, float(res["loss"]), self.step, in_a_row,
                                   self.nonfinite_total, last)
        self.nonfinite_total += 1
        self.step += 1
        self.log.info(line)
        self.log.scalars(self.step, {"train/nonfinite_skipped": self.nonfinite_total})

    def _log_step(self, last: dict, window: dict) -> None:
        """All ranks: the global loss (one all-reduce); rank 0 logs it with the timings."""
        s = last["sse"].float().clone()
        if self.dist.distributed:
            # NOTE: every collective sits under the watchdog, so a frozen peer is always named.
            what = f"the other ranks' loss of step {self.step}"
            with self.watchdog.waiting(what), collective(what):
                torch.distributed.all_reduce(s)
        # NOTE: the ranks of a box group all hold their replica's whole loss.
        s /= self.dist.world_size // self.shard[1]
        mse = float(s) / (last["n_global"] * 3)
        rays_s = window["rays"] / max(time.time() - window["t"], 1e-9)
        values = {"train/loss": mse, "train/psnr": mse_to_psnr(mse),
                  "train/lr": lr_at(self.cfg, self.step - 1), "perf/rays_per_s": rays_s,
                  "perf/elapsed_s": self.elapsed, "time/data_s": last["t_data"],
                  "time/forward_backward_s": last["t_compute"],
                  "time/allreduce_s": last["t_allreduce"],
                  "train/samples_per_ray": last["samples_per_ray"]}
        values.update({f"model/{k}": v for k, v in self.model.log_scalars().items()})
        if self.placement is not None:
            # NOTE: the ranks of a placed model do different work (load balance): each rank's
            # scalars are logged, as model/rank<r>/<name> (one small all-gather per log step).
            what = f"the other ranks' model scalars of step {self.step}"
            with self.watchdog.waiting(what):
                every = all_gather_object(self.model.log_scalars(), self.dist.rank,
                                          self.dist.world_size)
            values.update({f"model/rank{r}/{k}": v for r, sc in enumerate(every)
                           for k, v in sc.items()})
        self.log.scalars(self.step, values)
        self.log.progress(self.step, loss=mse, psnr=mse_to_psnr(mse), rays_s=int(rays_s),
                          **self.model.progress_fields())

    def train(self) -> dict:
        """Train to train.steps (or a stop signal, or the time cap); a checkpoint at the end."""
        cfg, total = self.cfg, self.cfg.train.steps
        t_start, elapsed0 = time.time(), self.elapsed
        self.log.info(f"training {cfg.model.kind} model: steps {self.step}->{total}, "
                      f"{cfg.train.rays_per_batch} rays/batch over {self.dist.world_size} rank(s), "
                      f"{self.cache.n_pixels} cached pixels, device {self.device}")
        self.log.start_progress(total, self.step)
        window = {"t": time.time(), "rays": 0}
        by_budget, by_signal, in_a_row = False, None, 0
        while self.step < total:
            last = self._guarded_step(t_start)
            self.elapsed = elapsed0 + (time.time() - t_start)
            if last["nonfinite"]:
                in_a_row += 1
                self._skip_or_stop(last, in_a_row)
                continue
            in_a_row = 0
            window["rays"] += last["n_global"]
            if self.step % cfg.log.every == 0 or self.step == total:
                self._log_step(last, window)
                window = {"t": time.time(), "rays": 0}
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save()
            # NOTE: after the save (a stop or crash during validation loses nothing), and not when
            # stopping: the lead time before SIGKILL is for the save.
            if cfg.eval.every and self.step % cfg.eval.every == 0 and not last["stop"]:
                self.evaluate_val()
            if last["stop"]:
                by_signal = (self.stop.requested if self.stop and self.stop.requested
                             else "a signal on another rank")
                break
            if last["budget"]:
                by_budget = True
                break
        if self.step > 0 and self.saved_step != self.step:
            self.save()
        self.log.close()
        self._say_why_stopped(by_budget, by_signal)
        return {"step": self.step, "elapsed": self.elapsed, "stopped_by_budget": by_budget,
                "stopped_by_signal": by_signal, "nonfinite_skipped": self.nonfinite_total}

    def _say_why_stopped(self, by_budget: bool, by_signal: str | None) -> None:
        if not self.dist.is_main:
            return
        total = self.cfg.train.steps
        if by_budget:
            print(f"stopped on the time cap train.max_seconds={self.cfg.train.max_seconds:g} at "
                  f"step {self.step} of {total} (checkpoint written; train.resume=auto trains on)",
                  flush=True)
        if by_signal:
            print(f"stopped by {by_signal} at step {self.step} of {total}: checkpoint step "
                  f"{self.saved_step} written; continue with train.resume=auto (exit code 75)",
                  flush=True)

    def evaluate_val(self) -> float | None:
        """Collective: validation at this step (:class:`Validator`); mean PSNR on rank 0. A
        model placed across ranks renders as it trains: each box group its replica's share of
        the tiles (:meth:`NeRFModel.render_split`)."""
        return self.validator.run(self.model, self.step)

    def close(self) -> None:
        loader = getattr(self, "loader", None)
        if loader is not None:
            loader.close()
        self.log.close()
        self.watchdog.close()


def train(cfg: Config, dist: DistInfo, stop: StopSignals | None = None) -> dict:
    """Train as configured; RUN_DIR/status.json (rank 0) says how it ended.

    Returns the trainer's summary; ``stopped_by_signal`` is set when SIGTERM/SIGUSR1 stopped it
    at a step boundary (its checkpoint is committed: the caller exits with EXIT_RESUME).
    """
    stop = stop or StopSignals()
    run_dir = cfg.run.dir

    def status(state: str, step: int, code: int | None, reason: str, ckpt: int | None) -> None:
        if dist.is_main:
            write_status(run_dir, state, step, code, storage.scrub(reason), ckpt)

    trainer = None
    try:
        trainer = Trainer(cfg, dist, stop)
        status("running", trainer.step, None, "", trainer.saved_step if trainer.saved_step >= 0
               else None)
        res = trainer.train()
        ckpt = trainer.saved_step if trainer.saved_step >= 0 else None
        if res["stopped_by_signal"]:
            status("stopped", res["step"], 75, f"stopped by {res['stopped_by_signal']}", ckpt)
        else:
            status("finished", res["step"], 0, "budget spent" if res["stopped_by_budget"]
                   else "train.steps reached", ckpt)
        return res
    except KeyboardInterrupt:
        if dist.is_main and trainer is not None:
            steps = trainer.ckpt.list()
            print(f"interrupted at step {trainer.step}; newest checkpoint: "
                  f"{('step ' + str(steps[-1])) if steps else 'none'} "
                  f"(continue with train.resume=auto)", flush=True)
        status("failed", trainer.step if trainer else 0, 130, "interrupted (Ctrl-C)", None)
        raise
    except BaseException as e:
        status("failed", trainer.step if trainer else 0, 1, f"{type(e).__name__}: {e}",
               trainer.saved_step if trainer and trainer.saved_step >= 0 else None)
        raise
    finally:
        # NOTE: once a stop was requested the process is on its way to exit 75: further signals
        # (torchrun and SLURM may repeat them) must not kill it on the way out.
        if stop.requested is None:
            stop.restore()
        else:
            stop.ignore_further()
        if trainer is not None:
            trainer.close()
