"""A small procedural scene written in the Blender layout, with exact ground-truth depth.

Four textured solids (two spheres, an axis-aligned box, a capped vertical cylinder), all inside a
radius of 1.2 around the origin (world z is up), Lambertian-shaded with one fixed light plus
ambient (view independent, so a NeRF can fit it exactly). Pixels are rendered by exact analytic
ray intersection with s x s supersampling: alpha = fraction of sub-rays that hit, colour = mean
of the hits (straight alpha), depth = distance along the unit-length pixel-centre ray (0 =
background). Cameras sit on a sphere of radius 4 looking at the origin.
"""
from __future__ import annotations

import json
import math
import os

import imageio.v3 as iio
import numpy as np

CAMERA_ANGLE_X = 0.6911112070083618  # lego's horizontal field of view
RADIUS = 4.0
AMBIENT = 0.3
LIGHT = np.array([0.5, -0.4, 0.75]) / np.linalg.norm([0.5, -0.4, 0.75])
_GOLDEN = math.pi * (3.0 - math.sqrt(5.0))
_EPS = 1e-9
MARKER = "demo_scene.json"
"""What every demo writer leaves in its folder: {"variant", "seed", ...}, the parameters its true
surface is recomputed from (nerf_dist.export.truth); no reader reads it."""

# Primitive parameters (world units).
SPHERE_A = (np.array([0.0, 0.0, 0.15]), 0.55)
SPHERE_B = (np.array([0.45, 0.5, -0.3]), 0.25)
BOX = (np.array([0.3, -0.75, -0.55]), np.array([0.7, -0.35, -0.05]))
CYL = (np.array([-0.5, 0.45]), 0.28, -0.55, 0.25)  # axis (x, y), radius, z_min, z_max


# ----------------------------------------------------------------------------- intersections
# Each takes rays_o, rays_d: [n, 3] (unit d) and returns t: [n] (inf on miss), normal: [n, 3].

