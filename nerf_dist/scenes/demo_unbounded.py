"""The unbounded demo scene: the demo's objects on a textured ground inside a textured environment
sphere far away, seen by inward-facing 360-degree cameras at several heights, with exact depth.

World units, z up: the four solids of :mod:`.demo` (radius 1.2 around the origin), a ground plane
at z = GROUND_Z reaching the environment sphere (radius ENV_RADIUS, centred on the origin). The
ground and the sphere carry cells of random colours (hashed from the cell) over smooth gradients:
rich, high-contrast texture, so a NeRF has something to fit at every distance and SIFT finds
corners. Objects and ground are Lambertian-shaded as in :mod:`.demo`; the sphere is unlit (sky).
Every pixel hits something: images are opaque RGB, depth is finite everywhere.

Written in the instant-ngp layout (``transforms_{train,val,test}.json`` with camera_angle_x and
aabb_scale, RGB 8-bit PNGs, float32 depth ``.npy`` per frame named by ``depth_file``), which
normalises camera centres into [-1, 1]^3: the sphere then lies ~ENV_RADIUS / CAM_RADIUS scene
units away, far beyond any aabb_scale.
"""
from __future__ import annotations

import json
import math
import os

import imageio.v3 as iio
import numpy as np

from . import demo

GROUND_Z = -0.55
ENV_RADIUS = 200.0
CAM_RADIUS = 3.0
ELEVATIONS_DEG = (8.0, 20.0, 35.0)
AABB_SCALE = 16


