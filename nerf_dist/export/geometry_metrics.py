"""Geometry against ground truth: Chamfer distance and precision / recall / F-score at a threshold.

Both sets are point sets [n, 3] in one frame (a mesh is measured through its vertices or points
sampled on it). Definitions (those of the Tanks and Temples benchmark):

- accuracy  = mean over pred of the distance to the nearest truth point;
- completeness = mean over truth of the distance to the nearest pred point;
- chamfer = (accuracy + completeness) / 2 (the symmetric mean nearest-neighbour distance);
- precision(tau) = fraction of pred within tau of truth; recall(tau) = fraction of truth within
  tau of pred; fscore = 2 P R / (P + R) (0 when both are 0).
"""
from __future__ import annotations

import numpy as np

from .frame import move_points, original_from_meta, scale_of
from .truth import scene_truth


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a)] distance of each point of a to its nearest point of b."""
    from scipy.spatial import cKDTree  # NOTE: lazy: scipy is only needed to measure
    return cKDTree(b).query(a, k=1)[0]


def _check(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or not len(x):
        raise ValueError(f"{name} must be a non-empty [n, 3] point set, got shape {x.shape}")
    return x


def geometry_scores(pred, truth, tau: float) -> dict[str, float]:
    """pred [n, 3], truth [m, 3], tau > 0 -> {accuracy, completeness, chamfer, precision, recall,
    fscore, tau, n_pred, n_truth} (module docstring)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    pred, truth = _check("pred", pred), _check("truth", truth)
    d_pt, d_tp = _nearest(pred, truth), _nearest(truth, pred)
    p, r = float((d_pt <= tau).mean()), float((d_tp <= tau).mean())
    return {"accuracy": float(d_pt.mean()), "completeness": float(d_tp.mean()),
            "chamfer": 0.5 * float(d_pt.mean() + d_tp.mean()), "precision": p, "recall": r,
            "fscore": 2 * p * r / (p + r) if p + r > 0 else 0.0, "tau": float(tau),
            "n_pred": len(pred), "n_truth": len(truth)}


def chamfer(pred, truth) -> float:
    """Symmetric mean nearest-neighbour distance of pred [n, 3] and truth [m, 3]."""
    pred, truth = _check("pred", pred), _check("truth", truth)
    return 0.5 * float(_nearest(pred, truth).mean() + _nearest(truth, pred).mean())


def fscore(pred, truth, tau: float) -> tuple[float, float, float]:
    """(precision, recall, fscore) of pred [n, 3] against truth [m, 3] at distance tau."""
    s = geometry_scores(pred, truth, tau)
    return s["precision"], s["recall"], s["fscore"]


def surface_points(verts, faces, n: int, seed: int = 0) -> np.ndarray:
    """n points [n, 3] float64 drawn uniformly (by area) on the triangles faces [f, 3] of verts
    [v, 3] (trimesh.sample.sample_surface): a mesh measured as a point set (``--truth`` of the
    mesh export)."""
    import trimesh  # NOTE: lazy: the `export` extra
    if not len(faces) or n < 1:
        return np.zeros((0, 3))
    mesh = trimesh.Trimesh(np.asarray(verts, np.float64), np.asarray(faces, np.int64),
                           process=False)
    return np.asarray(trimesh.sample.sample_surface(mesh, int(n), seed=seed)[0], np.float64)


def truth_text(t: dict) -> str:
    """The summary line of :func:`against_truth`'s scores t, as the exporters print it."""
    return (f"against the true surface ({t['variant']} demo, {t['n_truth']} points in the box, "
            f"tau {t['tau_original']:g}, {t['n_pred']} exported points): Chamfer "
            f"{t['chamfer']:.4f} (accuracy {t['accuracy']:.4f}, completeness "
            f"{t['completeness']:.4f}), precision {t['precision']:.3f}, recall "
            f"{t['recall']:.3f}, F-score {t['fscore']:.3f}")


TAU = 0.05
"""The default threshold (in the demo scenes' world units): about one pixel's footprint on the
objects at the demo's 64x64 training resolution (camera 4 units away, focal 89 pixels), 1/24
of the objects' radius 1.2."""


def against_truth(points, root: str, meta: dict, frame: str = "original", tau: float = TAU,
                  n_truth: int = 200_000, box=None) -> dict:
    """:func:`geometry_scores` of points [n, 3] (an export in `frame`: 'original' or 'scene')
    against the true surface of the demo scene at root (:func:`.truth.scene_truth`, in the files'
    frame; moved into the scene frame by meta's map when frame is 'scene', with tau scaled
    alike). tau: in the files' units. box: [2, 3] (min, max) in the scene frame, the region the
    export covered, or None: the truth is cropped to it (what lies outside was never asked
    for). Adds variant, frame, tau_original and truth_cropped (truth points outside the box).
    ValueError for a scene that is no demo scene."""
    truth, marker = scene_truth(root, n_truth)
    to_original = original_from_meta(meta)
    to_scene = np.linalg.inv(to_original)
    n_all = len(truth)
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(2, 3)
        ts = move_points(to_scene, truth)[0]
        truth = truth[((ts >= b[0]) & (ts <= b[1])).all(1)]
    t = tau
    if frame == "scene":
        truth = move_points(to_scene, truth)[0]
        t = tau * scale_of(to_scene)
    s = geometry_scores(points, truth, t)
    s.update(variant=marker["variant"], frame=frame, tau_original=float(tau),
             truth_cropped=n_all - len(truth))
    return s


__all__ = ["TAU", "against_truth", "chamfer", "fscore", "geometry_scores", "surface_points",
           "truth_text"]
