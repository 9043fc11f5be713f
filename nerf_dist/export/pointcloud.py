"""`nerf-dist export pointcloud`: points from the rendered expected depth of a split's views.

Stages, on every rank (alone or under torchrun):

1. the cameras: the split's own (--split, default train), training poses refined where the kind
   refines them (:func:`.cameras.refined_c2w`);
2. memory check (every rank, before any work; raised on every rank): the render's own
   (:func:`nerf_dist.renderer.core.check_memory`) plus the points rank 0 holds;
3. render: the tiled renderer spreads each view's tiles over the ranks and gathers them on
   rank 0 (:func:`nerf_dist.renderer.core.render_frames`, the code `render` and `eval` use);
4. rank 0, view by view as they arrive: points, colours and normals (:mod:`.depth_points`),
   kept where acc >= --min-opacity and inside the box (--bbox, else the model's surface box:
   the occupied cells of the occupancy grid (fast), [-1, 1]^3 (unbounded), else the scene box;
   none for forward-facing NDC scenes), into a uniform random sample of at most --num-points
   (keys from (--seed, view), so the sample does not depend on the number of ranks);
5. rank 0: statistical outlier removal (--outlier-k neighbours, --outlier-std), the output frame
   (:mod:`.frame`), OUT/pointcloud.ply (binary, x y z nx ny nz red green blue) and
   OUT/pointcloud.json (the summary). An empty result is raised on every rank, with the count
   each threshold removed.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import dist, memory
from ..renderer.core import RenderSetup, check_memory, render_frames, tile_rays
from ..renderer.paths import split_path
from ..renderer.tiles import Tile
from ..scenes import open_scene
from .cameras import refined_c2w
from .depth_points import Reservoir, frame_keys, statistical_outliers, view_points
from .frame import move_points, original_from_meta
from .geometry_metrics import against_truth, truth_text
from .ply import write_ply

POINT_BYTES = 8 + 3 * 8 + 3 * 4 + 3 * 4
"""A held point: key (fp64), position (fp64), colour and normal (fp32)."""
VIEW_BYTES_PER_PIXEL = 3 * 3 * 8 + 3 * 4 * 3 + 8 + 64
"""One view's processing on rank 0: rays and points (fp64), colours and normals, keys, masks."""
DEPTHS = ("auto", "mean", "median")


def depth_keys(model, depth: str) -> tuple[str, ...]:
    """The renderer's extra keys for --depth (ValueError when the kind cannot render it)."""
    offers = "depth_median" in getattr(model, "EXTRA_OUTPUTS", ())
    if depth == "median" and not offers:
        raise ValueError(f"--depth median: model kind {type(model).__name__} renders no median "
                         f"depth (only the unbounded kind does): use --depth mean")
    return ("depth_median",) if offers and depth != "mean" else ()


@dataclass(frozen=True)
class PointCloudOptions:
    """What `nerf-dist export pointcloud` was asked for (validated by :func:`check_options`)."""
    out: str
    """Output folder (pointcloud.ply, pointcloud.json)."""
    split: str = "train"
    """The views whose depth becomes points."""
    num_points: int = 1_000_000
    """At most this many points, a uniform random sample of those kept (0: all)."""
    min_opacity: float = 0.5
    """A pixel becomes a point when its opacity acc is at least this."""
    bbox: tuple[float, ...] | None = None
    """xmin ymin zmin xmax ymax zmax in the scene frame; None: the model's surface box."""
    outlier_k: int = 16
    """Neighbours of the statistical outlier removal (0: none)."""
    outlier_std: float = 2.0
    """A point is an outlier when its mean neighbour distance exceeds the mean by this many
    standard deviations."""
    frame: str = "original"
    seed: int = 0
    progress: bool = True
    truth: bool = False
    """Measure the points against the demo scene's true surface (:mod:`.geometry_metrics`)."""
    tau: float = 0.05
    """The F-score threshold of truth, in the scene files' units."""
    depth: str = "auto"
    """mean: the expected depth / opacity; median: the weights' median distance (kinds that
    render it); auto: median where the kind renders it (unbounded), else mean."""


