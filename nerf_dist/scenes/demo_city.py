"""The city demo scene: a grid of textured solids over a large textured ground, seen from above.

Detail is spread over the whole scene box (issue 19 point 7(b): a scene whose content outgrows a
small hash table, so that splitting it into boxes should pay). World units, z up: a square ground
of half-side HALF at z = GROUND_Z, cut by dark "streets" into grid x grid blocks; each block holds
one solid (box, capped cylinder or sphere; size, height, place and colours drawn from the seed)
carrying fine random-colour cells ("windows"); the ground's blocks carry finer cells. Lambertian
shading as in :mod:`.demo`; everything lies inside the Blender box [-1.5, 1.5]^3. Rays that miss
are transparent (alpha 0), as in the objects variant.

Cameras look down (elevation ELEV_DEG) at targets spread over the ground from several distances
(DISTANCES), so every block is seen from several sides; every surface a pixel sees lies between the
Blender layout's near = 2 and far = 6. Written in the Blender layout exactly like
:func:`.demo.write_demo_scene` (RGBA PNGs, float32 depth along the unit pixel-centre ray, 0 on a
miss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import demo
from .demo_unbounded import _cell_colour

HALF = 1.45
GROUND_Z = -0.5
STREET = 0.035           # half-width of a street (world units)
GROUND_CELL = 0.06       # side of the ground's colour cells
WINDOW = 0.05            # side of the solids' colour cells
DISTANCES = (3.25, 3.55, 3.85)
ELEV_DEG = (58.0, 80.0)  # camera elevation range above the target
TARGET_RADIUS = 1.05     # targets lie within this radius of the centre
GRID_RANGE = (2, 8)


@dataclass(frozen=True)
class Solid:
    """One solid: kind ('box' | 'cylinder' | 'sphere'), centre (x, y) on the ground, half-size
    (half-side or radius), height (top above the ground; 2 x half-size for a sphere), two albedo
    colours [3] and a salt for its cells."""
    kind: str
    centre: tuple[float, float]
    half: float
    height: float
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    salt: int


def layout(grid: int = 5, seed: int = 0) -> list[Solid]:
    """grid x grid solids, one per block, drawn from seed (same arguments, same solids)."""
    if not GRID_RANGE[0] <= grid <= GRID_RANGE[1]:
        raise ValueError(f"city grid must be in {GRID_RANGE[0]}..{GRID_RANGE[1]}, got {grid}")
    rng = np.random.default_rng(seed)
    block = 2.0 * HALF / grid
    out = []
    for k in range(grid * grid):
        i, j = divmod(k, grid)
        kind = ("box", "box", "cylinder", "sphere")[int(rng.integers(4))]
        half = float(rng.uniform(0.2, 0.36)) * block
        room = 0.5 * block - STREET - half - 0.01          # NOTE: a solid stays off the streets
        cx = -HALF + (i + 0.5) * block + float(rng.uniform(-room, room))
        cy = -HALF + (j + 0.5) * block + float(rng.uniform(-room, room))
        height = 2.0 * half if kind == "sphere" else float(rng.uniform(0.15, 0.75))
        a, b = rng.uniform(0.1, 0.95, 3), rng.uniform(0.1, 0.95, 3)
        out.append(Solid(kind, (cx, cy), half, height, tuple(map(float, a)), tuple(map(float, b)),
                         100 + k))
    return out


def _intersect(s: Solid, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t [n] (inf on a miss) and normal [n, 3] of rays o, d [n, 3] against one solid."""
    cx, cy = s.centre
    if s.kind == "box":
        lo = np.array([cx - s.half, cy - s.half, GROUND_Z])
        return demo._box(o, d, lo, lo + np.array([2 * s.half, 2 * s.half, s.height]))
    if s.kind == "cylinder":
        return demo._cylinder(o, d, (np.array([cx, cy]), s.half, GROUND_Z, GROUND_Z + s.height))
    return demo._sphere(o, d, np.array([cx, cy, GROUND_Z + s.half]), s.half)


def _tex_solid(s: Solid, p: np.ndarray) -> np.ndarray:
    """Albedo [n, 3] of points p [n, 3] on a solid: its two colours in bands of height, mixed
    with random-colour cells (around the solid and in height)."""
    h = (p[:, 2] - GROUND_Z) / max(s.height, 1e-6)
    band = demo._mix(s.colour_a, s.colour_b, 0.5 + 0.5 * np.sin(2.0 * math.pi * 3.0 * h))
    around = np.arctan2(p[:, 1] - s.centre[1], p[:, 0] - s.centre[0]) * s.half
    cell = _cell_colour(np.floor(around / WINDOW), np.floor(p[:, 2] / WINDOW), s.salt)
    return 0.55 * band + 0.45 * cell


