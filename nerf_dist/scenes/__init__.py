"""Scene readers: one per format, each returning a :class:`Scene` for one split.

>>> scene = load_scene(DataConfig(root="data/lego", downscale=2), "train")
"""
from __future__ import annotations

import os

from ..config import DataConfig
from .base import Scene, SceneError, SceneFiles
from .blender import index_blender, load_blender, open_blender
from .colmap import colmap_points, find_model, index_colmap, load_colmap, open_colmap
from .lazy import LazyScene
from .llff import index_llff, load_llff, open_llff
from .ngp import index_ngp, load_ngp, open_ngp

SPLITS = ("train", "val", "test")

# (format, file that identifies it), checked in this order.
_MARKERS = (("blender", "transforms_train.json"), ("llff", "poses_bounds.npy"),
            ("ngp", "transforms.json"))


def detect_format(root: str) -> str:
    """'blender' if transforms_train.json exists in root, 'llff' if poses_bounds.npy, 'ngp' if
    transforms.json, 'colmap' if sparse/0, sparse/ or root itself holds cameras.bin or .txt;
    SceneError naming the folder and the files looked for otherwise.

    NOTE: the COLMAP model comes last: a folder prepared by COLMAP and then converted (with a
    transforms.json next to sparse/) was converted on purpose, so the conversion wins.
    """
    root = str(root)
    if not os.path.isdir(root):
        raise SceneError(f"scene folder not found: {root}")
    for fmt, marker in _MARKERS:
        if os.path.isfile(os.path.join(root, marker)):
            return fmt
    if find_model(root) is not None:
        return "colmap"
    looked = ", ".join(m for _, m in _MARKERS) + ", sparse/0/cameras.bin (or .txt)"
    raise SceneError(f"cannot detect the scene format of {root}: none of {looked} found "
                     f"(set data.format explicitly if the layout is unusual)")


def scene_format(data_cfg: DataConfig) -> str:
    """The reader data_cfg selects: data_cfg.format, or :func:`detect_format` for 'auto'."""
    if not os.path.isdir(str(data_cfg.root)):
        raise SceneError(f"scene folder not found: {data_cfg.root}")
    fmt = data_cfg.format
    if fmt == "auto":
        # NOTE: data.colmap_dir names a COLMAP model, whatever else the folder holds.
        fmt = "colmap" if data_cfg.colmap_dir else detect_format(data_cfg.root)
    if fmt not in ("blender", "llff", "ngp", "colmap"):
        raise SceneError(f"unknown scene format {fmt!r} for {data_cfg.root}")
    return fmt


def _check_split(data_cfg: DataConfig, split: str) -> None:
    if split not in SPLITS:
        raise SceneError(f"unknown split {split!r} for scene {data_cfg.root}: expected one of {SPLITS}")


def scene_sources(data_cfg: DataConfig, split: str) -> SceneFiles:
    """Every file :func:`load_scene` reads for split, found without decoding an image (parses
    only the metadata); equal to ``load_scene(data_cfg, split).sources``. SceneError as
    load_scene would raise it (missing files, a file_path outside data.root, ...)."""
    _check_split(data_cfg, split)
    fmt = scene_format(data_cfg)
    if fmt == "blender":
        return index_blender(data_cfg, split).sources
    if fmt == "llff":
        return index_llff(data_cfg, split).sources
    if fmt == "colmap":
        return index_colmap(data_cfg, split).sources
    return index_ngp(data_cfg, split).sources


def open_scene(data_cfg: DataConfig, split: str) -> LazyScene:
    """Like :func:`load_scene` but without decoding the images: a :class:`LazyScene` whose
    frames are decoded one at a time (:meth:`LazyScene.image`) or all at once
    (:meth:`LazyScene.load`, which is what load_scene returns). The image size comes from the
    first file's header."""
    _check_split(data_cfg, split)
    fmt = scene_format(data_cfg)
    if fmt == "blender":
        return open_blender(data_cfg, split)
    if fmt == "llff":
        return open_llff(data_cfg, split)
    if fmt == "colmap":
        return open_colmap(data_cfg, split)
    return open_ngp(data_cfg, split)


def sparse_points(data_cfg: DataConfig):
    """The scene's sparse 3D points [n, 3] (numpy, scene frame) when its format has them
    (COLMAP's points3D), else None. Used to partition space (model.partitions)."""
    return colmap_points(data_cfg) if scene_format(data_cfg) == "colmap" else None


def load_scene(data_cfg: DataConfig, split: str) -> Scene:
    """Read split ('train', 'val' or 'test') of the scene at data_cfg.root.

    data_cfg.format selects the reader ('auto' = :func:`detect_format`). See
    :func:`nerf_dist.scenes.blender.load_blender`, :func:`nerf_dist.scenes.llff.load_llff` and
    :func:`nerf_dist.scenes.ngp.load_ngp` and :func:`nerf_dist.scenes.colmap.load_colmap` for what
    each returns. Scene.sources lists every file
    read (the ray-cache key covers exactly those).
    """
    return open_scene(data_cfg, split).load()


__all__ = ["Scene", "SceneError", "SceneFiles", "LazyScene", "load_scene", "open_scene", "scene_sources", "scene_format", "sparse_points",
           "detect_format"]
