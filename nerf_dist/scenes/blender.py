"""Blender synthetic scenes (NeRF paper layout): ``transforms_{split}.json`` + RGBA PNGs.

Each transforms file holds ``camera_angle_x`` (horizontal field of view, radians) and ``frames``,
each with ``file_path`` (relative to the scene folder, usually without extension: ``.png`` is
appended) and a 4x4 ``transform_matrix`` camera-to-world already in the OpenGL convention.
Optional per-frame ``depth_file`` (``.npy`` float32 [H, W], distance along the unit ray, 0 =
background) fills :attr:`Scene.depths` (written by :mod:`nerf_dist.scenes.demo`).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from .base import Scene, SceneError, SceneFiles, inside_root
from .images import background_of, downscale_depth, drop_missing, resolve_image
from .lazy import LazyScene, probe_size
from .transforms import frame_pose, get_frames, read_json, require

NEAR, FAR = 2.0, 6.0
AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
# NOTE: a file_path without extension names a PNG in this layout (the NeRF paper's data).
BLENDER_EXTS = (".png",)


def transforms_path(root: str, split: str) -> str:
    """transforms_{split}.json; 'test' falls back to 'val' (with a warning) when absent."""
    path = os.path.join(root, f"transforms_{split}.json")
    if split == "test" and not os.path.isfile(path):
        alt = os.path.join(root, "transforms_val.json")
        if os.path.isfile(alt):
            warnings.warn(f"{path} not found: using {alt} as the test split", stacklevel=4)
            return alt
    if not os.path.isfile(path):
        raise SceneError(f"transforms file not found: {path} (split '{split}')")
    return path


@dataclass
class BlenderIndex:
    """What :func:`load_blender` reads, found without decoding an image.

    path: the transforms file; data: its parsed JSON; frames: the kept frames (missing images
    dropped when data.skip_missing); keep: their indices in the file; files: their image paths;
    c2w: [n, 3, 4] float64; depth_files: per kept frame, or None unless every frame has one.
    """

    path: str
    data: dict
    frames: list[dict]
    keep: list[int]
    files: list[str]
    c2w: np.ndarray
    depth_files: list[str] | None

    @property
    def sources(self) -> SceneFiles:
        return SceneFiles(meta=(self.path,), data=tuple(self.files) + tuple(self.depth_files or ()))


def index_blender(data_cfg: DataConfig, split: str) -> BlenderIndex:
    """Parse the split's transforms file and resolve (and check) every file it names."""
    root = data_cfg.root
    path = transforms_path(root, split)
    data = read_json(path)
    angle = require(data, "camera_angle_x", path)
    if not isinstance(angle, (int, float)) or not (0 < float(angle) < math.pi):
        raise SceneError(f"{path}: field 'camera_angle_x' must be a number in (0, pi), got {angle!r}")
    frames = get_frames(data, path)
    if not frames:
        raise SceneError(f"{path}: split '{split}' has no frames")

    files, poses = [], []
    for i, fr in enumerate(frames):
        where = f"{path}: frame {i}"
        fp = require(fr, "file_path", where)
        if not isinstance(fp, str) or not fp:
            raise SceneError(f"{where}: field 'file_path' must be a non-empty string")
        inside_root(root, root, fp, data_cfg.allow_outside_root, where, "file_path")
        files.append(resolve_image(root, fp, BLENDER_EXTS))
        poses.append(frame_pose(fr, i, path))

    keep = drop_missing(files, data_cfg.skip_missing, path)
    if not keep:
        raise SceneError(f"{path}: split '{split}' is empty: every image is missing")
    kept = [frames[i] for i in keep]
    depth_files = None
    if all("depth_file" in fr for fr in kept):
        depth_files = [inside_root(root, root, str(fr["depth_file"]), data_cfg.allow_outside_root,
                                   f"{path}: frame {i}", "depth_file")
                       for fr, i in zip(kept, keep)]
    return BlenderIndex(path=path, data=data, frames=kept, keep=keep,
                        files=[files[i] for i in keep], c2w=np.stack([poses[i] for i in keep]),
                        depth_files=depth_files)


