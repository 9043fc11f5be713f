"""`nerf-dist` command line: thin entry points that parse, build, run and always clean up.

Commands: train, render, eval, cache, demo, demo-scene, keys. Run `nerf-dist COMMAND --help`.
Config overrides are `section.key=value` arguments after the options.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .lifecycle import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_RESUME, EXIT_USAGE


def _keys_help() -> str:
    from .config import describe_keys
    lines = ["config keys (override with key=value):"]
    for key, default, doc in describe_keys():
        lines.append(f"  {key:<26} {doc.splitlines()[0] if doc else ''} [default: {default!r}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nerf-dist",
        description="Distributed NeRF training, evaluation and rendering. "
                    "Run under torchrun --nproc_per_node=N for several ranks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
               "  train        train a model (torchrun-aware): --config FILE key=value ...\n"
               "  render       render a camera path (orbit, spiral, split, JSON) to frames + video\n"
               "  eval         render a split of a trained run, write images + report.json\n"
               "  cache        build the sharded ray cache for a config (also done by train)\n"
               "  demo         the quick start: demo scene, train, evaluate, orbit video\n"
               "  demo-scene   write the procedural demo scene (Blender format)\n"
               "  status       how a run ended (exit 0 finished, 75 stopped to be resumed, 1 other)\n"
               "  keys         list every config key with its default and meaning\n"
               "\nexit codes of train: 0 finished, 1 error, 2 usage, 75 stopped by SIGTERM/SIGUSR1 "
               "at a step\nboundary with a checkpoint (resume with train.resume=auto), 130 Ctrl-C\n")
    p.add_argument("--version", action="version", version=f"nerf-dist {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a model", formatter_class=fmt, epilog=_keys_help(),
                       description="Train on data.root with the given config and overrides. "
                                   "The same command runs under torchrun for DDP. SIGTERM or "
                                   "SIGUSR1 on any rank stops every rank at the same step, writes "
                                   "a checkpoint there and exits 75 (resume with "
                                   "train.resume=auto); RUN_DIR/status.json says how a run ended.")
    t.add_argument("--config", help="YAML config file (keys below)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")

    r = sub.add_parser(
        "render", help="render a camera path to frames and a video", formatter_class=fmt,
        description="Render novel views of a trained model, alone or under torchrun: frames are "
                    "cut into tiles spread over the ranks; rank 0 writes rgb/, depth/ "
                    "(colourised), depth16/ (16-bit, scale in render.json), acc/, video.mp4 and "
                    "video.gif. Re-running the same command resumes (finished frames are "
                    "skipped).",
        epilog="paths:\n"
               "  auto     spiral for forward-facing (NDC) scenes, orbit otherwise\n"
               "  orbit    360 deg around the training cameras' centre (their radius, elevation)\n"
               "  spiral   LLFF-style spiral in front of a forward-facing rig\n"
               "  train|val|test   the poses of a dataset split\n"
               "  FILE.json        camera-path file: ours ({width, height, fl_x, fl_y, cx, cy,\n"
               "                   frames: [{transform_matrix: 4x4 c2w}]}), transforms.json, or\n"
               "                   nerfstudio's camera_path.json (see nerf_dist/renderer/paths.py)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", "--run-dir", dest="run",
                     help="run folder (newest checkpoint; holds config.yaml). Under torchrun "
                          "write --run-dir: torchrun's own parser reads --run as its --run-path")
    src.add_argument("--checkpoint", help="one checkpoint: step folder or state.pt (path or URL)")
    r.add_argument("--path", default="auto",
                   help="auto | orbit | spiral | train | val | test | FILE.json (default: auto)")
    r.add_argument("--frames", type=int, default=None,
                   help="frames of an orbit/spiral (default 36); first N cameras of a split/file")
    r.add_argument("--resolution", default=None,
                   help="WxH output size (default: the training / split / file size)")
    r.add_argument("--out", default=None,
                   help="output folder (default: RUN_DIR/render_PATH, or ./render_PATH)")
    r.add_argument("--tile", type=int, default=64, help="tile side in pixels (default 64)")
    r.add_argument("--balance", choices=("time", "pixels"), default="time",
                   help="spread tiles by measured cost (time) or pixel count (default: time)")
    r.add_argument("--fps", type=float, default=24.0, help="video frame rate (default 24)")
    r.add_argument("--no-video", action="store_true", help="write frames only")
    r.add_argument("--save-float", action="store_true",
                   help="also write float/NNNNN.npz (rgb, depth, acc as float32)")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank (0: default)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.root=DIR")

    e = sub.add_parser("eval", help="evaluate a trained run on a split", formatter_class=fmt,
                       description="Render every view of a split with the newest checkpoint of "
                                   "RUN_DIR (tiles spread over the ranks under torchrun); write "
                                   "rgb/depth PNGs, contact_sheet.png and report.json (PSNR, "
                                   "SSIM) once, and the sheet rows to TensorBoard.")
    e.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run folder (holds config.yaml); under torchrun write --run-dir")
    e.add_argument("--split", default=None, help="split to evaluate (default: eval.test_split)")
    e.add_argument("--out", default=None, help="output folder (default: RUN_DIR/eval_SPLIT)")
    e.add_argument("--tile", type=int, default=64, help="tile side in pixels (default 64)")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank (0: default)")
    e.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.root=DIR")

    c = sub.add_parser("cache", help="build the sharded ray cache", formatter_class=fmt,
                       description="Build the ray cache of a config's training split (train does "
                                   "it too) and verify every shard's size and sha256 against the "
                                   "manifest. Works alone or under torchrun (shards split over "
                                   "the ranks).",
                       epilog=_keys_help())
    c.add_argument("--config", help="YAML config file")
    c.add_argument("--rebuild", action="store_true",
                   help="rebuild the cache even when a valid one exists (after a damaged-shard "
                        "error, or when in doubt)")
    c.add_argument("overrides", nargs="*", help="section.key=value overrides")

    d = sub.add_parser("demo", help="quick start: demo scene, train, evaluate, video", formatter_class=fmt,
                       description="Generate the demo scene at data.root when absent, train with "
                                   "configs/demo.yaml, evaluate the test split and print where "
                                   "the report and images are.")
    d.add_argument("--config", default=None,
                   help="config file (default: configs/demo.yaml when present, else built-in)")
    d.add_argument("--video-frames", type=int, default=30,
                   help="frames of the closing orbit video (default 30)")
    d.add_argument("--no-video", action="store_true", help="skip the closing orbit video")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides")

    s = sub.add_parser("demo-scene", help="write the procedural demo scene")
    s.add_argument("out_dir", help="output folder")
    s.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--views", type=int, default=40, help="training views (default 40)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    st = sub.add_parser("status", help="how a run ended (exit code 0 / 75 / 1)",
                        formatter_class=fmt,
                        description="Print RUN_DIR/status.json (written by train on rank 0) and "
                                    "exit 0 when the run finished, 75 when it was stopped to be "
                                    "resumed (requeue it), 1 otherwise (failed, still running, or "
                                    "no status). Scripts use it after torchrun, whose own exit "
                                    "code does not carry the trainer's.")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", "--run", dest="run", help="run folder")
    src.add_argument("--config", help="config file whose run.dir (after overrides) is the run")
    st.add_argument("overrides", nargs="*", help="section.key=value overrides (with --config)")

    sub.add_parser("keys", help="list config keys")
    return p


# ------------------------------------------------------------------------------ commands

def _terminate_as_interrupt() -> None:
    """SIGTERM (torchrun stopping its workers, SLURM's time limit) -> KeyboardInterrupt, so the
    `finally` blocks run and the process group is destroyed instead of the process vanishing."""
    import signal

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test harness)
        pass


def _configure_storage(cfg) -> None:
    """Apply the storage.* keys (timeouts, retries) to every storage call of this process."""
    from . import storage
    storage.configure(cfg.storage.timeout_s, cfg.storage.retries, cfg.storage.backoff_s)


def cmd_train(args) -> int:
    # NOTE: the stop handlers go in before torch is imported (seconds on a busy node): a
    # SIGTERM/SIGUSR1 that early is recorded, and training stops after its first step with a
    # checkpoint and exit 75 instead of the process dying of the signal.
    from .lifecycle import StopSignals
    stop = StopSignals()
    from . import dist
    from .config import load_config
    from .trainer import train
    cfg = load_config(args.config, args.overrides)
    _configure_storage(cfg)
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
    return EXIT_RESUME if res["stopped_by_signal"] else 0


def cmd_status(args) -> int:
    import json

    from .config import load_config
    from .lifecycle import STATUS_FILE, read_status, status_exit_code
    run = args.run or load_config(args.config, args.overrides).run.dir
    doc = read_status(run)
    if doc is None:
        print(f"no readable {STATUS_FILE} in {run} (the run never started training there)")
        return EXIT_ERROR
    print(json.dumps(doc, indent=1))
    return status_exit_code(doc)


def cmd_cache(args) -> int:
    from . import dist
    from .config import load_config
    from .ray_cache import ensure_cache, verify_shards
    from .storage import redact
    from .trainer import run_paths
    cfg = load_config(args.config, args.overrides)
    _configure_storage(cfg)
    info = dist.init(timeout_s=cfg.dist.timeout_s)
    try:
        log = print if info.is_main else (lambda *_: None)
        cache = ensure_cache(cfg.data, run_paths(cfg)["cache"], info.rank, info.world_size, log=log,
                             rebuild=args.rebuild)
        verify_shards(cache, info.rank, info.world_size)
        if info.is_main:
            print(f"ray cache ready: {cache.n_rays} pixels of {cache.n_images} {cache.W}x{cache.H} "
                  f"images in {cache.n_shards} shards, {cache.total_bytes / 1e6:.1f} MB "
                  f"({cache.mode}, {cache.bytes_per_pixel} bytes a pixel; sizes and sha256 "
                  f"verified) at {redact(cache.url)}")
    finally:
        dist.close()
    return 0


def load_run(run_dir: str, overrides: list[str]):
    """(cfg, model, step, elapsed) of a run folder's newest checkpoint, on the CPU."""
    from .renderer.job import load_model
    loaded = load_model(run_dir=run_dir, overrides=overrides)
    return loaded.cfg, loaded.model, loaded.step, loaded.elapsed


def _set_threads(n: int) -> None:
    if n < 0:
        raise ValueError(f"--threads must be >= 0, got {n}")
    if n:
        import torch
        torch.set_num_threads(n)


def cmd_render(args) -> int:
    from . import dist
    from .renderer.job import PATH_KINDS, build_path, load_model, render_to_dir
    from .renderer.paths import parse_resolution
    # NOTE: everything that can be refused is checked before the process group or any file.
    res = parse_resolution(args.resolution) if args.resolution is not None else None
    if args.tile < 1:
        raise ValueError(f"--tile must be >= 1, got {args.tile}")
    _set_threads(args.threads)
    loaded = load_model(run_dir=args.run, checkpoint=args.checkpoint, overrides=args.overrides)
    cams, setup = build_path(loaded, args.path, args.frames, res)
    name = args.path if args.path in PATH_KINDS else os.path.splitext(os.path.basename(args.path))[0]
    out = args.out or os.path.join(args.run or ".", f"render_{name}")
    _configure_storage(loaded.cfg)
    _terminate_as_interrupt()
    info = dist.init(timeout_s=loaded.cfg.dist.timeout_s)
    try:
        if info.is_main:
            print(f"rendering {cams.n} frame(s) of {cams.name} at {cams.W}x{cams.H} from step "
                  f"{loaded.step} on {info.world_size} rank(s) -> {out}", flush=True)
        summary = render_to_dir(loaded, cams, setup, out, info.rank, info.world_size,
                                info.device, args.tile, args.balance, args.fps, args.save_float,
                                not args.no_video, not args.no_progress)
        if info.is_main:
            print(f"done: {summary['rendered']} frame(s) rendered, {summary['skipped']} already "
                  f"there; {summary['frames_per_s']:.2f} frames/s, {summary['rays_per_s']:.0f} "
                  f"rays/s", flush=True)
            for kind, path in summary["videos"].items():
                print(f"video ({kind}): {path}")
            print(f"frames: {out}/rgb/")
    finally:
        dist.close()
    return 0


def cmd_eval(args) -> int:
    from . import dist
    from .evaluation import evaluate_split
    from .scenes import load_scene
    from .trainer import run_paths
    _set_threads(getattr(args, "threads", 0))
    cfg, model, step, elapsed = load_run(args.run, args.overrides)
    split = args.split or cfg.eval.test_split
    scene = load_scene(cfg.data, split)
    _configure_storage(cfg)
    info = dist.init(timeout_s=cfg.dist.timeout_s)
    try:
        model = model.to(info.device)
        out = args.out or os.path.join(args.run, f"eval_{split}")
        log = print if info.is_main else (lambda *_: None)
        log(f"evaluating step {step} on {scene.n} {split} view(s) of {cfg.data.root} "
            f"with {info.world_size} rank(s)")
        rep = evaluate_split(model, scene, out, cfg.model.chunk, info.device,
                             extra={"step": step, "train_seconds": elapsed}, log=log,
                             rank=info.rank, world_size=info.world_size,
                             tile=getattr(args, "tile", 64), tb_dir=run_paths(cfg)["tb"],
                             step=step)
        if info.is_main:
            print(f"{split}: PSNR {rep['psnr']:.2f} dB, SSIM {rep['ssim']:.3f}"
                  + (f", depth error {rep['depth_abs_err']:.3f}" if "depth_abs_err" in rep else ""))
            print(f"report: {os.path.join(out, 'report.json')}\nimages: {out}/ "
                  f"(contact sheet: {os.path.join(out, 'contact_sheet.png')})")
    finally:
        dist.close()
    return 0


def default_demo_config() -> str | None:
    here = os.path.join(os.getcwd(), "configs", "demo.yaml")
    pkg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                       "demo.yaml")
    for p in (here, pkg):
        if os.path.exists(p):
            return p
    return None