def _cell_colour(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Random colours [n, 3] in [0.1, 0.95] of integer cells (i, j) [n] (a fixed integer hash)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h & 0xFFFFFF
    return 0.1 + 0.85 * np.stack([(h & 0xFF), (h >> 8) & 0xFF, (h >> 16) & 0xFF], 1) / 255.0


def _tex_ground(p: np.ndarray) -> np.ndarray:
    """Ground albedo [n, 3]: random-colour cells of 0.5 units, darker thin grid lines, a slow
    radial gradient."""
    x, y = p[:, 0], p[:, 1]
    cell = _cell_colour(np.floor(x / 0.5), np.floor(y / 0.5), 1)
    fx, fy = np.abs((x / 0.5) % 1.0 - 0.5), np.abs((y / 0.5) % 1.0 - 0.5)
    line = ((fx > 0.45) | (fy > 0.45)).astype(np.float64)
    r = np.hypot(x, y)
    grad = 0.75 + 0.25 * np.cos(r / 6.0)
    return cell * (1.0 - 0.6 * line[:, None]) * grad[:, None]


def _tex_env(d: np.ndarray) -> np.ndarray:
    """Environment colour [n, 3] of unit directions d [n, 3] from the origin: a sky gradient with
    random-colour patches (10 x 6 degree cells) mixed in, stronger near the horizon."""
    lon = np.arctan2(d[:, 1], d[:, 0])
    lat = np.arcsin(np.clip(d[:, 2], -1.0, 1.0))
    cell = _cell_colour(np.floor(np.degrees(lon) / 10.0), np.floor(np.degrees(lat) / 6.0), 2)
    sky = demo._mix([0.85, 0.8, 0.7], [0.25, 0.45, 0.85], np.clip(lat / (0.5 * math.pi), 0, 1))
    k = np.clip(1.0 - np.abs(lat) / 0.9, 0.25, 1.0)[:, None]
    return sky * (1.0 - k) + cell * k


def _ground(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """t [n] of the ground plane z = GROUND_Z (inf when missed or beyond the sphere)."""
    dz = np.where(np.abs(d[:, 2]) < 1e-12, -1e-12, d[:, 2])
    t = (GROUND_Z - o[:, 2]) / dz
    p = o + d * np.where(t > 0, t, 0.0)[:, None]
    return np.where((t > 1e-9) & (np.linalg.norm(p, axis=1) < ENV_RADIUS), t, np.inf)


def _env(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """t [n] where rays from inside leave the environment sphere."""
    b = np.einsum("ij,ij->i", o, d)
    c = np.einsum("ij,ij->i", o, o) - ENV_RADIUS ** 2
    return -b + np.sqrt(np.maximum(b * b - c, 0.0))


def trace(rays_o: np.ndarray, rays_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shade rays (origins inside the sphere, unit d: [n, 3]) -> (rgb [n, 3], t [n], finite)."""
    rgb, t = demo.trace(rays_o, rays_d)
    tg = _ground(rays_o, rays_d)
    g = tg < t
    if g.any():
        p = rays_o[g] + rays_d[g] * tg[g, None]
        shade = demo.AMBIENT + (1.0 - demo.AMBIENT) * max(float(demo.LIGHT[2]), 0.0)
        rgb[g] = _tex_ground(p) * shade
        t[g] = tg[g]
    e = ~np.isfinite(t)
    if e.any():
        te = _env(rays_o[e], rays_d[e])
        p = rays_o[e] + rays_d[e] * te[:, None]
        rgb[e] = _tex_env(p / np.linalg.norm(p, axis=1, keepdims=True))
        t[e] = te
    return np.clip(rgb, 0.0, 1.0), t


def camera_poses(views: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per split a list of c2w [4, 4] at radius CAM_RADIUS looking at the origin: train = views
    cameras going round ELEVATIONS_DEG in turn at golden-angle azimuths; val = 4 and test = 8
    at elevations in between. seed turns the whole rig."""
    rot = float(np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi))
    el = [math.radians(e) for e in ELEVATIONS_DEG]
    train = [demo.look_at(el[i % len(el)], rot + i * demo._GOLDEN, CAM_RADIUS)
             for i in range(views)]
    val = [demo.look_at(math.radians(e), rot + math.pi / 4 + k * math.pi / 2 + 0.1, CAM_RADIUS)
           for k, e in enumerate((12, 28, 16, 24))]
    test = [demo.look_at(math.radians(14 if k % 2 == 0 else 27), rot + (k + 0.3) * math.pi / 4,
                         CAM_RADIUS) for k in range(8)]
    return {"train": train, "val": val, "test": test}


def render_view(c2w: np.ndarray, resolution: int, focal: float,
                supersample: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One square view: (rgb [H, W, 3] in [0, 1], the mean of s x s sub-rays; depth [H, W] along
    the unit pixel-centre ray). supersample must be odd (the centre sub-ray is the pixel's)."""
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError(f"supersample must be odd, got {supersample}")
    H = W = resolution
    s = supersample
    sub = (np.arange(s) + 0.5) / s
    u = (np.arange(W)[:, None] + sub[None]).reshape(-1)
    v = (np.arange(H)[:, None] + sub[None]).reshape(-1)
    uu, vv = np.meshgrid(u, v)
    dirs = np.stack([(uu - W / 2.0) / focal, -(vv - H / 2.0) / focal, -np.ones_like(uu)], -1)
    dirs = dirs.reshape(-1, 3) @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rgb, t = trace(np.ascontiguousarray(np.broadcast_to(c2w[:3, 3], dirs.shape)), dirs)
    colour = rgb.reshape(H, s, W, s, 3).mean(axis=(1, 3))
    depth = t.reshape(H, s, W, s)[:, s // 2, :, s // 2]
    return colour, depth.astype(np.float32)


def write_unbounded_scene(out_dir: str, resolution: int = 64, views: int = 60, seed: int = 0,
                          supersample: int = 3) -> dict:
    """Write the unbounded demo scene under out_dir in the instant-ngp layout (see the module
    doc). Same arguments give the same bytes. Returns a summary dict: root, resolution, focal,
    camera_angle_x, env_radius, cam_radius, aabb_scale and per-split frame counts."""
    if resolution < 1 or views < 1:
        raise ValueError(f"resolution and views must be >= 1, got {resolution}, {views}")
    out_dir = str(out_dir)
    focal = 0.5 * resolution / math.tan(0.5 * demo.CAMERA_ANGLE_X)
    counts = {}
    for split, poses in camera_poses(views, seed).items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        frames = []
        for i, c2w in enumerate(poses):
            rgb, depth = render_view(c2w, resolution, focal, supersample)
            name = f"{split}/r_{i}"
            iio.imwrite(os.path.join(out_dir, name + ".png"),
                        np.round(np.clip(rgb, 0, 1) * 255.0).astype(np.uint8))
            np.save(os.path.join(out_dir, name + "_depth.npy"), depth)
            frames.append({"file_path": f"./{name}.png",
                           "transform_matrix": [[float(x) for x in row] for row in c2w],
                           "depth_file": f"./{name}_depth.npy"})
        with open(os.path.join(out_dir, f"transforms_{split}.json"), "w", encoding="utf-8") as f:
            json.dump({"camera_angle_x": demo.CAMERA_ANGLE_X, "w": resolution, "h": resolution,
                       "aabb_scale": AABB_SCALE,
                       "frames": frames}, f, indent=2)
        counts[split] = len(frames)
    demo.write_marker(out_dir, "unbounded", seed=seed, views=views, resolution=resolution)
    return {"root": out_dir, "resolution": resolution, "focal": focal,
            "camera_angle_x": demo.CAMERA_ANGLE_X, "env_radius": ENV_RADIUS,
            "cam_radius": CAM_RADIUS, "aabb_scale": AABB_SCALE, "splits": counts}


__all__ = ["ENV_RADIUS", "CAM_RADIUS", "GROUND_Z", "camera_poses", "render_view", "trace",
           "write_unbounded_scene"]
