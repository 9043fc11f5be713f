"""Trainer: builds the run (cache, loader, model, optimiser, checkpointer, logger) and trains it.

Single process and DistributedDataParallel share one code path: `DistInfo` says rank and world
size; with world_size == 1 no process group exists and nothing is wrapped.

Determinism: every random draw of step k comes from generators seeded by (seed, k) (ray batch
positions in the loader, sample jitter via :class:`sampling.RowNoise`), so a resumed run repeats the
uninterrupted one, and N ranks follow the trajectory of one rank.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import sys
import time

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import memory, storage
from .checkpoint import CheckpointError, Checkpointer, load_url
from .config import Config, ConfigError, diff_keys, from_dict
from .dist import (CollectiveError, DistInfo, all_gather_object, broadcast_object,
                   check_replicas, collective, raise_together)
from .evaluation import psnr_fg, render_views
from .lifecycle import NonFiniteError, StallWatchdog, StopSignals, write_status
from .loader import RayLoader
from .logger import make_logger
from .metrics import mse_to_psnr, psnr
from .models import build_model
from .ray_cache import ensure_cache
from .renderer.core import RenderSetup
from .renderer.images import side_by_side
from .run_dir import config_at_rest, run_paths, write_config
from .render_ops.sampling import RowNoise
from .scenes import open_scene


def step_seed(seed: int, step: int, stream: str = "") -> int:
    """A 63-bit seed derived from (seed, step, stream)."""
    h = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF


def lr_at(cfg: Config, step: int) -> float:
    """Exponential decay from train.lr to train.lr_final over train.lr_decay_steps."""
    t = cfg.train
    return t.lr * (t.lr_final / t.lr) ** (step / t.lr_decay_steps)


def make_adam(params, lr: float, eps: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) where this torch build supports it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch / unsupported device
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)


class _CommTimer:
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


class Trainer:
    """Train a NeRF as configured. Methods: train_step, train, evaluate_val, save, close."""

    def __init__(self, cfg: Config, dist: DistInfo, stop: StopSignals | None = None):
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.paths = run_paths(cfg)
        self.stop = stop
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
        self._check_checkpoint_dir()
        # NOTE: the resume decision (and its config checks) comes before the ray-cache build, so a
        # mistyped override on an existing run is refused in seconds and changes nothing.
        resume = self._resume_state()

        with self.watchdog.waiting("the ray cache (building or reading it, or a peer doing so)"):
            self.cache = ensure_cache(cfg.data, self.paths["cache"], dist.rank, dist.world_size,
                                      log=self.log.info)
        # NOTE: on every rank, so a rank short of memory never leaves the others in a collective.
        memory.on_all_ranks(lambda: memory.check_train_batch(cfg, self.cache.n_rays,
                                                             dist.world_size, self.device),
                            dist.rank, dist.world_size)
        meta = self.cache.meta
        self.near, self.far = float(meta["near"]), float(meta["far"])
        self.background = torch.tensor(meta["background"], dtype=torch.float32, device=self.device)
        aabb = torch.tensor(meta["aabb"], dtype=torch.float32)
        self.scene_meta = {"near": self.near, "far": self.far, "aabb": aabb,
                           "background": self.background.cpu()}
        self.loader = RayLoader(self.cache, dist.rank, dist.world_size, cfg.train.rays_per_batch,
                                cfg.seed, cfg.train.precrop_steps, cfg.train.precrop_frac,
                                device=self.device, cache_memory=cfg.data.cache_memory_bytes,
                                log=self.log.info, watch=self.watchdog.waiting)

        self.model = build_model(cfg.model, aabb).to(self.device)
        self.comm = _CommTimer()
        if dist.distributed:
            # NOTE: buffers (occupancy grid, hash-grid index tables) are constants or deterministic
            # functions of (parameters, seed, step), identical on every rank: DDP need not broadcast
            # them (saves the grid's traffic every step; gloo also cannot send bool/int16 buffers).
            # The replica digest (dist.check_replicas) verifies that at resume and every save.
            DDP._set_params_and_buffers_to_ignore_for_model(
                self.model, [n for n, _ in self.model.named_buffers()])
            sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                    inspect.signature(DDP.__init__).parameters else {"broadcast_buffers": False})
            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                           else None, **sync)
            self.ddp.register_comm_hook(None, self.comm.hook)
        else:
            self.ddp = self.model
        opt = self.model.optimizer_settings()
        self.optim = make_adam(opt["params"], cfg.train.lr, opt["eps"], cfg.train.weight_decay)
        # NOTE: fp16 autocast needs loss scaling (its range underflows small gradients); bf16 does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=(cfg.model.precision == "fp16"
                                                             and self.device.type == "cuda"))
        self.step = 0
        self.saved_step = -1        # newest checkpoint this run wrote or resumed from
        self.nonfinite_total = 0    # steps skipped for a non-finite loss/gradient (this session)
        self.elapsed = 0.0          # training seconds accumulated over all sessions of this run
        self.digest_ms = 0.0        # time of the newest replica check (ms)
        self.val_scene = None
        if resume is not None:
            self.load_state_dict(resume)
            del resume
            self.log.info(f"resumed from step {self.step} "
                          f"({storage.redact(self.paths['checkpoints'])})")
            self._check_replicas(f"resume at step {self.step}")
        # NOTE: written only once the resume checks passed: a refused resume leaves it untouched.
        if dist.is_main:
            write_config(cfg)

    # ------------------------------------------------------------------ setup helpers
    def _check_checkpoint_dir(self) -> None:
        err = None
        if self.dist.is_main:
            try:
                self.ckpt.check_writable()
            except Exception as e:  # noqa: BLE001 - reported on every rank below
                err = str(e)
        err = broadcast_object(err)
        if err:
            raise RuntimeError(f"checkpoint.dir: {err}")

    def _resume_state(self) -> dict | None:
        """The checkpoint state to resume from, the same step on every rank (None: start at 0).

        Rank 0 alone chooses: it lists, loads and verifies the newest committed checkpoint
        (falling back past damaged ones), checks its config against this run's and that steps
        are left, and broadcasts its verdict. Every other rank then loads exactly that step.
        A failure on any rank (a refused config, a storage error after its retries) is raised on
        every rank together; a fallback past a damaged checkpoint is said in every rank's log.
        """
        verdict, state = None, None
        if self.dist.is_main:
            try:
                verdict, state = self._choose_checkpoint()
            except Exception as e:  # noqa: BLE001 - raised on every rank below
                verdict = {"error": type(e).__name__, "message": str(e)}
                if not self.dist.distributed:
                    raise
                mine = e
        with self.watchdog.waiting("rank 0 to choose the checkpoint to resume from"):
            verdict = broadcast_object(verdict)
        if verdict.get("error"):
            if self.dist.is_main:
                raise mine
            cls = {"ConfigError": ConfigError, "CheckpointError": CheckpointError}.get(
                verdict["error"], RuntimeError)
            raise cls(f"rank 0 refused to resume: {verdict['message']}")
        for note in verdict.get("skipped", []):
            print(f"[rank {self.dist.rank}] {note}; every rank falls back to the previous "
                  f"checkpoint", file=sys.stderr, flush=True)
        step = verdict.get("step")
        if step is None:
            return None
        if not self.dist.is_main:
            err = None
            try:
                with self.watchdog.waiting(f"checkpoint step {step} to be read"):
                    state = (self.ckpt.load_step(step) if verdict["url"] is None
                             else load_url(verdict["url"])[1])
                if int(state["step"]) != step:
                    err = (f"checkpoint {storage.redact(verdict['url'] or self.ckpt.url)} read on "
                           f"rank {self.dist.rank} holds step {state['step']}, rank 0 read step "
                           f"{step}: storage changed under the run")
            except Exception as e:  # noqa: BLE001 - raised on every rank below
                err = f"rank {self.dist.rank} could not load checkpoint step {step}: {e}"
        else:
            err = None
        with self.watchdog.waiting(f"the other ranks to load checkpoint step {step}"):
            raise_together(err, self.dist.rank, self.dist.world_size, CheckpointError)
        return state

    def _choose_checkpoint(self) -> tuple[dict, dict | None]:
        """Rank 0: (verdict for the other ranks, the loaded state or None). Raises on a refusal."""
        mode = self.cfg.train.resume
        where = storage.redact(self.paths["checkpoints"])
        if mode == "none":
            existing = self.ckpt.list()
            if existing:
                raise RuntimeError(
                    f"checkpoint.dir {where} already holds checkpoints (newest: step "
                    f"{existing[-1]}) and train.resume=none: continue with train.resume=auto, or "
                    f"use another run.dir / checkpoint.dir")
            return {"step": None}, None
        skipped: list[str] = []
        if mode == "auto":
            found = self.ckpt.newest_good()
            if found is None:
                self.log.info(f"resume=auto: no checkpoint in {where}, starting from step 0")
                return {"step": None}, None
            step, state, skipped = found
        else:
            step, state = self.ckpt.load_url(mode)
        saved = from_dict(state["config"])
        diffs = diff_keys(saved, from_dict(config_at_rest(self.cfg)))
        if diffs:
            raise ConfigError("cannot resume: the checkpoint was trained with a different model or "
                              "data config; differing keys: " + "; ".join(diffs))
        if step >= self.cfg.train.steps and not self.cfg.train.allow_finished:
            raise RuntimeError(
                f"train.resume={mode}: the checkpoint is at step {step} and train.steps="
                f"{self.cfg.train.steps}, so there is nothing left to train. Raise train.steps to "
                f"train on, or pass train.allow_finished=true to accept a finished run")
        return ({"step": int(step), "skipped": skipped,
                 "url": None if mode == "auto" else mode}, state)

    def _check_replicas(self, when: str) -> str:
        """dist.check_replicas under the watchdog and typed collective errors; times it."""
        t0 = time.perf_counter()
        with self.watchdog.waiting(f"the replica check ({when})"):
            digest = check_replicas(self.model, self.dist.rank, self.dist.world_size, when)
        self.digest_ms = (time.perf_counter() - t0) * 1e3
        return digest

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optim.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "seed": self.cfg.seed},
            "config": config_at_rest(self.cfg),
            "elapsed": self.elapsed,
            "world_size": self.dist.world_size,
            "scene": self.scene_meta,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = int(state["step"])
        self.saved_step = self.step
        self.elapsed = float(state.get("elapsed", 0.0))

    def save(self) -> None:
        """Check the replicas, then write checkpoint ``self.step`` (rank 0).

        Collective: every rank checks the replica digest first (a mismatch raises on every rank
        and writes nothing), and a failed write on rank 0 is raised on every rank together.
        """
        digest = self._check_replicas(f"checkpoint step {self.step}")
        err = None
        if self.dist.is_main:
            state = self.state_dict()
            state["replicas"] = {"world_size": self.dist.world_size, "digest": digest}
            try:
                self.ckpt.save(self.step, state)
            except Exception as e:  # noqa: BLE001 - raised on every rank below
                if not self.dist.distributed:
                    raise
                err = f"rank 0 could not write checkpoint step {self.step}: {e}"
            del state
        with self.watchdog.waiting(f"rank 0 to write checkpoint step {self.step}"):
            raise_together(err, self.dist.rank, self.dist.world_size, CheckpointError)
        url = self.ckpt.step_url(self.step)
        self.saved_step = self.step
        self.log.info(f"checkpoint step {self.step} -> {storage.redact(url)} (replicas agree: "
                      f"{self.dist.world_size} rank(s), digest {digest}, checked in "
                      f"{self.digest_ms:.1f} ms)")

    # ------------------------------------------------------------------ training
    def train_step(self, budget_spent: bool = False) -> dict:
        """One optimisation step on this rank's part of the global batch. Returns timings/loss.

        The ranks agree (one all-reduce) on three flags after the backward pass: a stop signal on
        any rank, a non-finite loss or gradient on any rank, and rank 0's ``budget_spent``. On a
        non-finite value the optimiser step is not taken and ``self.step`` does not advance.
        """
        t0 = time.perf_counter()
        batch = self.loader.next()
        step = self.step
        n_global = int(batch["n_global"])
        index = batch.get("index")
        if index is None:
            index = torch.arange(batch["rgb"].shape[0])
        noise = RowNoise(step_seed(self.cfg.seed, step, "jitter"), n_global, index)
        self.model.before_step(step, torch.Generator().manual_seed(
            step_seed(self.cfg.seed, step, "grid")))
        for g in self.optim.param_groups:
            g["lr"] = lr_at(self.cfg, step)
        t1 = time.perf_counter()
        self.comm.seconds = 0.0
        # NOTE (issue 18): the kind says what forward gets besides the rays (its background, the
        # image index) and the colours it is scored against (e.g. over a random background).
        extra, target = self.model.train_inputs(batch, self.background, RowNoise(
            step_seed(self.cfg.seed, step, "background"), n_global, index))
        out = self.ddp(batch["rays_o"], batch["rays_d"], batch["viewdirs"], self.near, self.far,
                       train=True, generator=noise, **extra)
        # NOTE: sum of squared errors / (global rays * 3) * world_size: after DDP averages the
        # gradients this is exactly the gradient of the global batch's mean squared error.
        scale = self.dist.world_size / (n_global * 3)
        loss = sum(self.model.losses(out, target, scale).values())
        with torch.no_grad():
            sse = ((out["rgb"] - target) ** 2).sum()      # the logged loss and PSNR
        self.optim.zero_grad(set_to_none=True)
        if self.dist.distributed:
            self.comm.error = None
            with self.watchdog.waiting(f"the gradient all-reduce of step {step}"):
                try:
                    self.scaler.scale(loss).backward()
                except RuntimeError as e:
                    if self.comm.error is None:
                        raise
                    raise CollectiveError(f"the gradient all-reduce of step {step}",
                                          self.comm.error) from e
        else:
            self.scaler.scale(loss).backward()
        stop, nonfinite, budget = self._agree(self._nonfinite(loss), budget_spent)
        if nonfinite:
            # NOTE: the parameters and Adam moments stay as they were before this step.
            self.optim.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optim)
            self.scaler.update()
            self.step += 1
        t2 = time.perf_counter()
        return {"sse": sse.detach(), "loss": loss.detach(), "n_local": batch["rgb"].shape[0],
                "n_global": n_global, "t_data": t1 - t0, "t_compute": t2 - t1,
                "t_allreduce": self.comm.seconds, "stop": stop, "nonfinite": nonfinite,
                "budget": budget,
                "samples_per_ray": float(out["samples_per_ray"])}

    def _nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        """0-d bool tensor: the loss or (without fp16 loss scaling) any gradient is non-finite.

        NOTE: with fp16 loss scaling, inf gradients are routine (GradScaler skips those steps and
        lowers the scale), so only the loss is checked there.
        """
        bad = ~torch.isfinite(loss.detach().float())
        if not self.scaler.is_enabled():
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                # NOTE: the max-abs norm is NaN/inf exactly when some element is (no overflow).
                peak = torch.stack(torch._foreach_norm(grads, float("inf")))
                bad = bad | ~torch.isfinite(peak).all()
        return bad

    def _agree(self, nonfinite: torch.Tensor, budget_spent: bool) -> tuple[bool, bool, bool]:
        """(stop signal, non-finite, time budget spent), agreed by every rank in one all-reduce.

        Any rank's stop signal or non-finite value counts; the budget is rank 0's clock.
        """
        stop = self.stop is not None and self.stop.requested is not None
        flags = torch.zeros(3, device=self.device)
        flags[0] = float(stop)
        flags[1] = nonfinite.to(flags.dtype)
        flags[2] = float(budget_spent and self.dist.is_main)
        if self.dist.distributed:
            what = f"the other ranks to finish step {self.step}"
            with self.watchdog.waiting(what), collective(what):
                tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        a, b, c = (flags > 0).tolist()
        return a, b, c

    def _global_mse(self, sse: torch.Tensor, n_global: int) -> float:
        s = sse.detach().float().clone()
        if self.dist.distributed:
            # NOTE: every collective sits under the watchdog, so a frozen peer is always named.
            what = f"the other ranks' loss of step {self.step}"
            with self.watchdog.waiting(what), collective(what):
                tdist.all_reduce(s)
        return float(s) / (n_global * 3)

    def _guarded_step(self, t_start: float) -> dict:
        """train_step, with a peer's failure (dead, frozen, unreachable) named as such."""
        try:
            return self.train_step(self._budget_spent(t_start))
        except CollectiveError as e:
            raise CollectiveError(
                f"step {self.step}: waiting for {e.what}", e.cause,
                f"(dist.timeout_s={self.cfg.dist.timeout_s:g}) Newest checkpoint: step "
                f"{self.saved_step}; resume with train.resume=auto.") from e

    def _budget_spent(self, t_start: float) -> bool:
        budget = self.cfg.train.max_seconds
        return budget > 0 and time.time() - t_start >= budget

    def _on_nonfinite(self, res: dict, in_a_row: int) -> None:
        """Apply train.on_nonfinite to a step whose loss or gradient was not finite."""
        t = self.cfg.train
        loss = float(res["loss"])
        last = (f"step {self.saved_step} in {storage.redact(self.paths['checkpoints'])}"
                if self.saved_step >= 0 else "none yet")
        cause = (f"likely cause: the learning rate is too high for this model (train.lr={t.lr:g}); "
                 f"lower it, or check the data (a corrupt image or ray cache) and model.precision")
        if t.on_nonfinite == "skip" and in_a_row < t.max_nonfinite:
            self.nonfinite_total += 1
            self.step += 1
            self.log.info(f"step {self.step - 1}: non-finite loss or gradient (loss {loss:g}); "
                          f"step skipped ({in_a_row} in a row, {self.nonfinite_total} in all; "
                          f"train.max_nonfinite={t.max_nonfinite})")
            self.log.scalars(self.step, {"train/nonfinite_skipped": self.nonfinite_total})
            return
        what = (f"{in_a_row} non-finite steps in a row (train.max_nonfinite={t.max_nonfinite})"
                if t.on_nonfinite == "skip" else "a non-finite loss or gradient")
        raise NonFiniteError(
            f"stopped at step {self.step}: {what} (loss {loss:g}); the optimiser step was not "
            f"taken and no checkpoint was written. Last good checkpoint: {last}. {cause}. "
            f"train.on_nonfinite=skip skips such steps instead")

    def train(self) -> dict:
        cfg = self.cfg
        total = cfg.train.steps
        t_start = time.time()
        elapsed0 = self.elapsed
        self.log.info(f"training {cfg.model.kind} model: steps {self.step}->{total}, "
                      f"{cfg.train.rays_per_batch} rays/batch over {self.dist.world_size} rank(s), "
                      f"{self.cache.n_rays} cached rays, device {self.device}")
        self.log.start_progress(total, self.step)
        window = {"t": time.time(), "rays": 0}
        stopped_by_budget = False
        stop_signal = None
        in_a_row = 0
        last = None
        while self.step < total:
            last = self._guarded_step(t_start)
            self.elapsed = elapsed0 + (time.time() - t_start)
            if last["nonfinite"]:
                in_a_row += 1
                self._on_nonfinite(last, in_a_row)
                continue
            in_a_row = 0
            window["rays"] += last["n_global"]
            if self.step % cfg.log.every == 0 or self.step == total:
                mse = self._global_mse(last["sse"], last["n_global"])
                dt = max(time.time() - window["t"], 1e-9)
                rays_s = window["rays"] / dt
                window = {"t": time.time(), "rays": 0}
                values = {"train/loss": mse, "train/psnr": mse_to_psnr(mse),
                          "train/lr": lr_at(cfg, self.step - 1), "perf/rays_per_s": rays_s,
                          "perf/elapsed_s": self.elapsed, "time/data_s": last["t_data"],
                          "time/forward_backward_s": last["t_compute"],
                          "time/allreduce_s": last["t_allreduce"],
                          "train/samples_per_ray": last["samples_per_ray"]}
                values.update({f"model/{k}": v for k, v in self.model.log_scalars().items()})
                self.log.scalars(self.step, values)
                self.log.progress(self.step, loss=mse, psnr=mse_to_psnr(mse), rays_s=int(rays_s))
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save()
            # NOTE: after the save (a stop or crash during validation loses nothing), and not when
            # stopping: the lead time before SIGKILL is for the save.
            if cfg.eval.every and self.step % cfg.eval.every == 0 and not last["stop"]:
                self.evaluate_val()
            if last["stop"]:
                stop_signal = (self.stop.requested if self.stop and self.stop.requested
                               else "a signal on another rank")
                break
            if last["budget"]:
                stopped_by_budget = True
                break
        if self.step > 0 and self.saved_step != self.step:
            self.save()
        self.log.close()
        if stopped_by_budget and self.dist.is_main:
            print(f"stopped on the time cap train.max_seconds={cfg.train.max_seconds:g} at step "
                  f"{self.step} of {total} (checkpoint written; train.resume=auto trains on)",
                  flush=True)
        if stop_signal and self.dist.is_main:
            print(f"stopped by {stop_signal} at step {self.step} of {total}: checkpoint step "
                  f"{self.saved_step} written; continue with train.resume=auto (exit code 75)",
                  flush=True)
        return {"step": self.step, "elapsed": self.elapsed, "stopped_by_budget": stopped_by_budget,
                "stopped_by_signal": stop_signal, "nonfinite_skipped": self.nonfinite_total}

    # ------------------------------------------------------------------ validation
    def _open_val_scene(self):
        """The eval split as a LazyScene (cameras only) on every rank, or False when any rank
        cannot open it or render it within memory (said once; training goes on without it)."""
        err = None
        scene = False
        try:
            scene = open_scene(self.cfg.data, self.cfg.eval.split)
            memory.check_render(scene.W, scene.H, self.cfg.render.tile, self.cfg.model.chunk,
                                self.cfg.model, self.dist.world_size, self.device)
        except Exception as e:  # noqa: BLE001 - validation is optional during training
            err = f"rank {self.dist.rank}: {e}"
        with self.watchdog.waiting("the other ranks to open the validation views"):
            errs = [e for e in all_gather_object(err, self.dist.rank, self.dist.world_size) if e]
        if errs:
            self.log.info(f"validation disabled: {errs[0]}")
            return False
        return scene

    def _stop_anywhere(self) -> bool:
        """Collective: a stop signal arrived on any rank (checked between validation views)."""
        flag = torch.tensor([float(self.stop is not None and self.stop.requested is not None)],
                            device=self.device)
        if self.dist.distributed:
            what = "the other ranks between validation views"
            with self.watchdog.waiting(what), collective(what):
                tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def evaluate_val(self) -> float | None:
        """Render eval.n_images views of eval.split on all ranks together, through the tiled
        renderer (as `nerf-dist eval` does, so the numbers agree); rank 0 decodes each view's
        ground truth as it scores it, logs PSNR, foreground PSNR and an image.

        Every rank must call it (collective). Between views the ranks agree on stop signals: a
        stop ends validation early. Returns the mean PSNR on rank 0 (None elsewhere, when
        validation is disabled, or when a stop came before the first view was scored).
        """
        if self.val_scene is None:
            self.val_scene = self._open_val_scene()
        if self.val_scene is False:
            return None
        scene = self.val_scene
        background = torch.tensor(scene.background, dtype=torch.float32)
        setup = RenderSetup(self.model, float(scene.near), float(scene.far), background,
                            self.cfg.model.chunk, self.device, bool(scene.ndc),
                            float(scene.ndc_focal), tuple(scene.ndc_size))
        psnrs, fgs = [], []
        for v in range(min(self.cfg.eval.n_images, scene.n)):
            if v > 0 and self._stop_anywhere():
                self.log.info(f"step {self.step}: validation cut short by a stop signal after "
                              f"{v} view(s)")
                break
            for i, out in render_views(setup, scene, [v], self.dist.rank, self.dist.world_size,
                                       tile=self.cfg.render.tile):
                gt = torch.from_numpy(scene.image(i))
                psnrs.append(psnr(out["rgb"], gt))
                fg = psnr_fg(out["rgb"], gt, background)
                if fg is not None:
                    fgs.append(fg)
                if i == 0:
                    self.log.image(self.step, "eval/gt_rgb_depth",
                                   side_by_side(gt, out["rgb"], out["depth"], scene.near,
                                                scene.far))
        self.model.train()
        if not psnrs:
            return None
        val = sum(psnrs) / len(psnrs)
        values = {"eval/psnr": val}
        fg_txt = ""
        if fgs:
            values["eval/psnr_fg"] = sum(fgs) / len(fgs)
            fg_txt = f", foreground {values['eval/psnr_fg']:.2f} dB"
        self.log.scalars(self.step, values)
        self.log.info(f"step {self.step}: {self.cfg.eval.split} PSNR {val:.2f} dB{fg_txt} "
                      f"({len(psnrs)} view(s))")
        return val

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
        status("failed", trainer.step if trainer else 0, 130, "interrupted (Ctrl-C)",
               None)
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


__all__ = ["Trainer", "train", "lr_at", "step_seed"]
