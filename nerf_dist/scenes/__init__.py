"""Scene readers: one per format, each returning a :class:`Scene` for one split.

>>> scene = load_scene(DataConfig(root="data/lego", downscale=2), "train")
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import SCENE_FORMATS, DataConfig
from .base import Scene, SceneError, SceneFiles
from .blender import index_blender, open_blender
from .colmap import colmap_points, find_model, index_colmap, open_colmap
from .lazy import LazyScene
from .llff import index_llff, open_llff
from .ngp import index_ngp, open_ngp

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Reader:
    """One scene format: how its folder is recognised and how a split of it is read.

    name: the data.format value; looks_for: what :func:`detect_format` checks (for messages);
    detect(root) -> bool: whether a folder holds this format; index(data_cfg, split): the
    metadata only, an object whose ``.sources`` is a :class:`SceneFiles` (no image decoded);
    open(data_cfg, split) -> :class:`LazyScene` (images decoded on demand); points(data_cfg):
    the scene's sparse 3D points [n, 3] (numpy, scene frame) for formats that have them.
    """

    name: str
    looks_for: str
    detect: Callable[[str], bool]
    index: Callable[[DataConfig, str], Any]
    open: Callable[[DataConfig, str], LazyScene]
    points: Callable[[DataConfig], Any] | None = None


def _has(marker: str) -> Callable[[str], bool]:
    return lambda root: os.path.isfile(os.path.join(root, marker))


# NOTE: the order is the order detect_format tries them. The COLMAP model comes last: a folder
# prepared by COLMAP and then converted (a transforms.json next to sparse/) was converted on
# purpose, so the conversion wins. A new format is a module with index_*/open_* and a row here.
READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("blender", "transforms_train.json", _has("transforms_train.json"), index_blender,
           open_blender),
    Reader("llff", "poses_bounds.npy", _has("poses_bounds.npy"), index_llff, open_llff),
    Reader("ngp", "transforms.json", _has("transforms.json"), index_ngp, open_ngp),
    Reader("colmap", "sparse/0/cameras.bin (or .txt)", lambda root: find_model(root) is not None,
           index_colmap, open_colmap, points=colmap_points),
)}
# NOTE: config validates data.format against SCENE_FORMATS without importing the readers.
if tuple(READERS) != SCENE_FORMATS:  # pragma: no cover - a reader added in one place only
    raise ImportError(f"config.SCENE_FORMATS {SCENE_FORMATS} must list READERS {tuple(READERS)}")


def detect_format(root: str) -> str:
    """The first reader of :data:`READERS` whose folder root is: 'blender' if
    transforms_train.json exists in root, 'llff' if poses_bounds.npy, 'ngp' if transforms.json,
    'colmap' if sparse/0, sparse/ or root itself holds cameras.bin or .txt; SceneError naming the
    folder and the files looked for otherwise."""
    root = str(root)
    if not os.path.isdir(root):
        raise SceneError(f"scene folder not found: {root}")
    for r in READERS.values():
        if r.detect(root):
            return r.name
    looked = ", ".join(r.looks_for for r in READERS.values())
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
    if fmt not in READERS:
        raise SceneError(f"unknown scene format {fmt!r} for {data_cfg.root}")
    return fmt


@contextlib.contextmanager
def _format_hint(data_cfg: DataConfig):
    """A SceneError of a pinned data.format's reader, on a folder without that format's marker
    file where another format's is found, says which format the folder looks like.

    NOTE: after the reader failed, not before: a reader may read more than its marker (ngp reads
    transforms_{split}.json too). A COLMAP folder from `nerf-dist prepare` under data.format=ngp
    said only "transforms file not found"."""
    try:
        yield
    except SceneError as e:
        root, fmt = str(data_cfg.root), data_cfg.format
        if fmt == "auto" or not os.path.isdir(root) or READERS[fmt].detect(root):
            raise
        other = next((r for r in READERS.values() if r.detect(root)), None)
        if other is None:
            raise
        raise SceneError(f"{e} (data.format={fmt}, but {root} has no {READERS[fmt].looks_for}: "
                         f"it looks like a {other.name} folder ({other.looks_for}); set "
                         f"data.format={other.name} or auto)") from e


def reader(data_cfg: DataConfig, split: str) -> Reader:
    """The :class:`Reader` of data_cfg's scene (SceneError for an unknown split or format)."""
    if split not in SPLITS:
        raise SceneError(f"unknown split {split!r} for scene {data_cfg.root}: expected one of {SPLITS}")
    return READERS[scene_format(data_cfg)]


def scene_sources(data_cfg: DataConfig, split: str) -> SceneFiles:
    """Every file :func:`load_scene` reads for split, found without decoding an image (parses
    only the metadata); equal to ``load_scene(data_cfg, split).sources``. SceneError as
    load_scene would raise it (missing files, a file_path outside data.root, ...)."""
    with _format_hint(data_cfg):
        return reader(data_cfg, split).index(data_cfg, split).sources


def open_scene(data_cfg: DataConfig, split: str) -> LazyScene:
    """Like :func:`load_scene` but without decoding the images: a :class:`LazyScene` whose
    frames are decoded one at a time (:meth:`LazyScene.image`) or all at once
    (:meth:`LazyScene.load`, which is what load_scene returns). The image size comes from the
    first file's header."""
    with _format_hint(data_cfg):
        return reader(data_cfg, split).open(data_cfg, split)


def sparse_points(data_cfg: DataConfig):
    """The scene's sparse 3D points [n, 3] (numpy, scene frame) when its format has them
    (COLMAP's points3D), else None. Used to partition space (model.partitions)."""
    points = READERS[scene_format(data_cfg)].points
    return points(data_cfg) if points is not None else None


def load_scene(data_cfg: DataConfig, split: str) -> Scene:
    """Read split ('train', 'val' or 'test') of the scene at data_cfg.root.

    data_cfg.format selects the reader ('auto' = :func:`detect_format`). See
    :func:`nerf_dist.scenes.blender.load_blender`, :func:`nerf_dist.scenes.llff.load_llff`,
    :func:`nerf_dist.scenes.ngp.load_ngp` and :func:`nerf_dist.scenes.colmap.load_colmap` for
    what each returns. Scene.sources lists every file read (the ray-cache key covers exactly
    those).
    """
    return open_scene(data_cfg, split).load()


__all__ = ["READERS", "Reader", "Scene", "SceneError", "SceneFiles", "LazyScene", "SPLITS",
           "load_scene", "open_scene", "reader", "scene_sources", "scene_format", "sparse_points",
           "detect_format"]
