"""The true surfaces of the procedural demo scenes as point sets, in the files' (original) frame.

:func:`scene_truth` reads a demo folder's marker (``demo_scene.json``, written by every demo
writer; a Blender folder without one with the demo's field of view is the objects variant) and
returns its surface: the objects variant by :func:`demo_truth` (below), the unbounded and city
variants by :func:`traced_surface`: the first hits of a dense grid of rays from every training
camera, by the scene's own ray tracer (the surface those views see; denser where the cameras are
closer, unlike the area-uniform objects truth). Unbounded: the environment sphere (the sky) is
dropped and the rest kept within CAM_RADIUS of the origin (the ground reaches 200 units out).

The objects variant in detail:

The demo scene is four analytic solids (two spheres, an axis-aligned box, a capped cylinder) in
world = scene frame (the Blender reader does not normalise). :func:`demo_surface` samples their
union's boundary uniformly by area: each solid's surface is sampled in proportion to its area and
the samples inside another solid are dropped. With cameras (c2w [n, 4, 4] or [n, 3, 4]) only the
samples that at least one camera sees are kept (inside its field of view, facing it, and the
first hit of the ray from its centre, by the scene's own ray tracer): the part of the surface a
reconstruction from those views can recover (the solids' bottoms face away from every camera).
:func:`demo_truth` does that for a demo-scene folder's training cameras.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..scenes import demo

VISIBLE_TOL = 1e-3
"""A sample is the first hit of a camera's ray when the traced distance is within this of its own
(scene units)."""


def _sphere(rng, n: int, c: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return c + r * v, v


def _box(rng, n: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = hi - lo
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    face = rng.choice(6, size=n, p=np.repeat(areas, 2) / (2 * areas.sum()))
    axis, high = face // 2, face % 2 == 1
    p = lo + rng.uniform(size=(n, 3)) * size
    p[np.arange(n), axis] = np.where(high, hi[axis], lo[axis])
    nrm = np.zeros((n, 3))
    nrm[np.arange(n), axis] = np.where(high, 1.0, -1.0)
    return p, nrm


def _cylinder(rng, n: int, cyl: tuple) -> tuple[np.ndarray, np.ndarray]:
    (c, r, z0, z1) = cyl
    side, cap = 2 * math.pi * r * (z1 - z0), math.pi * r * r
    part = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
    theta = rng.uniform(0, 2 * math.pi, n)
    rad = np.where(part == 0, r, r * np.sqrt(rng.uniform(size=n)))
    z = np.where(part == 0, rng.uniform(z0, z1, n), np.where(part == 1, z0, z1))
    p = np.stack([c[0] + rad * np.cos(theta), c[1] + rad * np.sin(theta), z], 1)
    nrm = np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], 1)
    nrm[part == 1] = [0.0, 0.0, -1.0]
    nrm[part == 2] = [0.0, 0.0, 1.0]
    return p, nrm


def _inside(p: np.ndarray) -> list[np.ndarray]:
    """Per solid (sphere A, sphere B, box, cylinder): [n] bool, strictly inside it."""
    (ca, ra), (cb, rb), (lo, hi) = demo.SPHERE_A, demo.SPHERE_B, demo.BOX
    (c, r, z0, z1) = demo.CYL
    eps = 1e-9
    return [np.linalg.norm(p - ca, axis=1) < ra - eps, np.linalg.norm(p - cb, axis=1) < rb - eps,
            ((p > lo + eps) & (p < hi - eps)).all(1),
            (np.linalg.norm(p[:, :2] - c, axis=1) < r - eps) & (p[:, 2] > z0 + eps)
            & (p[:, 2] < z1 - eps)]


def _areas() -> np.ndarray:
    (_, ra), (_, rb), (lo, hi) = demo.SPHERE_A, demo.SPHERE_B, demo.BOX
    (_, r, z0, z1) = demo.CYL
    s = hi - lo
    return np.array([4 * math.pi * ra ** 2, 4 * math.pi * rb ** 2,
                     2 * (s[0] * s[1] + s[1] * s[2] + s[0] * s[2]),
                     2 * math.pi * r * (z1 - z0) + 2 * math.pi * r * r])


def visible(points: np.ndarray, normals: np.ndarray, c2w: np.ndarray,
            angle_x: float = demo.CAMERA_ANGLE_X) -> np.ndarray:
    """[n] bool: points [n, 3] (outward normals [n, 3]) seen by at least one camera c2w [k, 3|4, 4]
    (OpenGL axes, square field of view angle_x): inside its view cone, facing it, unoccluded."""
    seen = np.zeros(len(points), bool)
    half = math.tan(0.5 * angle_x)
    for cam in np.asarray(c2w, dtype=np.float64):
        o = cam[:3, 3]
        d = points - o
        dist = np.linalg.norm(d, axis=1)
        local = d @ cam[:3, :3]  # camera axes: x right, y up, -z forward
        fwd = -local[:, 2]
        ok = (~seen & (fwd > 0) & (np.abs(local[:, 0]) <= half * fwd)
              & (np.abs(local[:, 1]) <= half * fwd) & (np.einsum("ij,ij->i", d, normals) < 0))
        idx = np.flatnonzero(ok)
        if not len(idx):
            continue
        _, t = demo.trace(np.broadcast_to(o, (len(idx), 3)), d[idx] / dist[idx, None])
        seen[idx[np.abs(t - dist[idx]) <= VISIBLE_TOL]] = True
    return seen


def demo_surface(n: int = 200_000, seed: int = 0, cameras: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """About n points uniformly on the demo scene's surface (the union's boundary), scene frame.

    Returns (points [m, 3] float64, outward normals [m, 3]); m < n (samples inside another solid,
    and with cameras [k, 3|4, 4] the samples no camera sees, are dropped). Same seed, same points.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    areas = _areas()
    counts = rng.multinomial(n, areas / areas.sum())
    samplers = (lambda k: _sphere(rng, k, *demo.SPHERE_A), lambda k: _sphere(rng, k, *demo.SPHERE_B),
                lambda k: _box(rng, k, *demo.BOX), lambda k: _cylinder(rng, k, demo.CYL))
    pts, nrm = [], []
    for j, (sample, k) in enumerate(zip(samplers, counts)):
        p, q = sample(int(k))
        inside = _inside(p)
        keep = ~np.any([m for i, m in enumerate(inside) if i != j], axis=0)
        pts.append(p[keep])
        nrm.append(q[keep])
    points, normals = np.concatenate(pts), np.concatenate(nrm)
    if cameras is not None:
        keep = visible(points, normals, cameras)
        points, normals = points[keep], normals[keep]
    return points, normals


