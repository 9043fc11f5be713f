"""The cache key: which scene files and settings a pixel cache was built from.

The cache folder is named by the first 16 hex digits of :func:`cache_key`, a sha256 over the
format version, every setting that changes pixels or cameras, and every file the scene reader
reads (resolved path, size and mtime_ns of images; contents of metadata).
"""
from __future__ import annotations

import hashlib
import json
import os

from ..config import DataConfig
from ..scenes import scene_format, scene_sources
from ..scenes.base import SceneError
from .layout import CACHE_VERSION


def _file_entry(path: str, real_root: str, content: bool) -> list:
    """[label, size, mtime_ns or sha256 of the contents] of one scene file.

    label: the resolved path (symlinks followed) relative to the resolved data.root, or absolute
    when it lies outside (so moving a whole scene folder keeps its cache, and repointing a
    symlink does not).
    """
    real = os.path.realpath(path)
    rel = os.path.relpath(real, real_root)
    label = rel.replace(os.sep, "/") if rel != ".." and not rel.startswith(".." + os.sep) else real
    try:
        st = os.stat(real)
        if content:
            with open(real, "rb") as f:
                return [label, st.st_size, hashlib.sha256(f.read()).hexdigest()]
    except OSError as e:
        raise SceneError(f"cannot key the ray cache: cannot read scene file {path}: {e}") from e
    return [label, st.st_size, st.st_mtime_ns]


def key_inputs(data_cfg: DataConfig, split: str = "train") -> dict:
    """What :func:`cache_key` hashes: the settings that change rays, the reader's format, and one
    entry per file the scene reader reads for split (``meta``: contents; ``data``: size and
    mtime_ns), in reading order. Parses only metadata (no image is decoded).

    NOTE: data.allow_outside_root is not a setting here: it only admits files, and those enter the
    key through the file list. Nor is data.cache_memory: it changes how a cache is built and
    streamed, not what it holds.
    """
    return key_inputs_of(data_cfg, split, scene_sources(data_cfg, split))


def key_inputs_of(data_cfg: DataConfig, split: str, files) -> dict:
    """key_inputs for the SceneFiles files."""
    real_root = os.path.realpath(str(data_cfg.root))
    fmt = scene_format(data_cfg)
    # NOTE: only COLMAP scenes are oriented by a setting; other formats keep their old keys.
    extra = {"orient": data_cfg.orient} if fmt == "colmap" else {}
    return {"version": CACHE_VERSION, "format": fmt, **extra,
            "downscale": data_cfg.downscale, "white_background": data_cfg.white_background,
            "skip_missing": data_cfg.skip_missing, "llff_hold": data_cfg.llff_hold,
            "ndc": str(data_cfg.ndc).lower(), "cache_shards": data_cfg.cache_shards, "split": split,
            "meta": [_file_entry(f, real_root, True) for f in files.meta],
            "data": [_file_entry(f, real_root, False) for f in files.data]}


def cache_key(data_cfg: DataConfig, split: str = "train") -> str:
    """sha256 (hex) identifying the pixels a scene + settings produce (see :func:`key_inputs`).

    SceneError (naming the file) when the scene cannot be indexed: missing folder or files, a
    file_path outside data.root without data.allow_outside_root, broken metadata.
    """
    return digest(key_inputs(data_cfg, split))


def digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