def open_blender(data_cfg: DataConfig, split: str) -> LazyScene:
    """One split of a Blender synthetic scene, images not yet decoded (see :func:`load_blender`).

    The image size comes from the first file's header; every frame must share it.
    """
    ix = index_blender(data_cfg, split)
    angle = float(ix.data["camera_angle_x"])
    bg = background_of(data_cfg)
    f = data_cfg.downscale
    h0, w0 = probe_size(ix.files[0], f)
    n, H, W = len(ix.files), h0 // f, w0 // f
    focal = 0.5 * w0 / math.tan(0.5 * angle) / f
    K = np.array([[focal, 0.0, W / 2.0], [0.0, focal, H / 2.0], [0.0, 0.0, 1.0]])
    return LazyScene(
        files=ix.files, factor=f, background=bg, source=ix.path, frame_ids=ix.keep,
        size0=(h0, w0),
        K=torch.from_numpy(np.repeat(K[None], n, axis=0).astype(np.float32)),
        c2w=torch.from_numpy(ix.c2w.astype(np.float32)),
        near=NEAR, far=FAR, aabb=torch.tensor(AABB, dtype=torch.float32), split=split,
        meta={"format": "blender", "root": data_cfg.root, "transforms": ix.path,
              "camera_angle_x": angle, "downscale": f},
        sources=ix.sources,
        depths=lambda h, w: _load_depths(ix.depth_files, ix.keep, f, (h, w), ix.path),
        depth_frame=None if not ix.depth_files else (
            lambda i, h, w: torch.from_numpy(_load_depth(ix.depth_files[i], ix.keep[i], f, (h, w),
                                                         ix.path))),
    )


def load_blender(data_cfg: DataConfig, split: str) -> Scene:
    """Read one split of a Blender synthetic scene.

    Returns a Scene with images [n, H, W, 3] (RGBA composited over the background), K [n, 3, 3]
    with focal = 0.5 * W / tan(0.5 * camera_angle_x) and (cx, cy) = (W / 2, H / 2) at the loaded
    (downscaled) size, c2w [n, 3, 4] (OpenGL), near = 2, far = 6, aabb = [-1.5, 1.5]^3, and
    depths [n, H, W] when every frame names a ``depth_file``. Reads exactly
    ``index_blender(data_cfg, split).sources`` (recorded as Scene.sources).
    """
    return open_blender(data_cfg, split).load()


def _load_depths(depth_files: list[str] | None, keep: list[int], factor: int,
                 size: tuple[int, int], path: str) -> torch.Tensor | None:
    """depths: [n, H, W] from each frame's ``depth_file`` (.npy [H0, W0]), or None without them."""
    if not depth_files:
        return None
    out = np.empty((len(depth_files),) + size, dtype=np.float32)
    for k, (dp, i) in enumerate(zip(depth_files, keep)):
        out[k] = _load_depth(dp, i, factor, size, path)
    return torch.from_numpy(out)


def _load_depth(dp: str, i: int, factor: int, size: tuple[int, int], path: str) -> np.ndarray:
    """[H, W] float32 depth of frame i from its ``depth_file`` dp (.npy [H0, W0]), downscaled."""
    try:
        d = np.load(dp, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SceneError(f"{path}: frame {i}: cannot read depth_file {dp}: {e}") from e
    if d.ndim != 2:
        raise SceneError(f"{path}: frame {i}: depth_file {dp} must be [H, W], got {d.shape}")
    d = downscale_depth(d, factor)
    if d.shape != size:
        raise SceneError(f"{path}: frame {i}: depth_file {dp} is {d.shape} after downscale, "
                         f"images are {size}")
    return d
