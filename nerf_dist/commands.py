"""What the commands do, as plain functions of a config: train, evaluate, render, the quick start.

`nerf_dist.cli` only parses arguments (its render flags become ``cfg.render`` values) and calls
these; the quick start (:func:`demo_run`) calls the same functions one after the other. Each runs
alone or under torchrun (every rank calls it) and always destroys the process group it made.

NOTE: cli imports this module only inside its commands, so `nerf-dist status` and `--help`
start without importing torch.
"""
from __future__ import annotations

import os
import signal

import torch

from . import dist, storage
from .config import Config, load_config
from .evaluation import evaluate_split
from .lifecycle import EXIT_RESUME
from .memory import fmt_bytes
from .renderer.job import PATH_KINDS, build_path, render_to_dir
from .run_dir import Loaded, load_model, place_loaded, run_paths
from .scenes import open_scene
from .scenes.demo import write_demo_scene
from .train import train


def configure_storage(cfg: Config) -> None:
    """Apply the storage.* keys (timeouts, retries) to every storage call of this process."""
    storage.configure(cfg.storage.timeout_s, cfg.storage.retries, cfg.storage.backoff_s)


def set_threads(n: int) -> None:
    """torch CPU threads of this process (0 = leave torch's default)."""
    if n < 0:
        raise ValueError(f"--threads must be >= 0, got {n}")
    if n:
        torch.set_num_threads(n)


