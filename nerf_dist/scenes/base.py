"""The one Scene type every reader returns.

Camera convention (all readers convert to it): camera-to-world matrices in the OpenGL / Blender
convention, x right, y up, the camera looking down -z. Pixel (i, j) (column i, row j) has its centre
at (i + 0.5, j + 0.5) in pixel units; see :mod:`nerf_dist.render_ops.rays`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch


class SceneError(ValueError):
    """Bad scene input; the message names the file and the frame or field."""


def to_scene_frame(c2w, world_to_scene: dict) -> np.ndarray:
    """Camera-to-world poses c2w [n, 3, 4] in a capture's own world frame -> the scene's frame
    (float64): centres (x - offset) * scale, rotations unchanged.

    world_to_scene: {"offset": [3], "scale": s}, as a reader that normalises records it in
    ``Scene.meta['world_to_scene']`` (instant-ngp scenes).
    """
    out = np.array(c2w, dtype=np.float64)[:, :3, :4].copy()
    offset = np.asarray(world_to_scene["offset"], dtype=np.float64).reshape(3)
    out[:, :, 3] = (out[:, :, 3] - offset) * float(world_to_scene["scale"])
    return out


@dataclass(frozen=True)
class SceneFiles:
    """Every file a reader reads for one split, as the paths it opens (normalised, not resolved).

    meta: metadata the reader parses (transforms*.json, poses_bounds.npy); the ray-cache key hashes
        their contents (they are small and a pose edit keeps the size).
    data: images and depth maps, in frame order; the key hashes their resolved path, size and
        mtime_ns (reading every image just to key the cache would cost as much as decoding it).
    """

    meta: tuple[str, ...] = ()
    data: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.meta + self.data


def inside_root(root: str, folder: str, value: str, allow_outside: bool, where: str, key: str) -> str:
    """os.path.normpath(folder/value), or SceneError when it lies outside root and not allow_outside.

    value: a path a scene's metadata names (field key), relative to folder (or absolute).
    NOTE: the test is on the normalised path the reader opens (``..`` and absolute paths), not on
    symlink targets: a hostile transforms file can only write strings, while a symlink inside the
    scene folder was put there by whoever assembled it (a common way to share images between
    scenes). The ray-cache key follows symlinks either way.
    """
    p = os.path.normpath(os.path.join(folder, value))
    base = os.path.abspath(root)
    if allow_outside or os.path.commonpath([base, os.path.abspath(p)]) == base:
        return p
    raise SceneError(
        f"{where}: field '{key}' ({value!r}) points outside the scene folder {root}: {p}. Refused "
        f"because the run and its ray-cache key would silently depend on files outside the scene "
        f"folder, and a hostile transforms file could make nerf-dist read arbitrary files. Move "
        f"the file into the scene folder (a symlink placed there is fine) or, if you trust this "
        f"scene, set data.allow_outside_root=true")


@dataclass
class Scene:
    """One split of a scene.

    images: [n, H, W, 3] float32 in [0, 1], already composited over the background.
    K: [n, 3, 3] float32 pinhole intrinsics (per frame; identical rows for shared intrinsics).
    c2w: [n, 3, 4] float32 camera-to-world (OpenGL convention).
    near, far: scalar bounds of the sampling interval along unit-length ray directions
        (in NDC space when ndc is true: 0 and 1).
    distortion: [n, 4] OpenCV k1 k2 p1 p2, or None when the images are undistorted.
    depths: [n, H, W] ground-truth distance along the (unit) ray to the first surface, 0 where the
        ray hits nothing; None when unknown.
    aabb: [2, 3] axis-aligned box (min, max) that holds the scene content (fast path's grid).
    ndc: rays of this scene are converted to NDC (forward-facing LLFF scenes).
    ndc_focal, ndc_size: focal length and (H, W) used for the NDC transform (first camera).
    background: [3] background colour the images were composited over.
    files: image file path of each frame (for messages and reports).
    split: the split name ('train', 'val', 'test').
    sources: every file the reader read for this split (see :class:`SceneFiles`); what the
        ray-cache key covers.
    """

    images: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    near: float
    far: float
    aabb: torch.Tensor
    background: torch.Tensor
    files: list[str]
    split: str
    distortion: torch.Tensor | None = None
    depths: torch.Tensor | None = None
    ndc: bool = False
    ndc_focal: float = 0.0
    ndc_size: tuple[int, int] = (0, 0)
    meta: dict = field(default_factory=dict)
    sources: SceneFiles = field(default_factory=SceneFiles)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def H(self) -> int:
        return int(self.images.shape[1])

    @property
    def W(self) -> int:
        return int(self.images.shape[2])
