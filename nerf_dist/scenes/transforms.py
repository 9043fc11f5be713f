"""Transforms JSON files (Blender's ``transforms_{split}.json``, instant-ngp's and nerfstudio's
``transforms.json``): parsing, required fields, the frame list and each frame's pose, with
errors that name the file, the frame and the field. Shared by :mod:`.blender` and :mod:`.ngp`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .base import SceneError


def read_json(path: str) -> dict:
    """Parse a transforms JSON file; SceneError names the file (and line/column when invalid)."""
    if not os.path.isfile(path):
        raise SceneError(f"transforms file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SceneError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise SceneError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def require(obj: dict, key: str, where: str) -> Any:
    """obj[key], or SceneError naming the missing field and where it was expected."""
    if key not in obj:
        raise SceneError(f"{where}: missing field '{key}'")
    return obj[key]


def get_frames(data: dict, path: str) -> list[dict]:
    """The ``frames`` list of a transforms file (each entry a JSON object)."""
    frames = require(data, "frames", path)
    if not isinstance(frames, list):
        raise SceneError(f"{path}: field 'frames' must be a list, got {type(frames).__name__}")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise SceneError(f"{path}: frame {i} must be a JSON object, got {type(fr).__name__}")
    return frames


def frame_pose(frame: dict, i: int, path: str) -> np.ndarray:
    """The frame's ``transform_matrix`` as c2w: [3, 4] float64; SceneError names file + frame."""
    where = f"{path}: frame {i}"
    raw = require(frame, "transform_matrix", where)
    try:
        m = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SceneError(f"{where}: field 'transform_matrix' is not a numeric matrix: {e}") from e
    if m.shape not in ((4, 4), (3, 4)):
        raise SceneError(f"{where}: field 'transform_matrix' must be 4x4 (or 3x4), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise SceneError(f"{where}: field 'transform_matrix' has non-finite values (NaN/inf)")
    return m[:3, :4]