def terminate_as_interrupt() -> None:
    """SIGTERM (torchrun stopping its workers, SLURM's time limit) -> KeyboardInterrupt, so the
    `finally` blocks run and the process group is destroyed instead of the process vanishing."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test harness)
        pass


def train_run(cfg: Config, stop=None) -> dict:
    """Train `cfg` (on every rank under torchrun). Returns the trainer's summary: step, elapsed,
    stopped_by_budget (train.max_seconds spent), stopped_by_signal, nonfinite_skipped.

    stop: a lifecycle.StopSignals, installed by the caller as early as it can.
    """
    configure_storage(cfg)
    info = dist.init(timeout_s=cfg.dist.timeout_s)
    try:
        res = train(cfg, info, stop)
        # NOTE: all ranks reach the teardown together (rank 0 may still be writing its last
        # checkpoint); tearing gloo down under a peer that is still busy can abort the process.
        dist.barrier()
        if info.is_main and not res["stopped_by_signal"]:
            print(f"done: step {res['step']}, {res['elapsed']:.1f} s of training; "
                  f"run folder {cfg.run.dir}", flush=True)
    finally:
        dist.close()
    return res


def summary_line(split: str, rep: dict) -> str:
    """'test: PSNR 32.71 dB (foreground 30.02 dB), SSIM 0.981, depth error 0.077' of a report."""
    fg = rep.get("psnr_fg")
    return (f"{split}: PSNR {rep['psnr']:.2f} dB"
            + (f" (foreground {fg:.2f} dB)" if fg is not None else "")
            + f", SSIM {rep['ssim']:.3f}"
            + (f", depth error {rep['depth_abs_err']:.3f}" if "depth_abs_err" in rep else ""))


def eval_run(loaded: Loaded, run_dir: str, split: str | None = None,
             out: str | None = None) -> dict | None:
    """Evaluate a loaded model on a split (default eval.test_split) into `out` (default
    RUN_DIR/eval_SPLIT): tiles of render.tile pixels spread over the ranks. Returns the report
    (psnr, psnr_fg, ssim, ...) on rank 0, None elsewhere.

    The model is placed across the ranks as training places it (:func:`place_loaded`; load it
    with this job's rank and world size so each rank holds only its part)."""
    cfg = loaded.cfg
    set_threads(cfg.render.threads)
    split = split or cfg.eval.test_split
    # NOTE: cameras only: rank 0 decodes each view's ground truth as it scores it, and the other
    # ranks decode nothing (evaluation.render_with_truth).
    scene = open_scene(cfg.data, split)
    configure_storage(cfg)
    info = dist.init(timeout_s=cfg.dist.timeout_s)
    try:
        place_loaded(loaded, info.rank, info.world_size)
        model = loaded.model.to(info.device)
        out = out or os.path.join(run_dir, f"eval_{split}")
        log = print if info.is_main else (lambda *_: None)
        log(f"evaluating step {loaded.step} on {scene.n} {split} view(s) of {cfg.data.root} "
            f"with {info.world_size} rank(s)")
        rep = evaluate_split(model, scene, out, cfg.model.chunk, info.device,
                             extra={"step": loaded.step, "train_seconds": loaded.elapsed}, log=log,
                             rank=info.rank, world_size=info.world_size, tile=cfg.render.tile,
                             tb_dir=run_paths(cfg)["tb"], step=loaded.step)
        if info.is_main:
            print(summary_line(split, rep))
            print(f"report: {os.path.join(out, 'report.json')}\nimages: {out}/ "
                  f"(contact sheet: {os.path.join(out, 'contact_sheet.png')})", flush=True)
    finally:
        dist.close()
    return rep


def render_run(loaded: Loaded, out: str | None = None, run_dir: str | None = None,
               progress: bool = True) -> dict | None:
    """Render the camera path of ``loaded.cfg.render`` (path, frames, resolution, tile, balance,
    fps, video, save_float, threads) into `out` (default RUN_DIR/render_PATH, or ./render_PATH).

    The path and resolution are checked before the process group starts or any file is written.
    The model is placed across the ranks as in :func:`eval_run`. Returns the summary on rank 0 (frames, rendered, skipped, frames_per_s, videos, ...).
    """
    r = loaded.cfg.render
    set_threads(r.threads)
    cams, setup = build_path(loaded)
    name = r.path if r.path in PATH_KINDS else os.path.splitext(os.path.basename(r.path))[0]
    out = out or os.path.join(run_dir or ".", f"render_{name}")
    configure_storage(loaded.cfg)
    terminate_as_interrupt()
    info = dist.init(timeout_s=loaded.cfg.dist.timeout_s)
    try:
        place_loaded(loaded, info.rank, info.world_size)
        if info.is_main:
            print(f"rendering {cams.n} frame(s) of {cams.name} at {cams.W}x{cams.H} from step "
                  f"{loaded.step} on {info.world_size} rank(s) -> {out}", flush=True)
        summary = render_to_dir(loaded, cams, setup, out, info.rank, info.world_size,
                                info.device, progress=progress)
        if info.is_main:
            print(f"done: {summary['rendered']} frame(s) rendered, {summary['skipped']} already "
                  f"there; {summary['frames_per_s']:.2f} frames/s, {summary['rays_per_s']:.0f} "
                  f"rays/s", flush=True)
            for kind, path in summary["videos"].items():
                print(f"video ({kind}): {path}")
            print(f"frames: {out}/rgb/", flush=True)
    finally:
        dist.close()
    return summary


def export_session(run_dir: str, work, overrides: list[str] | tuple = (),
                   checkpoint: str | None = None, placed: bool = False):
    """What every `nerf-dist export` does around its work: load RUN_DIR's newest checkpoint (or
    `checkpoint`), apply render.threads and the storage keys, turn SIGTERM into an interrupt,
    start the process group, call ``work(loaded, info, log)`` on every rank (log: rank 0's
    printer) and always destroy the group. Returns what work returns.

    placed: each rank loads only what it holds once placed as training places it (a partitioned
    model's own boxes, :func:`place_loaded`), as eval and render do; else every rank loads the
    whole model."""
    rank, world_size = dist.launch_rank() if placed else (0, 1)
    loaded = (load_model(checkpoint=checkpoint, overrides=list(overrides), rank=rank,
                         world_size=world_size) if checkpoint
              else load_model(run_dir=run_dir, overrides=list(overrides), rank=rank,
                              world_size=world_size))
    set_threads(loaded.cfg.render.threads)
    configure_storage(loaded.cfg)
    terminate_as_interrupt()
    info = dist.init(timeout_s=loaded.cfg.dist.timeout_s)
    try:
        if placed:
            place_loaded(loaded, info.rank, info.world_size)
        log = (lambda *a: print(*a, flush=True)) if info.is_main else (lambda *_: None)
        return work(loaded, info, log)
    finally:
        dist.close()


def export_mesh_run(run_dir: str, opts, overrides: list[str] | tuple = (),
                    checkpoint: str | None = None) -> dict | None:
    """`nerf-dist export mesh`: load the run's newest checkpoint, export its mesh with
    :func:`nerf_dist.export.mesh.export_mesh` on every rank, print the summary on rank 0.
    Returns the summary on rank 0 (None elsewhere)."""
    from .export.mesh import export_mesh  # NOTE: lazy: the `export` extra

    def work(loaded, info, log):
        summary = export_mesh(loaded, opts, info.rank, info.world_size, info.device, log)
        if summary is not None:
            print(f"mesh: {summary['vertices']} vertices, {summary['faces']} faces "
                  f"({summary['components']} component(s) before --keep-components), level "
                  f"{summary['level']:.4g}, {summary['seconds']:.1f} s on {info.world_size} "
                  f"rank(s)", flush=True)
            for fmt, f in summary["files"].items():
                print(f"  {fmt}: {f['path']} ({fmt_bytes(f['bytes'])})")
            if summary.get("truth"):
                from .export.geometry_metrics import truth_text  # NOTE: lazy: as export_mesh
                print("  " + truth_text(summary["truth"]), flush=True)
        return summary

    return export_session(run_dir, work, overrides, checkpoint, placed=True)


def default_demo_config() -> str | None:
    """configs/demo.yaml of the working directory, else of the source tree, else None."""
    here = os.path.join(os.getcwd(), "configs", "demo.yaml")
    pkg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                       "demo.yaml")
    for p in (here, pkg):
        if os.path.exists(p):
            return p
    return None