def check_options(o: PointCloudOptions) -> None:
    """ValueError naming the flag of the first bad option."""
    if o.frame not in ("original", "scene"):
        raise ValueError(f"--frame must be original or scene, got {o.frame!r}")
    if o.split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {o.split!r}")
    if o.num_points < 0:
        raise ValueError(f"--num-points must be >= 0 (0: all), got {o.num_points}")
    if not 0.0 < o.min_opacity <= 1.0:
        raise ValueError(f"--min-opacity must be in (0, 1], got {o.min_opacity}")
    if o.outlier_k < 0 or not (math.isfinite(o.outlier_std) and o.outlier_std > 0):
        raise ValueError(f"--outlier-k must be >= 0 and --outlier-std > 0, got {o.outlier_k}, "
                         f"{o.outlier_std}")
    if o.depth not in DEPTHS:
        raise ValueError(f"--depth must be one of {', '.join(DEPTHS)}, got {o.depth!r}")
    if not (math.isfinite(o.tau) and o.tau > 0):
        raise ValueError(f"--tau must be > 0, got {o.tau}")
    if o.bbox is not None and (len(o.bbox) != 6 or any(a >= b for a, b in
                                                        zip(o.bbox[:3], o.bbox[3:]))):
        raise ValueError(f"--bbox takes xmin ymin zmin xmax ymax zmax with each min < max, got "
                         f"{o.bbox}")


def resolve_box(model, aabb, o: PointCloudOptions, ndc: bool) -> tuple[np.ndarray | None, str]:
    """([2, 3] box in the scene frame or None, where it came from) (module docstring, 4)."""
    if o.bbox is not None:
        return np.asarray(o.bbox, dtype=np.float64).reshape(2, 3), "--bbox"
    if ndc:
        return None, "none (forward-facing NDC scene)"
    aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
    box = model.surface_box(aabb)
    src = "the model's surface box" if not torch.equal(box, aabb) else "the scene box"
    return box.double().numpy(), src


def estimate(o: PointCloudOptions, W: int, H: int, n_views: int) -> dict[str, int]:
    """Rank 0's host memory besides the render, {part: bytes}."""
    n = o.num_points or n_views * W * H
    return {f"the sampled points (up to {2 * n} held)": 2 * n * POINT_BYTES,
            f"one {W}x{H} view's points": W * H * VIEW_BYTES_PER_PIXEL,
            "outlier search (k-d tree)": (n * (o.outlier_k + 1) * 16 if o.outlier_k else 0)}


class _Counts:
    """How many pixels each stage kept (for the summary and the empty-result message)."""

    def __init__(self):
        self.pixels = self.opaque = self.in_box = 0
        self.max_opacity = 0.0


def _take_view(res, out: dict, rays: dict, setup, o: PointCloudOptions, box, frame: int,
               counts: _Counts) -> None:
    """Rank 0: one rendered view into the reservoir res."""
    v = view_points(out, rays, setup.background, o.min_opacity, setup.ndc_args)
    keep = v["valid"].reshape(-1)
    counts.pixels += keep.size
    counts.opaque += int(keep.sum())
    counts.max_opacity = max(counts.max_opacity, float(out["acc"].max()))
    pts = v["points"].reshape(-1, 3)
    if box is not None:
        keep &= ((pts >= box[0]) & (pts <= box[1])).all(1)
    counts.in_box += int(keep.sum())
    keys = frame_keys(o.seed, frame, keep.size)
    res.add(keys[keep], points=pts[keep], colors=v["colors"].reshape(-1, 3)[keep],
            normals=v["normals"].reshape(-1, 3)[keep])


def _empty_message(counts: _Counts, o: PointCloudOptions, box_src: str) -> str:
    if counts.opaque == 0:
        return (f"no point: none of the {counts.pixels} pixels reaches --min-opacity "
                f"{o.min_opacity:g} (the largest opacity is {counts.max_opacity:.3g}: lower "
                f"--min-opacity, or is the model trained?)")
    return (f"no point: {counts.opaque} of {counts.pixels} pixels are opaque enough but none lies "
            f"inside the box ({box_src}): give a larger --bbox in the scene frame")


