"""`nerf-dist export cameras`: a run's cameras as ``transforms.json`` and a COLMAP text model.

Which cameras: the splits asked for (--split, default every split the scene has: train, val,
test), each frame once (instant-ngp and COLMAP scenes hold the same frames out as 'val' and
'test'). Training poses are the refined ones where the kind refines them (model.pose_refine of
the unbounded kind: the learnt correction [R(w) R | o + u] of :mod:`nerf_dist.render_ops.pose`);
held-out poses are as the scene gives them (the model learnt no correction for them).

Frame: --frame original (default) undoes the reader's normalisation (:mod:`.frame`), so the
poses are in the frame of the scene's own files; --frame scene keeps the trained frame.
Intrinsics are at the files' own resolution (data.downscale undone), so the files describe the
images they name.

Files, in OUT (default RUN_DIR/export):
- ``transforms.json``: instant-ngp / nerfstudio layout, per frame ``file_path`` (relative to OUT),
  ``transform_matrix`` (camera-to-world, OpenGL axes), ``fl_x fl_y cx cy w h`` and, with lens
  distortion, ``k1 k2 p1 p2``; ``train_filenames`` / ``val_filenames`` / ``test_filenames`` give
  the splits (the ngp reader reads them back), ``"coordinates"`` says "world" (original frame)
  or "scene" (for `nerf-dist render --path`).
- ``colmap/sparse/0/{cameras,images,points3D}.txt``: COLMAP's text model: PINHOLE or OPENCV
  cameras (one per distinct intrinsics), world-to-camera poses (OpenCV axes), image NAMEs
  relative to the scene folder (to its images/ folder for COLMAP scenes); points3D.txt holds no
  points. COLMAP reads it with the scene folder as its image path.
- ``cameras.json``: the summary.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..config import load_config
from ..memory import fmt_bytes
from ..render_ops.pose import axis_angle_to_matrix
from ..run_dir import CONFIG_FILE, load_model
from ..scenes import SceneError, open_scene
from .frame import move_poses, original_from_meta

SPLITS = ("train", "val", "test")
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""OpenGL camera axes (y up, z backward) <-> OpenCV (y down, z forward), on either side."""


def refined_c2w(model, c2w: torch.Tensor, split: str) -> tuple[torch.Tensor, float | None]:
    """The poses c2w [n, 3, 4] of split as the model sees them: training poses with the model's
    learnt correction (a kind with a ``pose`` table, model.pose_refine) -> ([n, 3, 4] float32,
    the largest correction (radians or scene units) or None when none applies)."""
    pose = getattr(model, "pose", None) if model is not None else None
    if pose is None or split != "train":
        return c2w, None
    n = c2w.shape[0]
    if n > pose.table.shape[0]:
        raise ValueError(f"the model refines {pose.table.shape[0]} training poses but the scene "
                         f"has {n} training views: is this the run's scene (data.root)?")
    with torch.no_grad():
        delta = pose.deltas()[:n].detach().double().cpu()
    c = c2w.double()
    out = torch.empty(n, 3, 4, dtype=torch.float64)
    out[:, :, :3] = axis_angle_to_matrix(delta[:, :3]) @ c[:, :, :3]
    out[:, :, 3] = c[:, :, 3] + delta[:, 3:]
    return out.float(), float(delta.abs().max()) if n else 0.0


def _open_split(data_cfg, split: str, asked: bool):
    try:
        return open_scene(data_cfg, split)
    except SceneError:
        if asked:
            raise
        return None  # NOTE: a scene without this split (a Blender scene without test)


def parse_splits(text: str | None) -> tuple[tuple[str, ...], bool]:
    """--split 'train,val' -> (splits, asked); None: every split, not asked (missing ones are
    skipped). ValueError naming an unknown split."""
    if not text:
        return SPLITS, False
    got = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in got if s not in SPLITS]
    if bad or not got:
        raise ValueError(f"--split {text!r}: choose from {', '.join(SPLITS)} (comma-separated)")
    return got, True