def cmd_demo(args) -> int:
    from .config import load_config
    from .scenes.demo import write_demo_scene
    path = args.config or default_demo_config()
    cfg = load_config(path, args.overrides)
    if not os.path.exists(os.path.join(cfg.data.root, "transforms_train.json")):
        print(f"writing the demo scene to {cfg.data.root} ...", flush=True)
        write_demo_scene(cfg.data.root)
    print(f"training with {path or 'built-in defaults'} -> {cfg.run.dir}", flush=True)
    rc = cmd_train(argparse.Namespace(config=path, overrides=args.overrides))
    if rc:
        return rc
    rc = cmd_eval(argparse.Namespace(run=cfg.run.dir, split=None, out=None, tile=64, threads=0,
                                     overrides=args.overrides))
    if rc or args.no_video:
        return rc
    # NOTE: the quick start ends with a short orbit video at the training resolution; the folder
    # is named by the step so a re-run (which resumes and trains on) never clashes with it.
    from .checkpoint import Checkpointer
    from .trainer import run_paths
    steps = Checkpointer(run_paths(cfg)["checkpoints"], cfg.checkpoint.keep, is_main=False).list()
    out = os.path.join(cfg.run.dir, f"render_orbit_step{steps[-1] if steps else 0}")
    return cmd_render(argparse.Namespace(
        run=cfg.run.dir, checkpoint=None, path="auto", frames=args.video_frames, resolution=None,
        out=out, tile=64, balance="time", fps=12.0, no_video=False, save_float=False,
        threads=0, no_progress=not cfg.log.progress, overrides=args.overrides))