def _bar(total: int, desc: str, unit: str, on: bool):
    from tqdm import tqdm  # NOTE: lazy, with the command that draws bars
    return tqdm(total=total, desc=desc, unit=unit, disable=not on, dynamic_ncols=True)


def _finish(pts: dict, o: PointCloudOptions, scene_meta: dict, box, progress: bool) -> dict:
    """Rank 0: outliers, the frame, the files (and --truth, within box [2, 3] | None) -> the
    summary's counts and files."""
    n_sampled = len(pts["points"])
    bar = _bar(n_sampled if o.outlier_k else 0, "outliers", "pt", progress and bool(o.outlier_k))
    out = statistical_outliers(pts["points"], o.outlier_k, o.outlier_std, progress=bar.update)
    bar.close()
    pts = {k: v[~out] for k, v in pts.items()}
    matrix = original_from_meta(scene_meta) if o.frame == "original" else np.eye(4)
    p, nrm = move_points(matrix, pts["points"], pts["normals"])
    nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-30)
    os.makedirs(o.out, exist_ok=True)
    path = os.path.join(o.out, "pointcloud.ply")
    size = write_ply(path, p.astype(np.float32), colors=np.round(pts["colors"] * 255.0),
                     normals=nrm.astype(np.float32))
    truth = None
    if o.truth:
        truth = against_truth(p, str(scene_meta.get("root", "")), scene_meta, o.frame, o.tau,
                              box=box)
    return {"points": len(p), "sampled": n_sampled, "outliers": int(out.sum()), "truth": truth,
            "frame": o.frame, "scene_to_output": matrix.tolist(),
            "files": {"ply": {"path": path, "bytes": size}}}


