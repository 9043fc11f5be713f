"""The `render` command's work: load a checkpoint, build the camera path, render to a folder.

Validation (checkpoint, camera path, resolution) happens before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from .. import dist, storage
from ..run_dir import Loaded, load_model  # noqa: F401 - load_model re-exported for callers
from ..scenes import open_scene
from ..scenes.base import SceneError
from .core import RenderSetup, check_memory, render_frames
from .outputs import FrameWriter, clean_temp, write_videos
from .paths import (CameraPath, in_scene_frame, load_camera_path, orbit_path, parse_resolution,
                    spiral_path, split_path)

PATH_KINDS = ("auto", "orbit", "spiral", "train", "val", "test")
RENDER_JSON_VERSION = 1


def build_path(loaded: Loaded, path: str | None = None, n_frames: int | None = None,
               resolution: tuple[int, int] | None = None) -> tuple[CameraPath, RenderSetup]:
    """Camera path + render setup (near/far/background from the checkpoint, NDC from the scene).

    Settings not given come from ``loaded.cfg.render``. path (render.path): auto (spiral for
    forward-facing scenes, orbit otherwise), orbit, spiral, a split name, or a camera-path JSON
    file. n_frames: frames of an orbit/spiral (render.frames), or the first n cameras of a split /
    file (render.max_frames; 0 = all). resolution: (W, H) (render.resolution), default the path's
    own (training size for orbit/spiral). A file in the capture's world coordinates (an
    instant-ngp scene's own transforms.json) is moved into the scene's frame
    (:func:`.paths.in_scene_frame`).
    """
    cfg = loaded.cfg
    r = cfg.render
    path = r.path if path is None else path
    if resolution is None and r.resolution:
        resolution = parse_resolution(r.resolution)
    if n_frames is not None and n_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {n_frames}")
    if resolution is not None and (resolution[0] < 1 or resolution[1] < 1):
        raise ValueError(f"--resolution must be at least 1x1, got {resolution[0]}x{resolution[1]}")
    is_file = path not in PATH_KINDS
    cams = load_camera_path(path) if is_file else None   # malformed files fail first, and cheaply
    ref = None
    # NOTE: open_scene, not load_scene: a path needs the scene's cameras, never its pixels, so no
    # rank decodes an image (the first one's header gives the size).
    if path in ("train", "val", "test"):
        ref = open_scene(cfg.data, path)
        cams = split_path(ref)
    else:
        try:
            ref = open_scene(cfg.data, "train")
        except SceneError as e:
            maybe_ndc = str(cfg.data.ndc).lower() != "false" and cfg.data.format in ("auto", "llff")
            if not is_file or maybe_ndc:
                why = ("the training cameras" if not is_file else
                       "the training cameras to know whether rays use NDC")
                raise SceneError(f"--path {path} needs {why}: {e} (pass data.root=DIR"
                                 + ("" if not is_file else ", or data.ndc=false") + ")") from e
    if is_file and cams.meta.get("coordinates") == "world":
        # NOTE: a scene's own transforms.json (or a path marked "world") is in the capture's
        # frame; the model was trained in the reader's normalised frame.
        if ref is None:
            raise SceneError(f"--path {path} is in the capture's world coordinates: moving it into "
                             f"the scene's frame needs the scene (pass data.root=DIR)")
        cams = in_scene_frame(cams, ref.meta)
    if path in ("auto", "orbit", "spiral"):
        kind = ("spiral" if ref.ndc else "orbit") if path == "auto" else path
        n = n_frames or r.frames
        if kind == "orbit":
            cams = orbit_path(ref.c2w, ref.K[0], ref.H, ref.W, n)
        else:
            bounds = ref.meta.get("bounds", (ref.near, ref.far))
            cams = spiral_path(ref.c2w, ref.K[0], ref.H, ref.W, n, bounds)
    elif n_frames is not None or r.max_frames:
        cams = cams.first(n_frames or r.max_frames)
    if resolution is not None and (resolution[0], resolution[1]) != (cams.W, cams.H):
        cams = cams.resized(*resolution)
    sc = loaded.scene
    setup = RenderSetup(loaded.model, float(sc["near"]), float(sc["far"]),
                        torch.as_tensor(sc["background"], dtype=torch.float32), cfg.model.chunk,
                        ndc=bool(ref.ndc) if ref is not None else False,
                        ndc_focal=float(ref.ndc_focal) if ref is not None else 0.0,
                        ndc_size=tuple(ref.ndc_size) if ref is not None else (0, 0))
    return cams, setup


def _fingerprint(loaded: Loaded, cams: CameraPath, setup: RenderSetup) -> dict:
    parts = [cams.K.numpy().reshape(cams.n, -1), cams.c2w.numpy().reshape(cams.n, -1)]
    # NOTE: distortion only when present, so renders of pinhole cameras keep their old digest
    # (a partial render from before distortion existed still resumes).
    if cams.distortion is not None and bool((cams.distortion != 0).any()):
        parts.append(cams.distortion.numpy().reshape(cams.n, -1))
    poses = np.concatenate(parts, 1)
    digest = hashlib.sha256(np.round(poses.astype(np.float64), 4).tobytes()).hexdigest()[:16]
    src = loaded.source if storage.is_url(loaded.source) else os.path.abspath(loaded.source)
    return {"checkpoint": src, "step": loaded.step, "path": cams.name,
            "n_frames": cams.n, "width": cams.W, "height": cams.H, "cameras_sha": digest,
            "ndc": setup.ndc}


def render_to_dir(loaded: Loaded, cams: CameraPath, setup: RenderSetup, out_dir: str, rank: int = 0,
                  world_size: int = 1, device=None, tile: int | None = None,
                  balance: str | None = None, fps: float | None = None,
                  save_float: bool | None = None, video: bool | None = None,
                  progress: bool = True, log=print) -> dict | None:
    """Render every frame of `cams` into out_dir (layout: :mod:`.outputs`), resuming.

    tile, balance, fps, save_float, video: None = ``loaded.cfg.render``'s. Frames already
    complete on disk are skipped; a render.json from other settings is an error. Returns a
    summary dict on rank 0 (None elsewhere).
    """
    r = loaded.cfg.render
    tile = r.tile if tile is None else tile
    balance = r.balance if balance is None else balance
    fps = r.fps if fps is None else fps
    save_float = r.save_float if save_float is None else save_float
    video = r.video if video is None else video
    if tile < 1:
        raise ValueError(f"--tile must be >= 1, got {tile}")
    if fps <= 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    setup.device = torch.device(device) if device is not None else setup.device
    # NOTE: before the model moves, render.json is written or any tile rendered: a request that
    # cannot fit fails here in about a second, on every rank alike.
    check_memory(setup, cams.W, cams.H, tile, rank, world_size)
    setup.model = setup.model.to(setup.device)
    is_main = rank == 0
    meta_file = os.path.join(out_dir, "render.json")
    fp = _fingerprint(loaded, cams, setup)
    writer = FrameWriter(out_dir, setup.near, setup.far, save_float)
    err = None
    todo: list[int] = []
    if is_main:
        try:
            if os.path.exists(meta_file):
                with open(meta_file) as f:
                    old = json.load(f).get("settings")
                if old != fp:
                    diff = sorted(k for k in set(fp) | set(old or {})
                                  if (old or {}).get(k) != fp.get(k))
                    raise RuntimeError(f"{out_dir} holds a render with other settings "
                                       f"({', '.join(diff)} differ); delete it or pass another --out")
            os.makedirs(out_dir, exist_ok=True)
            clean_temp(out_dir)
            _write_json(meta_file, {"version": RENDER_JSON_VERSION, "complete": False,
                                    "settings": fp, **_describe(cams, setup, writer, fps)})
            todo = [i for i in range(cams.n) if not writer.done(i)]
        except (OSError, RuntimeError, ValueError) as e:
            err = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
    err, todo = dist.broadcast_object((err, todo)) if world_size > 1 else (err, todo)
    if err:
        raise RuntimeError(err)
    skipped = cams.n - len(todo)
    if skipped and is_main:
        log(f"resuming: {skipped} of {cams.n} frame(s) already in {out_dir}")
    bar = None
    if is_main and progress:
        bar = tqdm(total=cams.n, initial=skipped, unit="frame", desc="render", dynamic_ncols=True,
                   mininterval=0.5)
    stats: dict = {}
    t0 = time.perf_counter()
    try:
        for f, out in render_frames(setup, cams, todo, rank, world_size, tile, balance, stats):
            writer.write(f, out)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    if not is_main:
        return None
    videos = {}
    if video:
        mp4 = os.path.join(out_dir, "video.mp4")
        gif = os.path.join(out_dir, "video.gif")
        if todo or not (os.path.exists(mp4) and os.path.exists(gif)):
            videos = write_videos(out_dir, [writer.files(i)["rgb"] for i in range(cams.n)], fps, log)
        else:
            videos = {"mp4": mp4, "gif": gif}
    rays = len(todo) * cams.H * cams.W
    summary = {"frames": cams.n, "rendered": len(todo), "skipped": skipped, "seconds": wall,
               "frames_per_s": len(todo) / wall if wall > 0 and todo else 0.0,
               "rays_per_s": rays / wall if wall > 0 and todo else 0.0,
               "world_size": world_size, "tile": tile, "videos": videos,
               "rank_seconds": stats.get("rank_s")}
    _write_json(meta_file, {"version": RENDER_JSON_VERSION, "complete": True, "settings": fp,
                            **_describe(cams, setup, writer, fps), "last_run": summary})
    return summary


def _describe(cams: CameraPath, setup: RenderSetup, writer: FrameWriter, fps: float) -> dict:
    return {
        "outputs": {
            "rgb": "rgb/NNNNN.png, 8-bit RGB",
            "depth": "depth/NNNNN.png, colourised depth (near bright, far dark, black = none)",
            "depth16": "depth16/NNNNN.png, 16-bit grey; depth = value * depth16_scale",
            "acc": "acc/NNNNN.png, accumulated opacity, 8-bit grey (255 = opaque)",
            "float": "float/NNNNN.npz (--save-float): rgb, depth, acc float32",
            "video": "video.mp4 (H.264) and video.gif of rgb/",
        },
        "depth16_scale": writer.depth_scale,
        "depth_units": ("NDC t in [0, 1] (forward-facing scene)" if setup.ndc else
                        "scene units, distance along the unit ray direction"),
        "near": setup.near, "far": setup.far, "fps": fps,
        "camera_path": {"name": cams.name, "meta": cams.meta, **cams.to_json()},
    }


def _write_json(path: str, data: dict) -> None:
    with storage.atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
