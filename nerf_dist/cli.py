"""`nerf-dist` command line: thin entry points that parse, build, run and always clean up.

Commands: train, eval, cache, demo, demo-scene, keys. Run `nerf-dist COMMAND --help`.
Config overrides are `section.key=value` arguments after the options.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__

EXIT_USAGE = 2


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
               "  eval         render a split of a trained run, write images + report.json\n"
               "  cache        build the sharded ray cache for a config (also done by train)\n"
               "  demo         the quick start: make the demo scene, train, evaluate\n"
               "  demo-scene   write the procedural demo scene (Blender format)\n"
               "  keys         list every config key with its default and meaning\n")
    p.add_argument("--version", action="version", version=f"nerf-dist {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a model", formatter_class=fmt, epilog=_keys_help(),
                       description="Train on data.root with the given config and overrides. "
                                   "The same command runs under torchrun for DDP.")
    t.add_argument("--config", help="YAML config file (keys below)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")

    e = sub.add_parser("eval", help="evaluate a trained run on a split", formatter_class=fmt,
                       description="Render every view of a split with the newest checkpoint of "
                                   "RUN_DIR; write rgb/depth PNGs and report.json (PSNR, SSIM).")
    e.add_argument("--run", required=True, help="run folder (holds config.yaml)")
    e.add_argument("--split", default=None, help="split to evaluate (default: eval.test_split)")
    e.add_argument("--out", default=None, help="output folder (default: RUN_DIR/eval_SPLIT)")
    e.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.root=DIR")

    c = sub.add_parser("cache", help="build the sharded ray cache", formatter_class=fmt,
                       epilog=_keys_help())
    c.add_argument("--config", help="YAML config file")
    c.add_argument("overrides", nargs="*", help="section.key=value overrides")

    d = sub.add_parser("demo", help="quick start: demo scene, train, evaluate", formatter_class=fmt,
                       description="Generate the demo scene at data.root when absent, train with "
                                   "configs/demo.yaml, evaluate the test split and print where "
                                   "the report and images are.")
    d.add_argument("--config", default=None,
                   help="config file (default: configs/demo.yaml when present, else built-in)")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides")

    s = sub.add_parser("demo-scene", help="write the procedural demo scene")
    s.add_argument("out_dir", help="output folder")
    s.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--views", type=int, default=40, help="training views (default 40)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")

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


def cmd_train(args) -> int:
    from . import dist
    from .config import load_config
    from .trainer import train
    cfg = load_config(args.config, args.overrides)
    _terminate_as_interrupt()
    info = dist.init()
    try:
        res = train(cfg, info)
        if info.is_main:
            print(f"done: step {res['step']}, {res['elapsed']:.1f} s of training; "
                  f"run folder {cfg.run.dir}", flush=True)
    finally:
        dist.close()
    return 0


def cmd_cache(args) -> int:
    from . import dist
    from .config import load_config
    from .ray_cache import ensure_cache
    from .trainer import run_paths
    cfg = load_config(args.config, args.overrides)
    info = dist.init()
    try:
        log = print if info.is_main else (lambda *_: None)
        cache = ensure_cache(cfg.data, run_paths(cfg)["cache"], info.rank, info.world_size, log=log)
        if info.is_main:
            print(f"ray cache ready: {cache.n_rays} rays in {cache.n_shards} shards at {cache.url}")
    finally:
        dist.close()
    return 0


def load_run(run_dir: str, overrides: list[str]):
    """(cfg, model, step, elapsed) of a run folder's newest checkpoint, on the CPU."""
    from .checkpoint import Checkpointer
    from .config import ConfigError, load_config
    from .model import build_model
    from .trainer import run_paths
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(cfg_path):
        raise ConfigError(f"{cfg_path} not found: is {run_dir} a nerf-dist run folder?")
    cfg = load_config(cfg_path, overrides)
    url = run_paths(cfg)["checkpoints"]
    loaded = Checkpointer(url, cfg.checkpoint.keep, is_main=False).load()
    if loaded is None:
        raise RuntimeError(f"no complete checkpoint in {url}")
    step, state = loaded
    model = build_model(cfg.model, state["scene"]["aabb"])
    model.load_state_dict(state["model"])
    return cfg, model, step, float(state.get("elapsed", 0.0))


def cmd_eval(args) -> int:
    from . import dist
    from .evaluation import evaluate_split
    from .scenes import load_scene
    cfg, model, step, elapsed = load_run(args.run, args.overrides)
    info = dist.init()
    try:
        split = args.split or cfg.eval.test_split
        model = model.to(info.device)
        scene = load_scene(cfg.data, split)
        out = args.out or os.path.join(args.run, f"eval_{split}")
        if info.is_main:
            print(f"evaluating step {step} on {scene.n} {split} view(s) of {cfg.data.root}")
            rep = evaluate_split(model, scene, out, cfg.model.chunk, info.device,
                                 extra={"step": step, "train_seconds": elapsed})
            print(f"{split}: PSNR {rep['psnr']:.2f} dB, SSIM {rep['ssim']:.3f}"
                  + (f", depth error {rep['depth_abs_err']:.3f}" if "depth_abs_err" in rep else ""))
            print(f"report: {os.path.join(out, 'report.json')}\nimages: {out}/")
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
    return cmd_eval(argparse.Namespace(run=cfg.run.dir, split=None, out=None,
                                       overrides=args.overrides))


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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "cache": cmd_cache, "demo": cmd_demo,
            "demo-scene": cmd_demo_scene, "keys": cmd_keys}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from .config import ConfigError
    from .scenes.base import SceneError
    from .storage import StorageError
    known = (ConfigError, SceneError, StorageError, FileNotFoundError, ValueError, RuntimeError)
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except known as e:
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}nerf-dist {args.command}: error: {e}", file=sys.stderr)
        if os.environ.get("NERF_DIST_DEBUG"):
            raise
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