def cmd_demo_scene(args) -> int:
    from .scenes.demo import write_demo_scene
    if args.resolution < 8:
        raise ValueError(f"--resolution must be >= 8, got {args.resolution}")
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    info = write_demo_scene(args.out_dir, resolution=args.resolution, views=args.views,
                            seed=args.seed)
    print(f"demo scene written to {args.out_dir}: {info}")
    return 0


def cmd_keys(_args) -> int:
    print(_keys_help())
    return 0


COMMANDS = {"train": cmd_train, "render": cmd_render, "eval": cmd_eval, "cache": cmd_cache, "demo": cmd_demo,
            "demo-scene": cmd_demo_scene, "status": cmd_status, "keys": cmd_keys}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    # NOTE: no torch import on this path: `nerf-dist status` (run by SLURM scripts between a
    # stop and a requeue) must answer in a fraction of a second. SceneError, CheckpointError,
    # MemoryBudgetError, ... are ValueError or RuntimeError subclasses.
    from .config import ConfigError
    from .storage import StorageError, scrub
    known = (ConfigError, StorageError, FileNotFoundError, ValueError, RuntimeError)
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except known as e:
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}nerf-dist {args.command}: error: {scrub(str(e))}", file=sys.stderr)
        if os.environ.get("NERF_DIST_DEBUG"):
            raise
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