def export_pointcloud(loaded, o: PointCloudOptions, rank: int = 0, world_size: int = 1,
                      device="cpu", log=print) -> dict | None:
    """Every stage (module doc); returns the summary on rank 0 (also OUT/pointcloud.json), None
    elsewhere. log: rank 0's printer (a no-op on other ranks)."""
    check_options(o)
    t0 = time.perf_counter()
    cfg = loaded.cfg
    model = loaded.model.to(device).eval()
    scene = open_scene(cfg.data, o.split)
    cams = split_path(scene)
    cams.c2w, refined = refined_c2w(model, cams.c2w, o.split)
    setup = RenderSetup.from_scene(model, scene, cfg.model.chunk, device)
    setup.extra_keys = depth_keys(model, o.depth)
    box, box_src = resolve_box(model, loaded.scene["aabb"], o, bool(scene.ndc))
    box_txt = ("no box" if box is None else
               f"box {box[0].round(3).tolist()} .. {box[1].round(3).tolist()}")
    log(f"export pointcloud: step {loaded.step}, {scene.n} {o.split} view(s) of {cams.W}x{cams.H}"
        f"{' (refined poses)' if refined is not None else ''}, "
        f"{'median' if setup.extra_keys else 'expected'} depth, {box_txt} ({box_src}), on "
        f"{world_size} rank(s)")
    check_memory(setup, cams.W, cams.H, cfg.render.tile, rank, world_size)
    # NOTE: and the render's host memory together with the points rank 0 holds (every rank
    # checks rank 0's, the largest: one verdict, raised on every rank).
    render_host = memory.render_estimate(cams.W, cams.H, cfg.render.tile, cfg.model.chunk,
                                         cfg.model, world_size, device)["host"]
    memory.on_all_ranks(lambda: memory.check_parts(
        {**render_host, **estimate(o, cams.W, cams.H, scene.n)}, "the point-cloud export",
        {"sampled": "lower --num-points", "view": "render a smaller split (data.downscale=2)",
         "outlier": "lower --outlier-k"}), rank, world_size)
    res, counts = Reservoir(o.num_points), _Counts()
    bar = _bar(scene.n, f"render {o.split} views", "view", o.progress and rank == 0)
    for i, out in render_frames(setup, cams, list(range(scene.n)), rank, world_size,
                                cfg.render.tile):
        rays = tile_rays(setup, cams, Tile(i, 0, 0, cams.H, cams.W))
        _take_view(res, out, rays, setup, o, box, i, counts)
        bar.update()
    bar.close()
    t_render = time.perf_counter() - t0
    pts = res.take() if rank == 0 else {}
    err = (_empty_message(counts, o, box_src) if rank == 0 and not len(pts.get("keys", ()))
           else None)
    dist.raise_together(err, rank, world_size, ValueError)
    if rank != 0:
        return None
    summary = _finish(pts, o, scene.meta, box, o.progress)
    if not summary["points"]:
        raise ValueError(f"no point left after the outlier removal (--outlier-k {o.outlier_k}, "
                         f"--outlier-std {o.outlier_std:g}): raise --outlier-std or use 0")
    summary.update(step=loaded.step, split=o.split, views=scene.n, pixels=counts.pixels,
                   opaque=counts.opaque, in_box=counts.in_box, min_opacity=o.min_opacity,
                   num_points=o.num_points, box=None if box is None else box.tolist(),
                   box_source=box_src, refined_poses=refined is not None,
                   outlier_k=o.outlier_k, outlier_std=o.outlier_std, seed=o.seed,
                   world_size=world_size, render_seconds=t_render,
                   seconds=time.perf_counter() - t0, source=loaded.source,
                   normals="depth gradient", colors="rendered, background removed",
                   depth="median" if setup.extra_keys else "mean")
    with open(os.path.join(o.out, "pointcloud.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def options_of(args) -> PointCloudOptions:
    """The options of parsed `nerf-dist export pointcloud` arguments (validated)."""
    o = PointCloudOptions(
        out=args.out or os.path.join(args.run, "export"), split=getattr(args, "split", "train"),
        num_points=args.num_points, min_opacity=args.min_opacity,
        bbox=tuple(args.bbox) if args.bbox else None, outlier_k=args.outlier_k,
        outlier_std=args.outlier_std, frame=args.frame, seed=args.seed,
        progress=not args.no_progress, truth=getattr(args, "truth", False),
        tau=getattr(args, "tau", 0.05), depth=getattr(args, "depth", "auto"))
    check_options(o)
    return o


def summary_text(s: dict, o: PointCloudOptions) -> str:
    """The closing lines: what each stage kept, the time, the file and its size."""
    ply = s["files"]["ply"]
    t = s.get("truth")
    vs = "" if not t else "\n  " + truth_text(t)
    return (f"pointcloud: {s['points']} points from {s['views']} view(s) ({s['pixels']} pixels, "
            f"{s['opaque']} at opacity >= {o.min_opacity:g}, {s['in_box']} in the box, "
            f"{s['sampled']} sampled, {s['outliers']} outliers removed), {s['seconds']:.1f} s on "
            f"{s['world_size']} rank(s)\n  ply: {ply['path']} ({memory.fmt_bytes(ply['bytes'])})" + vs)


def export_pointcloud_cli(args) -> int:
    """`nerf-dist export pointcloud RUN_DIR ...`: load the newest checkpoint (or --checkpoint),
    export on every rank, print the summary on rank 0."""
    from ..commands import export_session  # NOTE: lazy because commands imports the trainer
    o = options_of(args)

    def work(loaded, info, log):
        s = export_pointcloud(loaded, o, info.rank, info.world_size, info.device, log)
        if s is not None:
            print(summary_text(s, o), flush=True)

    export_session(args.run, work, getattr(args, "overrides", []) or [],
                   getattr(args, "checkpoint", None))
    return 0


__all__ = ["PointCloudOptions", "check_options", "estimate", "export_pointcloud",
           "export_pointcloud_cli", "options_of", "resolve_box"]
