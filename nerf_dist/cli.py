"""`nerf-dist` command line: thin entry points that parse, build, run and always clean up.

Commands: train, render, eval, cache, demo, demo-scene, prepare, export, status, keys. Run `nerf-dist COMMAND --help`.
Config overrides are `section.key=value` arguments after the options.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from . import __version__
from .config import ConfigError, RenderConfig, describe_keys, load_config, with_section
from .lifecycle import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_RESUME, EXIT_USAGE, STATUS_FILE,
                        StopSignals, read_status, record_died, resolve_status, status_exit_code)
from .storage import StorageError, redact, scrub

# NOTE: lazy because every command that computes imports torch (seconds on a busy node): the
# modules that do are imported inside the commands, so `nerf-dist status`, `keys` and `--help`
# answer at once (status runs in SLURM scripts between a stop and a requeue).


def _keys_help() -> str:
    lines = ["config keys (override with key=value):"]
    for key, default, doc in describe_keys():
        lines.append(f"  {key:<26} {' '.join(doc.split())} [default: {default!r}]")
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
               "  prepare      photos or a video -> camera poses (COLMAP, needs pycolmap)\n"
               "  export       mesh, point cloud or cameras of a trained run (docs/export.md)\n"
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
                    "skipped). Settings come from the render.* keys of the run's config "
                    "(`nerf-dist keys`); the flags below, or render.KEY=VALUE, override them.",
        epilog="paths:\n"
               "  auto     spiral for forward-facing (NDC) scenes, orbit otherwise\n"
               "  orbit    360 deg around the training cameras' centre (their radius, elevation)\n"
               "  spiral   LLFF-style spiral in front of a forward-facing rig\n"
               "  train|val|test   the poses of a dataset split\n"
               "  FILE.json        camera-path file: ours ({width, height, fl_x, fl_y, cx, cy,\n"
               "                   frames: [{transform_matrix: 4x4 c2w}]}), transforms.json, or\n"
               "                   nerfstudio's camera_path.json (see nerf_dist/renderer/paths.py)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR",
                     help="run folder (newest checkpoint; holds config.yaml). --run is the same, "
                          "but under torchrun only --run-dir works (torchrun reads --run as its "
                          "own --run-path)")
    src.add_argument("--checkpoint", help="one checkpoint: step folder or state.pt (path or URL)")
    _render_flags(r)
    r.add_argument("--out", default=None,
                   help="output folder (default: RUN_DIR/render_PATH, or ./render_PATH)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.root=DIR "
                                                "or render.tile=32")

    e = sub.add_parser("eval", help="evaluate a trained run on a split", formatter_class=fmt,
                       description="Render every view of a split with the newest checkpoint of "
                                   "RUN_DIR (tiles spread over the ranks under torchrun); write "
                                   "rgb/depth PNGs, contact_sheet.png and report.json (PSNR, "
                                   "SSIM) once, and the sheet rows to TensorBoard. --tile "
                                   "and --threads override render.tile and render.threads.")
    e.add_argument("--run-dir", "--run", dest="run", required=True, metavar="RUN_DIR",
                   help="run folder (holds config.yaml); --run is the same, but under torchrun "
                        "only --run-dir works")
    e.add_argument("--split", default=None, help="split to evaluate (default: eval.test_split)")
    e.add_argument("--out", default=None, help="output folder (default: RUN_DIR/eval_SPLIT)")
    _render_flags(e, eval_only=True)
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
                                   "configs/demo.yaml until train.steps (train.max_seconds is a "
                                   "safety net; the demo says when it stopped the run first), "
                                   "evaluate the test split (PSNR over the whole image and over "
                                   "the foreground) and end with an orbit video; print where the "
                                   "report, images and video are.")
    d.add_argument("--config", default=None,
                   help="config file (default: configs/demo.yaml when present, else built-in)")
    d.add_argument("--video-frames", type=int, default=None, metavar="N",
                   help="frames of the closing orbit video (render.frames; configs/demo.yaml: 30)")
    d.add_argument("--no-video", action="store_true",
                   help="skip the closing orbit video (render.video=false)")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides")

    s = sub.add_parser("demo-scene", help="write the procedural demo scene")
    s.add_argument("out_dir", help="output folder")
    s.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--views", type=int, default=40, help="training views (default 40)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    s.add_argument("--variant", choices=("objects", "unbounded", "city"), default="objects",
                   help="objects: four solids on a transparent background (Blender layout); "
                        "unbounded: the solids on a textured ground inside a far textured sphere, "
                        "360-degree cameras at several heights (instant-ngp layout); city: a grid "
                        "of 25 textured solids over a large textured ground, cameras looking down "
                        "from several heights (Blender layout) (default objects)")

    pr = sub.add_parser(
        "prepare", help="photos or a video -> a scene with camera poses (COLMAP)",
        formatter_class=fmt,
        description="Recover camera poses with COLMAP's structure from motion (pycolmap: pip "
                    "install 'nerf_dist[sfm]') and write OUT_DIR/images/, OUT_DIR/sparse/0/ and "
                    "OUT_DIR/prepare_report.json; then train with `nerf-dist train --config "
                    "configs/capture.yaml data.root=OUT_DIR`. OUT_DIR appears only when the solve "
                    "succeeded (it is built in a hidden folder next to it).")
    pr.add_argument("input", metavar="INPUT", help="folder of photos (png/jpg) or a video file")
    pr.add_argument("out_dir", metavar="OUT_DIR", help="scene folder to write")
    pr.add_argument("--frames", type=int, default=120,
                    help="video: frames to keep, the sharpest of each window (default 120)")
    pr.add_argument("--matching", choices=("auto", "exhaustive", "sequential"), default="auto",
                    help="auto: sequential for a video or over 300 photos, else exhaustive")
    pr.add_argument("--camera-model", default="OPENCV",
                    help="OPENCV (default), SIMPLE_RADIAL, PINHOLE, SIMPLE_PINHOLE, RADIAL, "
                         "OPENCV_FISHEYE (train cannot use fisheye yet)")
    pr.add_argument("--camera-per-image", action="store_true",
                    help="solve intrinsics per image (photos from several cameras or zooms)")
    pr.add_argument("--sfm-max-size", type=int, default=1600, metavar="PX",
                    help="longest side SIFT sees (default 1600); the full-size images are kept")
    pr.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: all)")
    pr.add_argument("--min-registered", type=float, default=0.5, metavar="FRACTION",
                    help="fail unless this fraction of the images registers (default 0.5)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    pr.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")

    st = sub.add_parser("status", help="how a run ended (exit code 0 / 75 / 1)",
                        formatter_class=fmt,
                        description="Print RUN_DIR/status.json (written by train on rank 0) and "
                                    "exit 0 when the run finished, 75 when it was stopped to be "
                                    "resumed (requeue it), 1 otherwise (failed, died, still "
                                    "running, or no status). A 'running' status whose rank 0 is "
                                    "gone (its process no longer runs on this machine, or no "
                                    "heartbeat for a few minutes) is reported and recorded as "
                                    "'died'. Scripts use it after torchrun, whose own exit "
                                    "code does not carry the trainer's.")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR", help="run folder")
    src.add_argument("--config", help="config file whose run.dir (after overrides) is the run")
    st.add_argument("--ended", action="store_true",
                    help="every process of the run has exited (a launcher after torchrun "
                         "returned): a 'running' status is then recorded as 'died'")
    st.add_argument("overrides", nargs="*", help="section.key=value overrides (with --config)")

    _export_parser(sub.add_parser(
        "export", help="mesh, point cloud or cameras of a trained run", formatter_class=fmt,
        description="Get the reconstruction out of a trained run, alone or under torchrun (the "
                    "work is split over the ranks; rank 0 writes). Coordinates are in the "
                    "scene's original frame (the readers' normalisation undone) unless --frame "
                    "scene. See docs/export.md."))

    sub.add_parser("keys", help="list config keys")
    return p


def _export_parser(p: argparse.ArgumentParser) -> None:
    """`nerf-dist export {mesh,pointcloud,cameras}` (pointcloud and cameras run
    nerf_dist.export.pointcloud.export_pointcloud_cli / .cameras.export_cameras_cli)."""
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    m = sub.add_parser("mesh", help="marching cubes on the density field -> PLY / OBJ / GLB",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Marching cubes on the density field of RUN_DIR's newest "
                                   "checkpoint inside a box, block by block (blocks split over "
                                   "the ranks, stitched without seams), vertex colours from the "
                                   "radiance field seen along -normal, normals from the density "
                                   "gradient. Writes OUT/mesh.{ply,obj,glb} and OUT/mesh.json.")
    m.add_argument("run", metavar="RUN_DIR", help="run folder (holds config.yaml)")
    m.add_argument("--out", default=None, help="output folder (default RUN_DIR/export)")
    res = m.add_mutually_exclusive_group()
    res.add_argument("--resolution", type=int, default=None, metavar="N",
                     help="cells along the box's longest side (default 256)")
    res.add_argument("--cell-size", type=float, default=None, metavar="S",
                     help="cell size in scene units instead of --resolution")
    m.add_argument("--bbox", type=float, nargs=6, default=None,
                   metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="box in the scene frame (default: the model's surface box: the occupied "
                        "cells of the occupancy grid (fast), the uncontracted cube [-1, 1]^3 "
                        "(unbounded), else the scene box)")
    m.add_argument("--level", type=float, default=None,
                   help="density of the surface (default: chosen from the field: the level "
                        "whose surface lies where the training rays' transmittance falls to "
                        "0.9; docs/export.md)")
    m.add_argument("--block", type=int, default=64, metavar="CELLS",
                   help="cells per block side (default 64)")
    m.add_argument("--chunk", type=int, default=65536, help="points per model call (default 65536)")
    m.add_argument("--keep-components", type=int, default=0, metavar="N",
                   help="keep the N largest connected components (default 0: all)")
    m.add_argument("--decimate", type=int, default=0, metavar="FACES",
                   help="quadric decimation to about FACES faces (needs fast-simplification)")
    m.add_argument("--format", default="ply", help="comma-separated: ply, obj, glb (default ply)")
    m.add_argument("--frame", choices=("original", "scene"), default="original",
                   help="original: the scene's own frame (default); scene: the trained frame")
    m.add_argument("--no-colors", action="store_true", help="skip vertex colours")
    m.add_argument("--checkpoint", default=None, metavar="URL",
                   help="a checkpoint folder or URL instead of RUN_DIR's newest")
    m.add_argument("--truth", action="store_true",
                   help="measure against the demo scene's true surface: Chamfer distance, "
                        "precision / recall / F-score at --tau of points drawn on the faces "
                        "(demo scenes only)")
    m.add_argument("--tau", type=float, default=0.05,
                   help="F-score threshold in the scene files' units (default 0.05)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.root=DIR")
    pc = sub.add_parser("pointcloud", help="points from the rendered depth of the training views",
                        description="Render the views of a split through the tiled renderer "
                                    "(tiles split over the ranks), turn each pixel's expected "
                                    "depth into a point with its colour (background removed) and "
                                    "a normal (from the depth map's gradient), keep a uniform "
                                    "sample, drop statistical outliers. Writes "
                                    "OUT/pointcloud.ply and OUT/pointcloud.json.")
    cam = sub.add_parser("cameras", help="the cameras as transforms.json and a COLMAP text model",
                         description="The training cameras (refined poses where the kind refines "
                                     "them) and the held-out ones as OUT/transforms.json "
                                     "(instant-ngp / nerfstudio) and a COLMAP text model "
                                     "OUT/colmap/sparse/0/*.txt, intrinsics at the files' size.")
    for q in (pc, cam):
        q.add_argument("run", metavar="RUN_DIR", help="run folder (holds config.yaml)")
        q.add_argument("--out", default=None, help="output folder (default RUN_DIR/export)")
        q.add_argument("--frame", choices=("original", "scene"), default="original",
                       help="original: the scene's own frame (default); scene: the trained frame")
        q.add_argument("--checkpoint", default=None, metavar="URL",
                       help="a checkpoint folder or URL instead of RUN_DIR's newest")
        q.add_argument("overrides", nargs="*", help="section.key=value overrides")
    pc.add_argument("--split", choices=("train", "val", "test"), default="train",
                    help="the views whose depth becomes points (default train)")
    pc.add_argument("--num-points", type=int, default=1_000_000, metavar="N",
                    help="at most N points, a uniform sample (default 1000000; 0: all)")
    pc.add_argument("--min-opacity", type=float, default=0.5, metavar="A",
                    help="a pixel becomes a point when its opacity is >= A (default 0.5)")
    pc.add_argument("--bbox", type=float, nargs=6, default=None,
                    metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                    help="keep points inside this box of the scene frame (default: the model's "
                         "surface box, as for meshes; none for NDC scenes)")
    pc.add_argument("--outlier-k", type=int, default=16, metavar="K",
                    help="statistical outlier removal over K neighbours (default 16; 0: off)")
    pc.add_argument("--outlier-std", type=float, default=2.0, metavar="S",
                    help="drop points whose mean neighbour distance is S standard deviations "
                         "above the mean (default 2)")
    pc.add_argument("--depth", choices=("auto", "mean", "median"), default="auto",
                    help="a pixel's distance: mean (expected depth / opacity) or median of the "
                         "weights; auto: median where the kind renders it (unbounded), else mean")
    pc.add_argument("--seed", type=int, default=0, help="seed of the point sample (default 0)")
    pc.add_argument("--truth", action="store_true",
                    help="measure against the demo scene's true surface: Chamfer distance, "
                         "precision / recall / F-score at --tau (demo scenes only)")
    pc.add_argument("--tau", type=float, default=0.05,
                    help="F-score threshold in the scene files' units (default 0.05)")
    pc.add_argument("--no-progress", action="store_true", help="no progress bars")
    cam.add_argument("--split", default=None, metavar="SPLITS",
                     help="comma-separated splits (default: every split the scene has)")


def _render_flags(p: argparse.ArgumentParser, eval_only: bool = False) -> None:
    """The shorthands of the render.* keys. NOTE: every default is None ("not given"): the
    defaults live in config.RenderConfig only (shown here from it), and a run's config.yaml may
    set its own."""
    R = RenderConfig
    if not eval_only:
        p.add_argument("--path", default=None,
                       help="auto | orbit | spiral | train | val | test | FILE.json "
                            f"(render.path, default {R.path})")
        p.add_argument("--frames", type=int, default=None,
                       help=f"frames of an orbit/spiral (render.frames, default {R.frames}); "
                            "first N cameras of a split/file (render.max_frames, default all)")
        p.add_argument("--resolution", default=None, metavar="WxH",
                       help="output size (render.resolution; default: the training / split / "
                            "file size)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help=f"tile side in pixels (render.tile, default {R.tile})")
    if not eval_only:
        p.add_argument("--balance", choices=("time", "pixels"), default=None,
                       help="spread tiles by measured cost (time) or pixel count "
                            f"(render.balance, default {R.balance})")
        p.add_argument("--fps", type=float, default=None,
                       help=f"video frame rate (render.fps, default {R.fps:g})")
        p.add_argument("--no-video", action="store_true",
                       help="write frames only (render.video=false)")
        p.add_argument("--save-float", action="store_true",
                       help="also write float/NNNNN.npz: rgb, depth, acc as float32 "
                            "(render.save_float=true)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch CPU threads per rank (render.threads, default {R.threads}: "
                        "torch's default)")


def render_flag_values(args) -> dict:
    """{RenderConfig field: value} of the render flags given on the command line (others absent).

    --frames sets both render.frames (orbit/spiral) and render.max_frames (split/file), as the one
    flag always meant "this many frames" whatever the path.
    """
    kw = {k: getattr(args, k) for k in ("tile", "threads", "path", "resolution", "balance", "fps")
          if getattr(args, k, None) is not None}
    if getattr(args, "frames", None) is not None:
        kw["frames"] = kw["max_frames"] = args.frames
    if getattr(args, "no_video", False):
        kw["video"] = False
    if getattr(args, "save_float", False):
        kw["save_float"] = True
    return kw


# ------------------------------------------------------------------------------ commands

# NOTE: the commands import nerf_dist.commands (and with it torch) inside their bodies, so that
# `nerf-dist status` and `--help` answer without importing torch.

def _configure_storage(cfg) -> None:
    """Apply the storage.* keys (timeouts, retries) to every storage call of this process."""
    from .commands import configure_storage  # NOTE: lazy (torch), as above
    configure_storage(cfg)


def cmd_train(args) -> int:
    # NOTE: the stop handlers go in before torch is imported (seconds on a busy node): a
    # SIGTERM/SIGUSR1 that early is recorded, and training stops after its first step with a
    # checkpoint and exit 75 instead of the process dying of the signal.
    stop = StopSignals()
    from .commands import train_run  # NOTE: lazy (torch), after the stop handlers
    res = train_run(load_config(args.config, args.overrides), stop)
    return EXIT_RESUME if res["stopped_by_signal"] else 0


def cmd_status(args) -> int:
    run = args.run or load_config(args.config, args.overrides).run.dir
    doc = read_status(run)
    if doc is None:
        print(f"no readable {STATUS_FILE} in {run} (the run never started training there)")
        return EXIT_ERROR
    judged = resolve_status(doc, ended=args.ended)
    if judged is not doc and not record_died(run, doc, judged):
        # NOTE: the file changed since it was read (a restarted rank 0): judge what it says now
        judged = resolve_status(read_status(run), ended=args.ended) or judged
    print(json.dumps(judged, indent=1))
    return status_exit_code(judged)


def cmd_cache(args) -> int:
    from . import dist  # NOTE: lazy (torch), as above
    from .ray_cache import ensure_cache, verify_shards  # NOTE: lazy (torch)
    from .run_dir import run_paths  # NOTE: lazy (torch)
    cfg = load_config(args.config, args.overrides)
    _configure_storage(cfg)
    info = dist.init(timeout_s=cfg.dist.timeout_s)
    try:
        log = print if info.is_main else (lambda *_: None)
        cache = ensure_cache(cfg.data, run_paths(cfg)["cache"], info.rank, info.world_size, log=log,
                             rebuild=args.rebuild)
        verify_shards(cache, info.rank, info.world_size)
        if info.is_main:
            print(f"ray cache ready: {cache.n_pixels} pixels of {cache.n_images} {cache.W}x{cache.H} "
                  f"images in {cache.n_shards} shards, {cache.total_bytes / 1e6:.1f} MB "
                  f"({cache.mode}, {cache.bytes_per_pixel} bytes a pixel; sizes and sha256 "
                  f"verified) at {redact(cache.url)}")
    finally:
        dist.close()
    return 0


def _loaded_with_flags(args, checkpoint: str | None = None):
    """The run's (or checkpoint's) model and config, cfg.render overridden by the render flags.

    NOTE: the flags are checked before the checkpoint is read (a bad one fails at once, naming
    its key and flag); the camera path and resolution are checked before any file is written.
    """
    from .dist import launch_rank  # NOTE: lazy (torch), as above
    from .run_dir import load_model  # NOTE: lazy (torch), as above
    flags = render_flag_values(args)
    replace(RenderConfig(), **flags)
    # NOTE: under torchrun each rank loads only what it will hold (a partitioned model's boxes).
    rank, world_size = launch_rank()
    loaded = load_model(run_dir=args.run, checkpoint=checkpoint, overrides=args.overrides,
                        rank=rank, world_size=world_size)
    loaded.cfg = with_section(loaded.cfg, "render", **flags)
    return loaded


def cmd_render(args) -> int:
    from .commands import render_run  # NOTE: lazy (torch), as above
    loaded = _loaded_with_flags(args, args.checkpoint)
    render_run(loaded, args.out, args.run, progress=loaded.cfg.log.progress and not args.no_progress)
    return 0


def cmd_eval(args) -> int:
    from .commands import eval_run  # NOTE: lazy (torch), as above
    eval_run(_loaded_with_flags(args), args.run, args.split, args.out)
    return 0


def cmd_demo(args) -> int:
    stop = StopSignals()
    from .commands import demo_run  # NOTE: lazy (torch), after the stop handlers
    # NOTE: the demo's flags are shorthands of render keys, applied like any override (checked
    # before training; saved with the run, so `nerf-dist render --run-dir` repeats the video).
    extra = ([f"render.frames={args.video_frames}"] if args.video_frames is not None else []) + (
        ["render.video=false"] if args.no_video else [])
    return demo_run(args.config, [*args.overrides, *extra], stop=stop)


def cmd_demo_scene(args) -> int:
    from .scenes.demo import write_demo_scene  # NOTE: lazy (numpy, torch), as above
    from .scenes.demo_city import write_city_scene  # NOTE: lazy, as above
    from .scenes.demo_unbounded import write_unbounded_scene  # NOTE: lazy, as above
    if args.resolution < 8:
        raise ValueError(f"--resolution must be >= 8, got {args.resolution}")
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    write = {"unbounded": write_unbounded_scene, "city": write_city_scene}.get(args.variant,
                                                                             write_demo_scene)
    info = write(args.out_dir, resolution=args.resolution, views=args.views, seed=args.seed)
    print(f"demo scene written to {args.out_dir}: {info}")
    return 0


def cmd_prepare(args) -> int:
    from tqdm import tqdm  # NOTE: lazy, with the command that draws bars

    # NOTE: lazy: numpy/PIL, and pycolmap once a solve starts; prepare never imports torch.
    from .prepare import PrepareOptions, prepare
    opts = PrepareOptions(frames=args.frames, matching=args.matching,
                          camera_model=args.camera_model, single_camera=not args.camera_per_image,
                          sfm_max_size=args.sfm_max_size, threads=args.threads,
                          min_registered=args.min_registered, overwrite=args.overwrite,
                          verbose=args.verbose)
    bars = []

    def stage(name: str, total: int):
        close_bars()
        bar = tqdm(total=total, desc=f"{name:<7}", unit="img" if total > 1 else "step",
                   disable=args.no_progress, leave=True, file=sys.stderr)
        bars.append(bar)
        return bar.update

    def close_bars() -> None:
        for b in bars:
            b.close()

    def log(text: str) -> None:
        close_bars()
        print(text)

    try:
        prepare(args.input, args.out_dir, opts, stage=stage, log=log)
    finally:
        close_bars()
    return 0


def cmd_export(args) -> int:
    if args.what != "mesh":
        import importlib  # NOTE: lazy (torch), as above
        mod = importlib.import_module(f"nerf_dist.export.{args.what}")
        return getattr(mod, f"export_{args.what}_cli")(args) or 0
    from .commands import export_mesh_run  # NOTE: lazy (torch), as above
    from .export.mesh.job import MeshOptions, check_options  # NOTE: lazy (torch), as above
    res = args.resolution if args.resolution is not None or args.cell_size else 256
    opts = MeshOptions(out=args.out or os.path.join(args.run, "export"), resolution=res,
                       cell_size=args.cell_size, bbox=tuple(args.bbox) if args.bbox else None,
                       level=args.level, block=args.block, keep_components=args.keep_components,
                       decimate=args.decimate,
                       formats=tuple(f.strip().lower() for f in args.format.split(",") if f.strip()),
                       frame=args.frame, colors=not args.no_colors, chunk=args.chunk,
                       progress=not args.no_progress, truth=args.truth, tau=args.tau)
    check_options(opts)
    export_mesh_run(args.run, opts, args.overrides, args.checkpoint)
    return 0


def cmd_keys(_args) -> int:
    print(_keys_help())
    return 0


COMMANDS = {"train": cmd_train, "render": cmd_render, "eval": cmd_eval, "cache": cmd_cache, "demo": cmd_demo,
            "demo-scene": cmd_demo_scene, "prepare": cmd_prepare, "export": cmd_export,
            "status": cmd_status, "keys": cmd_keys}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    # NOTE: no torch import on this path: `nerf-dist status` (run by SLURM scripts between a
    # stop and a requeue) must answer in a fraction of a second. SceneError, CheckpointError,
    # MemoryBudgetError, ... are ValueError or RuntimeError subclasses.
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
