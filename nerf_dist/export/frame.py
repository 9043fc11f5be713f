"""The scene's original frame: undo the normalisation a reader applied (``--frame original``).

Every reader records in its scene meta how the input files' world frame maps to the trainer's
scene frame; :func:`original_from_meta` inverts it to a 4x4 similarity M (x_original = M
x_scene, M = [s R | t] with R a rotation, s > 0):

- blender: not normalised, M = identity;
- ngp: meta['world_to_scene'] {offset, scale} (x_scene = (x - offset) scale);
- colmap: meta['transform'] (4x4, x_scene = T x_world);
- llff: meta['transform'] (4x4: the 1 / (0.75 min bound) rescale, then the average pose
  recentring). NDC is applied to rays only, so the scene frame is the recentred world.
"""
from __future__ import annotations

import numpy as np


def original_from_meta(meta: dict) -> np.ndarray:
    """[4, 4] float64 scene -> original frame (module docstring); ValueError for a scene whose
    reader records no map."""
    fmt = meta.get("format", "?")
    if "world_to_scene" in meta:
        w2s = meta["world_to_scene"]
        m = np.eye(4)
        m[:3, :3] /= float(w2s["scale"])
        m[:3, 3] = np.asarray(w2s["offset"], dtype=np.float64).reshape(3)
        return m
    if "transform" in meta:
        return np.linalg.inv(np.asarray(meta["transform"], dtype=np.float64).reshape(4, 4))
    if fmt == "blender":
        return np.eye(4)
    raise ValueError(f"the {fmt} scene reader records no map from its files' frame to the scene "
                     f"frame: use --frame scene")


def scene_meta(cfg) -> dict:
    """The train split's scene meta of a run's config (metadata only, no image decoded)."""
    from ..scenes import open_scene  # NOTE: lazy: the readers
    return open_scene(cfg.data, "train").meta


def scene_to_original(loaded) -> np.ndarray:
    """[4, 4] scene -> original frame of a loaded run (:class:`nerf_dist.run_dir.Loaded`): the
    scene is re-read (metadata only) from the run's data.root."""
    return original_from_meta(scene_meta(loaded.cfg))


def scale_of(m: np.ndarray) -> float:
    """s > 0 of a similarity M = [s R | t] (R orthogonal; a reflection, det R = -1, keeps s
    positive, so normals moved by R M / s stay the inverse transpose's)."""
    return float(np.cbrt(abs(np.linalg.det(np.asarray(m, dtype=np.float64)[:3, :3]))))


def move_points(m: np.ndarray, points: np.ndarray, normals: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """points [n, 3] (float64) and unit normals [n, 3] | None through the similarity m [4, 4]."""
    m = np.asarray(m, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]
    if normals is None:
        return p, None
    n = np.asarray(normals, dtype=np.float64) @ m[:3, :3].T / scale_of(m)
    return p, n


def move_poses(m: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world c2w [n, 3|4, 4] through the similarity m -> [n, 4, 4] float64 with an
    orthonormal rotation (the scale moves the centres only)."""
    m = np.asarray(m, dtype=np.float64)
    c = np.asarray(c2w, dtype=np.float64)
    out = np.tile(np.eye(4), (len(c), 1, 1))
    out[:, :3, :3] = m[:3, :3][None] @ c[:, :3, :3] / scale_of(m)
    out[:, :3, 3] = c[:, :3, 3] @ m[:3, :3].T + m[:3, 3]
    return out


__all__ = ["move_points", "move_poses", "original_from_meta", "scale_of", "scene_meta",
           "scene_to_original"]