def _sphere(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    oc = o - c
    b = np.einsum("ij,ij->i", oc, d)
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
    p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
    return t, (p - c) / r


def _box(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (lo - o) / dd, (hi - o) / dd
    tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = np.argmax(tn, axis=1)
    t_in, t_out = tn.max(1), tf.min(1)
    t = np.where((t_out >= t_in) & (t_in > _EPS), t_in, np.inf)
    n = np.zeros_like(o)
    n[np.arange(len(o)), axis] = -np.sign(dd[np.arange(len(o)), axis])
    return t, n


def _cylinder(o: np.ndarray, d: np.ndarray, cyl: tuple = CYL) -> tuple[np.ndarray, np.ndarray]:
    """A capped vertical cylinder cyl = (axis (x, y), radius, z_min, z_max)."""
    (c, r, z0, z1) = cyl
    ox, dx = o[:, :2] - c, d[:, :2]
    a = np.maximum(np.einsum("ij,ij->i", dx, dx), 1e-18)
    b = np.einsum("ij,ij->i", ox, dx)
    disc = b * b - a * (np.einsum("ij,ij->i", ox, ox) - r * r)
    ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    zs = o[:, 2] + ts * d[:, 2]
    ts = np.where((disc >= 0) & (ts > _EPS) & (zs >= z0) & (zs <= z1), ts, np.inf)
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    caps = []
    for zc in (z0, z1):
        tc = (zc - o[:, 2]) / dz
        q = ox + tc[:, None] * dx
        caps.append(np.where((tc > _EPS) & (np.einsum("ij,ij->i", q, q) <= r * r), tc, np.inf))
    t = np.minimum(ts, np.minimum(*caps))
    p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
    n = np.zeros_like(o)
    n[:, :2] = (p[:, :2] - c) / r
    n[t == caps[0]] = [0.0, 0.0, -1.0]
    n[t == caps[1]] = [0.0, 0.0, 1.0]
    return t, n


# ----------------------------------------------------------------------------- textures
# Each maps hit points p: [n, 3] to albedo [n, 3]; smooth, low-frequency patterns.

def _mix(a, b, s: np.ndarray) -> np.ndarray:
    return np.asarray(a)[None] * (1.0 - s[:, None]) + np.asarray(b)[None] * s[:, None]


def _tex_sphere_a(p: np.ndarray) -> np.ndarray:
    q = (p - SPHERE_A[0]) / SPHERE_A[1]
    lon, lat = np.arctan2(q[:, 1], q[:, 0]), np.arcsin(np.clip(q[:, 2], -1, 1))
    return np.stack([0.55 + 0.35 * np.cos(2 * lon),
                     0.5 + 0.35 * np.sin(3 * lat + 0.5),
                     0.5 + 0.35 * np.cos(2 * lon + 2 * lat + 1.0)], axis=1)


def _tex_sphere_b(p: np.ndarray) -> np.ndarray:
    s = np.clip((p[:, 2] - SPHERE_B[0][2]) / SPHERE_B[1] * 0.5 + 0.5, 0, 1)
    return _mix([0.75, 0.15, 0.6], [0.95, 0.9, 0.85], s)


def _tex_box(p: np.ndarray) -> np.ndarray:
    s = 0.5 + 0.5 * np.sin(2 * math.pi * p[:, 2] / 0.25)
    return _mix([0.85, 0.2, 0.12], [0.95, 0.85, 0.55], s)


def _tex_cylinder(p: np.ndarray) -> np.ndarray:
    c = CYL[0]
    theta = np.arctan2(p[:, 1] - c[1], p[:, 0] - c[0])
    s = 0.5 + 0.5 * np.sin(3 * theta) * np.sin(2 * math.pi * p[:, 2] / 0.4)
    return _mix([0.1, 0.3, 0.85], [0.95, 0.85, 0.1], s)


_OBJECTS = (
    (lambda o, d: _sphere(o, d, *SPHERE_A), _tex_sphere_a),
    (lambda o, d: _sphere(o, d, *SPHERE_B), _tex_sphere_b),
    (lambda o, d: _box(o, d, *BOX), _tex_box),
    (_cylinder, _tex_cylinder),
)


def trace(rays_o: np.ndarray, rays_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shade rays against the scene. rays_o, rays_d: [n, 3] (unit d).

    Returns (rgb: [n, 3] in [0, 1] (0 on miss), t: [n] distance to the first surface, inf on miss).
    """
    n = rays_o.shape[0]
    t_best = np.full(n, np.inf)
    rgb = np.zeros((n, 3))
    for intersect, texture in _OBJECTS:
        t, normal = intersect(rays_o, rays_d)
        m = t < t_best
        if not m.any():
            continue
        t_best[m] = t[m]
        p = rays_o[m] + rays_d[m] * t[m, None]
        lambert = np.maximum(normal[m] @ LIGHT, 0.0)
        rgb[m] = texture(p) * (AMBIENT + (1.0 - AMBIENT) * lambert)[:, None]
    return np.clip(rgb, 0.0, 1.0), t_best


# ----------------------------------------------------------------------------- cameras

def look_at(elevation: float, azimuth: float, radius: float = RADIUS) -> np.ndarray:
    """c2w [4, 4] (OpenGL: x right, y up, looking down -z) of a camera on a sphere around the
    origin at the given elevation/azimuth (radians, world z up), looking at the origin."""
    pos = radius * np.array([math.cos(elevation) * math.cos(azimuth),
                             math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    z = pos / np.linalg.norm(pos)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, pos
    return m


def camera_poses(views: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per split a list of c2w [4, 4]: train = golden-angle spiral with elevations 15..60 deg
    (uniform in sin), val = 4 and test = 8 views at other azimuths. seed turns the whole rig."""
    rot = float(np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi))
    s0, s1 = math.sin(math.radians(15)), math.sin(math.radians(60))
    train = [look_at(math.asin(s0 + (s1 - s0) * (i + 0.5) / views), rot + i * _GOLDEN)
             for i in range(views)]
    val = [look_at(math.radians(e), rot + math.pi / 4 + k * math.pi / 2 + 0.1)
           for k, e in enumerate((25, 40, 55, 30))]
    test = [look_at(math.radians(25 if k % 2 == 0 else 45), rot + (k + 0.3) * math.pi / 4)
            for k in range(8)]
    return {"train": train, "val": val, "test": test}


def render_view(c2w: np.ndarray, resolution: int, focal: float,
                supersample: int = 3, trace_fn=None) -> tuple[np.ndarray, np.ndarray]:
    """Render one square view. c2w: [4, 4] (or [3, 4]); trace_fn: a :func:`trace` of another scene
    (rgb 0 and t inf on a miss), default this one's.

    Returns (rgba: [H, W, 4] float in [0, 1], straight alpha; depth: [H, W] distance along the
    unit pixel-centre ray, 0 where it misses). supersample must be odd so that the centre
    sub-ray is the pixel-centre ray (i + 0.5, j + 0.5).
    """
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError(f"supersample must be odd, got {supersample}")
    H = W = resolution
    s = supersample
    sub = (np.arange(s) + 0.5) / s
    u = (np.arange(W)[:, None] + sub[None]).reshape(-1)  # [W * s]
    v = (np.arange(H)[:, None] + sub[None]).reshape(-1)  # [H * s]
    uu, vv = np.meshgrid(u, v)  # [H * s, W * s]
    dirs = np.stack([(uu - W / 2.0) / focal, -(vv - H / 2.0) / focal, -np.ones_like(uu)], -1)
    dirs = dirs.reshape(-1, 3) @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    rgb, t = (trace_fn or trace)(origins, dirs)
    hit = np.isfinite(t).reshape(H, s, W, s)
    rgb = rgb.reshape(H, s, W, s, 3)
    cnt = hit.sum(axis=(1, 3))
    alpha = cnt / float(s * s)
    colour = rgb.sum(axis=(1, 3)) / np.maximum(cnt, 1)[..., None]  # rgb is 0 on misses
    tc = t.reshape(H, s, W, s)[:, s // 2, :, s // 2]
    depth = np.where(np.isfinite(tc), tc, 0.0)
    return np.concatenate([colour, alpha[..., None]], -1), depth.astype(np.float32)


def write_demo_scene(out_dir: str, resolution: int = 64, views: int = 40, seed: int = 0,
                     supersample: int = 3) -> dict:
    """Write the demo scene as a Blender-format dataset under out_dir.

    Writes transforms_{train,val,test}.json (camera_angle_x, frames with file_path './split/r_i',
    transform_matrix [4, 4], depth_file './split/r_i_depth.npy'), RGBA 8-bit PNGs and float32
    [H, W] depth maps. Same arguments give the same bytes. Returns a summary dict: root,
    resolution, focal, camera_angle_x, near, far and per-split frame counts.
    """
    if resolution < 1 or views < 1:
        raise ValueError(f"resolution and views must be >= 1, got {resolution}, {views}")
    info = write_blender_views(out_dir, camera_poses(views, seed), resolution, supersample)
    write_marker(out_dir, "objects", seed=seed, views=views, resolution=resolution)
    return {**info, "near": 2.0, "far": 6.0}


def write_marker(out_dir: str, variant: str, **params) -> None:
    """OUT_DIR/demo_scene.json (:data:`MARKER`): {"variant": variant, **params}."""
    with open(os.path.join(str(out_dir), MARKER), "w", encoding="utf-8") as f:
        json.dump({"variant": variant, **params}, f, indent=2)


def write_blender_views(out_dir: str, poses: dict[str, list[np.ndarray]], resolution: int,
                        supersample: int = 3, trace_fn=None) -> dict:
    """Render poses (per split a list of c2w [4, 4]) with trace_fn (default this scene's) and write
    them in the Blender layout (see :func:`write_demo_scene`). Returns root, resolution, focal,
    camera_angle_x and per-split frame counts."""
    out_dir = str(out_dir)
    focal = 0.5 * resolution / math.tan(0.5 * CAMERA_ANGLE_X)
    counts = {}
    for split, split_poses in poses.items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        frames = []
        for i, c2w in enumerate(split_poses):
            rgba, depth = render_view(c2w, resolution, focal, supersample, trace_fn)
            name = f"{split}/r_{i}"
            png = np.round(np.clip(rgba, 0, 1) * 255.0).astype(np.uint8)
            iio.imwrite(os.path.join(out_dir, name + ".png"), png)
            np.save(os.path.join(out_dir, name + "_depth.npy"), depth)
            frames.append({"file_path": f"./{name}", "rotation": 0.0,
                           "transform_matrix": [[float(x) for x in row] for row in c2w],
                           "depth_file": f"./{name}_depth.npy"})
        with open(os.path.join(out_dir, f"transforms_{split}.json"), "w", encoding="utf-8") as f:
            json.dump({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, f, indent=2)
        counts[split] = len(frames)
    return {"root": out_dir, "resolution": resolution, "focal": focal,
            "camera_angle_x": CAMERA_ANGLE_X, "splits": counts}