def demo_truth(root: str, n: int = 200_000, seed: int = 0, splits: tuple[str, ...] = ("train",)
               ) -> np.ndarray:
    """The surface [m, 3] of the demo scene written at root (``nerf-dist demo-scene``) that its
    splits' cameras see (:func:`demo_surface`), in the trainer's scene frame (= the files' frame:
    Blender scenes are not normalised). ValueError naming the file when root is no demo scene."""
    cams, angle = [], demo.CAMERA_ANGLE_X
    for split in splits:
        c, angle = _cameras(root, f"transforms_{split}.json")
        cams.append(c)
    if not math.isclose(angle, demo.CAMERA_ANGLE_X, rel_tol=1e-6):
        raise ValueError(f"{root}: camera_angle_x {angle} is not the demo scene's")
    return demo_surface(n, seed, np.concatenate(cams))[0]


def _cameras(root: str, name: str) -> tuple[np.ndarray, float]:
    """(c2w [k, 4, 4], camera_angle_x) of root/name (a demo writer's transforms file)."""
    path = os.path.join(root, name)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return (np.stack([np.asarray(fr["transform_matrix"], dtype=np.float64)
                          for fr in data["frames"]]), float(data["camera_angle_x"]))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a demo scene's transforms file ({e})") from e


def traced_surface(trace_fn, c2w: np.ndarray, angle_x: float, n: int) -> np.ndarray:
    """The first hits [m, 3] (m <= n) of about n rays from the cameras c2w [k, 3|4, 4] (square
    images of field of view angle_x, OpenGL axes): a side x side pixel grid per camera, traced
    by trace_fn(rays_o, rays_d) -> (rgb, t inf on a miss); misses dropped."""
    c2w = np.asarray(c2w, dtype=np.float64)
    side = max(1, int(math.sqrt(n / len(c2w))))
    focal = 0.5 * side / math.tan(0.5 * angle_x)
    uv = (np.arange(side) + 0.5 - 0.5 * side) / focal
    u, v = np.meshgrid(uv, uv)
    dirs = np.stack([u, -v, -np.ones_like(u)], -1).reshape(-1, 3)
    out = []
    for cam in c2w:
        d = dirs @ cam[:3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.ascontiguousarray(np.broadcast_to(cam[:3, 3], d.shape))
        _, t = trace_fn(o, d)
        hit = np.isfinite(t)
        out.append(o[hit] + d[hit] * t[hit, None])
    return np.concatenate(out)


def scene_variant(root: str) -> dict:
    """The demo marker of root ({"variant", "seed", ...}); a Blender folder without one whose
    camera_angle_x is the demo's is {"variant": "objects", "seed": 0}. ValueError naming root
    when it is no demo scene."""
    path = os.path.join(root, demo.MARKER)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                marker = json.load(f)
            if marker.get("variant") not in ("objects", "unbounded", "city"):
                raise ValueError(f"unknown variant {marker.get('variant')!r}")
            return marker
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a demo marker ({e})") from e
    if os.path.isfile(os.path.join(root, "transforms_train.json")):
        _, angle = _cameras(root, "transforms_train.json")
        if math.isclose(angle, demo.CAMERA_ANGLE_X, rel_tol=1e-6):
            return {"variant": "objects", "seed": 0}
    raise ValueError(f"{root} is not a demo scene (no {demo.MARKER}): its true surface is unknown")


def scene_truth(root: str, n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, dict]:
    """(points [m, 3] of the true surface the training cameras see, in the files' frame; the
    marker) of the demo scene at root (module docstring). seed: of the objects sampling."""
    from ..scenes import demo_city, demo_unbounded  # NOTE: lazy: only for those variants
    marker = scene_variant(root)
    variant = marker["variant"]
    if variant == "objects":
        return demo_truth(root, n, seed), marker
    c2w, angle = _cameras(root, "transforms_train.json")
    if variant == "city":
        trace = demo_city.make_trace(int(marker.get("grid", 5)), int(marker.get("seed", 0)))
        return traced_surface(trace, c2w, angle, n), marker
    pts = traced_surface(demo_unbounded.trace, c2w, angle, n)
    near = np.linalg.norm(pts, axis=1) < demo_unbounded.ENV_RADIUS - 1.0
    box = np.abs(pts).max(1) <= demo_unbounded.CAM_RADIUS
    return pts[near & box], marker


__all__ = ["VISIBLE_TOL", "demo_surface", "demo_truth", "scene_truth", "scene_variant",
           "traced_surface", "visible"]