def _tex_ground(p: np.ndarray, grid: int) -> np.ndarray:
    """Ground albedo [n, 3]: random-colour cells, dark streets between the blocks."""
    x, y = p[:, 0], p[:, 1]
    cell = _cell_colour(np.floor(x / GROUND_CELL), np.floor(y / GROUND_CELL), 1)
    block = 2.0 * HALF / grid
    fx = np.abs(((x + HALF) / block + 0.5) % 1.0 - 0.5) * block   # distance to the nearest street
    fy = np.abs(((y + HALF) / block + 0.5) % 1.0 - 0.5) * block
    street = (np.minimum(fx, fy) < STREET)[:, None]
    return np.where(street, 0.15 + 0.1 * cell, 0.35 + 0.6 * cell)


def make_trace(grid: int = 5, seed: int = 0):
    """The scene's trace(rays_o, rays_d [n, 3], unit d) -> (rgb [n, 3], 0 on a miss; t [n], inf on
    a miss), as :func:`.demo.trace`."""
    solids = layout(grid, seed)
    shade_up = demo.AMBIENT + (1.0 - demo.AMBIENT) * max(float(demo.LIGHT[2]), 0.0)

    def trace(rays_o: np.ndarray, rays_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = rays_o.shape[0]
        t_best, rgb = np.full(n, np.inf), np.zeros((n, 3))
        dz = np.where(np.abs(rays_d[:, 2]) < 1e-12, -1e-12, rays_d[:, 2])
        tg = (GROUND_Z - rays_o[:, 2]) / dz
        pg = rays_o + rays_d * np.where(np.isfinite(tg), tg, 0.0)[:, None]
        on = (tg > 1e-9) & (np.abs(pg[:, 0]) <= HALF) & (np.abs(pg[:, 1]) <= HALF)
        t_best[on] = tg[on]
        rgb[on] = _tex_ground(pg[on], grid) * shade_up
        for s in solids:
            t, normal = _intersect(s, rays_o, rays_d)
            m = t < t_best
            if not m.any():
                continue
            t_best[m] = t[m]
            p = rays_o[m] + rays_d[m] * t[m, None]
            lambert = np.maximum(normal[m] @ demo.LIGHT, 0.0)
            rgb[m] = _tex_solid(s, p) * (demo.AMBIENT + (1.0 - demo.AMBIENT) * lambert)[:, None]
        return np.clip(rgb, 0.0, 1.0), t_best

    return trace


def _rig(n: int, rot: float, phase: float) -> list[np.ndarray]:
    """n c2w [4, 4]: targets on a golden-angle spiral over the ground (uniform in area), each seen
    from DISTANCES in turn, elevations sweeping ELEV_DEG, azimuths within 60 degrees of looking
    outward-in (the camera further from the centre than its target)."""
    out = []
    lo, hi = (math.radians(e) for e in ELEV_DEG)
    for i in range(n):
        u = (i + phase) / n
        ang = rot + (i + phase) * demo._GOLDEN
        target = np.array([TARGET_RADIUS * math.sqrt(u) * math.cos(ang),
                           TARGET_RADIUS * math.sqrt(u) * math.sin(ang), GROUND_Z])
        el = lo + (hi - lo) * (((i + phase) * 0.618034) % 1.0)
        az = ang + math.radians(120.0) * (((i + phase) * 0.414214) % 1.0 - 0.5)
        c2w = demo.look_at(el, az, DISTANCES[i % len(DISTANCES)])
        c2w[:3, 3] += target          # NOTE: look_at aims at the origin; shift camera and aim
        out.append(c2w)
    return out


def camera_poses(views: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per split a list of c2w [4, 4] (see :func:`_rig`): train = views cameras, val = 4 and test =
    8 at other targets, elevations and azimuths. seed turns the whole rig."""
    rot = float(np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi))
    return {"train": _rig(views, rot, 0.5), "val": _rig(4, rot + 0.9, 0.25),
            "test": _rig(8, rot + 2.1, 0.75)}


def write_city_scene(out_dir: str, resolution: int = 64, views: int = 60, seed: int = 0,
                     supersample: int = 3, grid: int = 5) -> dict:
    """Write the city scene under out_dir in the Blender layout (as :func:`.demo.write_demo_scene`;
    near = 2, far = 6, aabb [-1.5, 1.5]^3). seed draws the solids and turns the camera rig; same
    arguments give the same bytes. Returns the summary dict of write_demo_scene plus grid."""
    if resolution < 1 or views < 1:
        raise ValueError(f"resolution and views must be >= 1, got {resolution}, {views}")
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError(f"supersample must be odd, got {supersample}")
    trace = make_trace(grid, seed)                 # NOTE: validates grid before any file is made
    info = demo.write_blender_views(out_dir, camera_poses(views, seed), resolution, supersample,
                                    trace)
    demo.write_marker(out_dir, "city", seed=seed, views=views, resolution=resolution, grid=grid)
    return {**info, "near": 2.0, "far": 6.0, "grid": grid}


__all__ = ["GROUND_Z", "HALF", "Solid", "camera_poses", "layout", "make_trace",
           "write_city_scene"]
