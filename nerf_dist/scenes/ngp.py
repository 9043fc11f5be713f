"""instant-ngp / nerfstudio scenes: one ``transforms.json`` (or ``transforms_{split}.json``).

Intrinsics come from the top level or from each frame (a frame's value wins): ``fl_x``, ``fl_y``,
``cx``, ``cy``, ``w``, ``h``, or ``camera_angle_x`` / ``camera_angle_y``; OpenCV distortion
``k1 k2 p1 p2`` likewise (:mod:`nerf_dist.scenes.intrinsics`, the parser camera-path files use
too). ``file_path`` is relative to the json's folder, with or without an extension.
``transform_matrix`` is camera-to-world in the OpenGL convention.

Normalisation (:func:`normalisation`): camera centres (of ALL frames, so every split shares one
frame) are shifted by their mean and scaled so that they fit in [-1, 1]^3; rotations are kept.
``meta['world_to_scene']`` records it as ``{"offset": [3], "scale": s}`` (x_scene = (x_world -
offset) * scale; also as ``meta['offset']`` and ``meta['scale']``), so a camera path in the
capture's frame, e.g. this scene's own transforms.json, is moved into the scene's frame the same
way (:func:`nerf_dist.scenes.base.to_scene_frame`).

Splits: ``transforms_{split}.json`` siblings when present; else ``{split}_filenames`` lists in
transforms.json (nerfstudio); else every ``llff_hold``-th frame (i % hold == 0) is 'test'/'val'.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from .base import Scene, SceneError, SceneFiles, inside_root, to_scene_frame
from .images import background_of, drop_missing, resolve_image
from .intrinsics import number, parse_intrinsics
from .lazy import LazyScene, probe_size
from .transforms import frame_pose, get_frames, read_json, require

NEAR = 0.05
MAX_AABB_SCALE = 16.0
SPLITS = ("train", "val", "test")


def _norm_name(p: str) -> str:
    """Comparable key of a file path: normalised, without extension."""
    return os.path.splitext(os.path.normpath(p))[0]


def _entries(root: str, split: str, hold: int) -> tuple[list, list, str, list[str]]:
    """(frames of the split as (json_path, frame, index, glob), all frames' c2w [3, 4], source,
    every transforms file read)."""
    siblings = {s: os.path.join(root, f"transforms_{s}.json") for s in SPLITS}
    present = {s: p for s, p in siblings.items() if os.path.isfile(p)}
    if present:
        if split not in present and split == "test" and "val" in present:
            warnings.warn(f"{siblings['test']} not found: using {present['val']} as the test split",
                          stacklevel=4)
            split = "val"
        if split not in present:
            raise SceneError(f"transforms file not found: {siblings[split]} (split '{split}')")
        all_poses, chosen = [], []
        for s, p in present.items():
            data = read_json(p)
            frames = get_frames(data, p)
            for i, fr in enumerate(frames):
                all_poses.append(frame_pose(fr, i, p))
                if s == split:
                    chosen.append((p, fr, i, data))
        return chosen, all_poses, present[split], list(present.values())

    path = os.path.join(root, "transforms.json")
    data = read_json(path)
    frames = get_frames(data, path)
    all_poses = [frame_pose(fr, i, path) for i, fr in enumerate(frames)]
    lists = {s: data.get(f"{s}_filenames") for s in SPLITS}
    for s, v in lists.items():
        if v is not None and not isinstance(v, list):
            raise SceneError(f"{path}: field '{s}_filenames' must be a list")
    keys = {s: {_norm_name(str(n)) for n in v} for s, v in lists.items() if v is not None}
    other = {"val": "test", "test": "val"}
    if keys:
        names = [_norm_name(str(fr.get("file_path", ""))) for fr in frames]
        if split in keys:
            member = [n in keys[split] for n in names]
        elif split != "train" and other[split] in keys:
            member = [n in keys[other[split]] for n in names]
        elif split != "train":  # only train_filenames: evaluate on the rest
            member = [n not in keys["train"] for n in names]
        else:  # only val/test lists: train on the rest
            held = set().union(*keys.values())
            member = [n not in held for n in names]
    else:
        member = [(i % hold == 0) == (split != "train") for i in range(len(frames))]
    chosen = [(path, fr, i, data) for i, fr in enumerate(frames) if member[i]]
    return chosen, all_poses, path, [path]


def normalisation(centres: np.ndarray) -> dict:
    """The world-to-scene map of a capture: {"offset": [3], "scale": s} with x_scene = (x_world -
    offset) * scale, offset the mean of the camera centres [n, 3] and scale fitting them into
    [-1, 1]^3 (1 when all centres coincide)."""
    offset = centres.mean(0)
    extent = float(np.abs(centres - offset).max())
    return {"offset": [float(v) for v in offset], "scale": 1.0 / extent if extent > 0 else 1.0}


@dataclass
class NgpIndex:
    """What :func:`load_ngp` reads, found without decoding an image.

    chosen: the split's frames as (json_path, frame, index, glob); keep: positions (into chosen)
    of the frames whose image exists; files, c2w [n, 3, 4]: of the kept frames; all_poses:
    every frame of every split (for the normalisation); source: the split's transforms file;
    jsons: every transforms file read.
    """

    chosen: list
    keep: list[int]
    files: list[str]
    c2w: np.ndarray
    all_poses: list
    source: str
    jsons: list[str]

    @property
    def sources(self) -> SceneFiles:
        return SceneFiles(meta=tuple(self.jsons), data=tuple(self.files))


def index_ngp(data_cfg: DataConfig, split: str) -> NgpIndex:
    """Parse the transforms file(s) and resolve (and check) every image of the split."""
    root = data_cfg.root
    chosen, all_poses, source, jsons = _entries(root, split, data_cfg.llff_hold)
    if not chosen:
        raise SceneError(f"{source}: split '{split}' has no frames")

    files, poses = [], []
    for p, fr, i, glob in chosen:
        where = f"{p}: frame {i}"
        fp = require(fr, "file_path", where)
        if not isinstance(fp, str) or not fp:
            raise SceneError(f"{where}: field 'file_path' must be a non-empty string")
        folder = os.path.dirname(p) or "."
        inside_root(root, folder, fp, data_cfg.allow_outside_root, where, "file_path")
        files.append(resolve_image(folder, fp))
        poses.append(frame_pose(fr, i, p))

    ids = [i for _, _, i, _ in chosen]
    keep = drop_missing(files, data_cfg.skip_missing, source, ids)
    if not keep:
        raise SceneError(f"{source}: split '{split}' is empty: every image is missing")
    return NgpIndex(chosen=chosen, keep=keep, files=[files[k] for k in keep],
                    c2w=np.stack([poses[k] for k in keep]),
                    all_poses=all_poses, source=source, jsons=jsons)


def open_ngp(data_cfg: DataConfig, split: str) -> LazyScene:
    """One split of an instant-ngp / nerfstudio scene, images not yet decoded (see
    :func:`load_ngp`)."""
    root = data_cfg.root
    ix = index_ngp(data_cfg, split)
    chosen, keep, files, c2w = ix.chosen, ix.keep, ix.files, ix.c2w
    all_poses, source = ix.all_poses, ix.source
    ids = [i for _, _, i, _ in chosen]

    bg = background_of(data_cfg)
    f = data_cfg.downscale
    h0, w0 = probe_size(files[0], f)
    n = len(files)
    K = np.zeros((n, 3, 3))
    intr = []
    for k in range(n):
        p, fr, i, glob = chosen[keep[k]]
        it = parse_intrinsics(glob, fr, f"{p}: frame {i}", (w0, h0))
        if (it.w is not None and int(it.w) != w0) or (it.h is not None and int(it.h) != h0):
            raise SceneError(f"{p}: frame {i}: fields 'w', 'h' ({it.w}, {it.h}) differ from the "
                             f"image size {w0}x{h0} of {files[k]}")
        K[k] = it.K(w0, h0, f)
        intr.append(it)
    extra = sorted({e for it in intr for e in it.extra})
    if extra:
        warnings.warn(f"{source}: distortion fields {extra} are ignored (only k1 k2 p1 p2 are used)",
                      stacklevel=3)
    distortion = None
    if any(it.has_dist for it in intr):
        distortion = torch.tensor([it.distortion for it in intr], dtype=torch.float32)

    # NOTE: normalise with every frame of every split so train and test share one frame.
    world_to_scene = normalisation(np.stack(all_poses)[:, :, 3])
    c2w = to_scene_frame(c2w, world_to_scene)

    glob0 = chosen[0][3]
    s = glob0.get("aabb_scale", 1)
    s = float(min(max(number(s, "aabb_scale", source), 1.0), MAX_AABB_SCALE))
    return LazyScene(
        files=files, factor=f, background=bg, source=source, frame_ids=[ids[k] for k in keep],
        size0=(h0, w0), split=split,
        K=torch.from_numpy(K.astype(np.float32)),
        c2w=torch.from_numpy(c2w.astype(np.float32)),
        near=NEAR, far=2.0 * math.sqrt(3.0) * s,
        aabb=torch.tensor([[-s] * 3, [s] * 3], dtype=torch.float32),
        distortion=distortion,
        meta={"format": "ngp", "root": root, "transforms": source,
              "scale": world_to_scene["scale"], "offset": world_to_scene["offset"],
              "world_to_scene": world_to_scene, "aabb_scale": s, "downscale": f},
        sources=ix.sources,
    )


def load_ngp(data_cfg: DataConfig, split: str) -> Scene:
    """Read one split of an instant-ngp / nerfstudio scene.

    Returns a Scene with images [n, H, W, 3], per-frame K [n, 3, 3] (scaled by 1 / downscale;
    cx, cy default to the image centre), distortion [n, 4] (k1 k2 p1 p2; None when no frame has
    any), c2w [n, 3, 4] centred and scaled into [-1, 1]^3, near = 0.05, far = 2 sqrt(3) s and
    aabb = [-s, s]^3 with s = aabb_scale (default 1, clipped to [1, 16]). Reads exactly
    ``index_ngp(data_cfg, split).sources`` (recorded as Scene.sources).
    """
    return open_ngp(data_cfg, split).load()