def demo_run(config: str | None = None, overrides: list[str] | tuple = (), stop=None) -> int:
    """The quick start: write the demo scene at data.root when absent, train (resuming), evaluate
    eval.test_split, and end with an orbit video (render.frames frames at render.fps; none when
    render.video is false). Returns the exit code (0, or 75 when a signal stopped training)."""
    path = config or default_demo_config()
    cfg = load_config(path, list(overrides))
    if not os.path.exists(os.path.join(cfg.data.root, "transforms_train.json")):
        print(f"writing the demo scene to {cfg.data.root} ...", flush=True)
        write_demo_scene(cfg.data.root)
    print(f"training with {path or 'built-in defaults'} -> {cfg.run.dir}", flush=True)
    res = train_run(cfg, stop)
    if res["stopped_by_signal"]:
        return EXIT_RESUME
    if res["stopped_by_budget"] and res["step"] < cfg.train.steps:
        # NOTE: the quick start promises the figures of train.steps steps; a machine too busy to
        # reach them within the safety cap gets a weaker model, and must be told so.
        print(f"stopped on the time cap train.max_seconds={cfg.train.max_seconds:g} at step "
              f"{res['step']} of {cfg.train.steps}: the result is below what the quick start "
              f"promises (run the same command again to train on from step {res['step']})",
              flush=True)
    rank, world_size = dist.launch_rank()
    loaded = load_model(run_dir=cfg.run.dir, overrides=list(overrides), rank=rank,
                        world_size=world_size)
    eval_run(loaded, cfg.run.dir)
    if not loaded.cfg.render.video:
        return 0
    # NOTE: the folder is named by the step, so a re-run (which resumes and trains on) never
    # clashes with the video of an earlier step.
    out = os.path.join(cfg.run.dir, f"render_orbit_step{loaded.step}")
    render_run(loaded, out, cfg.run.dir, progress=cfg.log.progress)
    return 0