def collect(cfg, model, splits: tuple[str, ...], asked: bool, frame: str) -> dict:
    """Every camera of splits in the output frame -> {frames: [{file, splits, c2w [4, 4], fx, fy,
    cx, cy, w, h, dist [4] | None}], matrix (scene -> output [4, 4]), refined (largest
    correction or None), meta (the train split's scene meta)}."""
    frames: dict[str, dict] = {}
    refined, meta, matrix = None, None, None
    for split in splits:
        sc = _open_split(cfg.data, split, asked)
        if sc is None:
            continue
        if meta is None:
            meta = sc.meta
            matrix = original_from_meta(meta) if frame == "original" else np.eye(4)
        c2w, r = refined_c2w(model, sc.c2w[:, :3, :4], split)
        refined = r if r is not None else refined
        c2w = move_poses(matrix, c2w.double().numpy())
        # NOTE: the files' own size and intrinsics (the readers divide K by data.downscale).
        f = float(sc.factor)
        h_full, w_full = (int(v) for v in sc.size0)
        for k, path in enumerate(sc.files):
            key = os.path.abspath(path)
            if key in frames:
                frames[key]["splits"].append(split)
                continue
            K = sc.K[k].double().numpy()
            d = sc.distortion[k].double().tolist() if sc.distortion is not None else None
            frames[key] = {"file": path, "splits": [split], "c2w": c2w[k],
                           "fx": K[0, 0] * f, "fy": K[1, 1] * f, "cx": K[0, 2] * f,
                           "cy": K[1, 2] * f, "w": w_full, "h": h_full, "dist": d}
    if meta is None:
        raise ValueError(f"the scene at {cfg.data.root} has none of the splits {', '.join(splits)}")
    return {"frames": list(frames.values()), "matrix": matrix, "refined": refined, "meta": meta}


def write_transforms(cams: dict, out: str, frame: str, extra: dict) -> str:
    """OUT/transforms.json (module docstring) -> its path."""
    frames, lists = [], {s: [] for s in SPLITS}
    for fr in cams["frames"]:
        rel = os.path.relpath(os.path.abspath(fr["file"]), os.path.abspath(out))
        entry = {"file_path": rel, "transform_matrix": fr["c2w"].tolist(),
                 "fl_x": fr["fx"], "fl_y": fr["fy"], "cx": fr["cx"], "cy": fr["cy"],
                 "w": fr["w"], "h": fr["h"]}
        if fr["dist"] is not None:
            entry.update(zip(("k1", "k2", "p1", "p2"), fr["dist"]))
        frames.append(entry)
        for s in fr["splits"]:
            lists[s].append(rel)
    first = cams["frames"][0]
    # NOTE: a top-level w, h too: camera-path readers (`nerf-dist render --path`) need one size.
    doc = {"camera_model": "OPENCV" if any(f["dist"] is not None for f in cams["frames"])
           else "PINHOLE", "coordinates": "world" if frame == "original" else "scene",
           "w": first["w"], "h": first["h"],
           **{f"{s}_filenames": v for s, v in lists.items() if v}, **extra, "frames": frames}
    aabb_scale = cams["meta"].get("aabb_scale")
    if aabb_scale is not None:
        doc["aabb_scale"] = aabb_scale
    path = os.path.join(out, "transforms.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    return path


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> COLMAP's unit quaternion (w, x, y, z), w >= 0 (Shepperd's method)."""
    m = np.asarray(R, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-300))
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def colmap_name(path: str, meta: dict) -> str:
    """An image's COLMAP NAME: relative to the scene folder (for COLMAP scenes, to the images/
    or images_N/ folder it was read from), with forward slashes."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(str(meta.get("root", "."))))
    parts = rel.replace(os.sep, "/").split("/")
    if meta.get("format") == "colmap" and len(parts) > 1 and parts[0].startswith("images"):
        parts = parts[1:]
    return "/".join(parts)


def write_colmap(cams: dict, out: str) -> str:
    """OUT/colmap/sparse/0/{cameras,images,points3D}.txt (module docstring) -> the folder."""
    folder = os.path.join(out, "colmap", "sparse", "0")
    os.makedirs(folder, exist_ok=True)
    ids: dict[tuple, int] = {}
    cam_lines, img_lines = [], []
    for k, fr in enumerate(cams["frames"], start=1):
        params = [fr["fx"], fr["fy"], fr["cx"], fr["cy"]] + (fr["dist"] or [])
        model = "OPENCV" if fr["dist"] is not None else "PINHOLE"
        key = (model, fr["w"], fr["h"], *params)
        if key not in ids:
            ids[key] = len(ids) + 1
            cam_lines.append(f"{ids[key]} {model} {fr['w']} {fr['h']} "
                             + " ".join(repr(float(p)) for p in params))
        c2w_cv = fr["c2w"] @ GL_TO_CV
        R = c2w_cv[:3, :3].T
        t = -R @ c2w_cv[:3, 3]
        q = rotmat_to_qvec(R)
        img_lines += [f"{k} " + " ".join(repr(float(v)) for v in (*q, *t))
                      + f" {ids[key]} {colmap_name(fr['file'], cams['meta'])}", ""]
    head = "# written by nerf-dist export cameras\n"
    with open(os.path.join(folder, "cameras.txt"), "w", encoding="utf-8") as f:
        f.write(head + "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                f"# Number of cameras: {len(cam_lines)}\n" + "\n".join(cam_lines) + "\n")
    with open(os.path.join(folder, "images.txt"), "w", encoding="utf-8") as f:
        f.write(head + "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                "# POINTS2D[] as (X, Y, POINT3D_ID)\n"
                f"# Number of images: {len(cams['frames'])}\n" + "\n".join(img_lines) + "\n")
    with open(os.path.join(folder, "points3D.txt"), "w", encoding="utf-8") as f:
        f.write(head + "# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, "
                "POINT2D_IDX)\n# Number of points: 0\n")
    return folder


def load_for_cameras(args):
    """(cfg, model or None, step or None, source) for the cameras of args.run: the newest
    checkpoint (or --checkpoint) when there is one; a kind that refines poses must have one."""
    overrides = list(getattr(args, "overrides", []) or [])
    ckpt = getattr(args, "checkpoint", None)
    try:
        loaded = (load_model(checkpoint=ckpt, overrides=overrides) if ckpt
                  else load_model(run_dir=args.run, overrides=overrides))
        return loaded.cfg, loaded.model, loaded.step, loaded.source
    except CheckpointError as e:
        if ckpt or "no complete checkpoint" not in str(e):
            raise
        cfg = load_config(os.path.join(args.run, CONFIG_FILE), overrides, saved=True)
        if getattr(cfg.model, "pose_refine", False):
            raise CheckpointError(f"{e}: model.pose_refine is on, so the cameras come from the "
                                  f"checkpoint's refined poses") from e
        return cfg, None, None, None


def export_cameras(cfg, model, out: str, frame: str = "original", split: str | None = None,
                   step: int | None = None) -> dict:
    """Write the cameras (module docstring) into out -> the summary (also OUT/cameras.json)."""
    if frame not in ("original", "scene"):
        raise ValueError(f"--frame must be original or scene, got {frame!r}")
    t0 = time.perf_counter()
    splits, asked = parse_splits(split)
    cams = collect(cfg, model, splits, asked, frame)
    os.makedirs(out, exist_ok=True)
    extra = {"nerf_dist": {"frame": frame, "step": step, "refined_train_poses":
                           cams["refined"] is not None, "scene": str(cfg.data.root)}}
    files = {"transforms": write_transforms(cams, out, frame, extra),
             "colmap": write_colmap(cams, out)}
    sizes = {"transforms": os.path.getsize(files["transforms"]),
             "colmap": sum(os.path.getsize(os.path.join(files["colmap"], n))
                           for n in os.listdir(files["colmap"]))}
    per_split = {s: sum(s in f["splits"] for f in cams["frames"]) for s in SPLITS}
    summary = {"cameras": len(cams["frames"]), "splits": {s: n for s, n in per_split.items() if n},
               "frame": frame, "scene_to_output": np.asarray(cams["matrix"]).tolist(),
               "refined_train_poses": cams["refined"] is not None,
               "largest_pose_correction": cams["refined"], "step": step,
               "files": {k: {"path": files[k], "bytes": sizes[k]} for k in files},
               "seconds": time.perf_counter() - t0}
    with open(os.path.join(out, "cameras.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def export_cameras_cli(args) -> int:
    """`nerf-dist export cameras RUN_DIR [--out] [--frame] [--split] [--checkpoint]`: on one
    process (there is nothing to split over ranks: under torchrun only rank 0 writes)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # NOTE: no collective here: the other ranks of a torchrun launch have no work
    cfg, model, step, _ = load_for_cameras(args)
    out = args.out or os.path.join(args.run, "export")
    s = export_cameras(cfg, model, out, args.frame, getattr(args, "split", None), step)
    splits = ", ".join(f"{n} {k}" for k, n in s["splits"].items())
    refined = (f"; training poses refined (largest correction {s['largest_pose_correction']:.3g})"
               if s["refined_train_poses"] else "")
    print(f"cameras: {s['cameras']} ({splits}) in the {s['frame']} frame{refined}", flush=True)
    for k, f in s["files"].items():
        print(f"  {k}: {f['path']} ({fmt_bytes(f['bytes'])})")
    return 0


__all__ = ["collect", "export_cameras", "export_cameras_cli", "load_for_cameras",
           "parse_splits", "refined_c2w", "rotmat_to_qvec", "write_colmap", "write_transforms"]
