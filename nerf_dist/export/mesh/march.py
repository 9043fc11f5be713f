"""Marching cubes on one block, each vertex named by the grid edge it lies on.

A marching-cubes vertex lies on one edge of the sample lattice: two of its grid coordinates are
whole numbers, the third is between i and i + 1. Its id is that edge's global number,
``((i * ny + j) * nz + k) * 3 + axis`` (int64; (i, j, k) the edge's lower sample), the same in
every block that holds the edge (a crossing within SNAP of a sample takes the sample's id,
``3 * n_samples + sample index``), so pieces from any blocks and any ranks merge into one mesh
without duplicate vertices (:mod:`.stitch`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Grid

SNAP = 1e-3
"""Crossings closer than this (in cells) to a sample are put on the sample (ids past the edges')."""


@dataclass
class Piece:
    """One block's surface: ids [v] int64 edge ids, verts [v, 3] float64 grid index coordinates,
    faces [f, 3] int64 edge ids (counter-clockwise seen from outside, i.e. from lower density),
    plus normals [v, 3] float32 and colours [v, 3] uint8 once :mod:`.surface` adds them."""
    ids: np.ndarray
    verts: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.faces) == 0


def crossing_edges(v: np.ndarray, level: float, start: tuple[int, ...], shape: tuple[int, ...]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The lattice edges of a block crossed by the level: (ids [e] int64, positions [e, 3] float64
    global grid index coordinates, interpolated linearly along the edge).

    NOTE: positions come from the two end samples' values and global indices alone, so an edge
    held by two blocks gets the same position, to the bit, in both."""
    inside = v >= level
    ids, pos = [], []
    nx, ny, nz = shape
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        cross = inside[tuple(a)] != inside[tuple(b)]
        ijk = np.argwhere(cross)
        v0 = v[tuple(a)][cross].astype(np.float64)
        v1 = v[tuple(b)][cross].astype(np.float64)
        t = (level - v0) / (v1 - v0)
        g = ijk + np.asarray(start, dtype=np.int64)
        eid = ((g[:, 0] * ny + g[:, 1]) * nz + g[:, 2]) * 3 + axis
        # NOTE: a crossing within SNAP of a sample is that sample: several edges meeting there
        # would otherwise give vertices closer than float32 can tell apart (and a sliver).
        up = t > 1 - SNAP
        g[up, axis] += 1
        snap = up | (t < SNAP)
        t = np.where(snap, 0.0, t)
        eid[snap] = 3 * nx * ny * nz + (g[snap, 0] * ny + g[snap, 1]) * nz + g[snap, 2]
        p = g.astype(np.float64)
        p[:, axis] += t
        ids.append(eid)
        pos.append(p)
    return np.concatenate(ids), np.concatenate(pos)


def march_block(values: np.ndarray, level: float, start: tuple[int, ...], grid: Grid) -> Piece:
    """values [bx, by, bz] float32 density of the block's samples (starting at global sample
    `start`) -> its Piece (empty when the level is not crossed in it).

    scikit-image's vertices are matched to the crossed lattice edges (nearest edge vertex); the
    vertex takes that edge's id and position. A vertex that Lewiner's tables put inside a cell (to
    resolve an ambiguous case) takes an id past every edge id, from its cell; it is never on a
    block border."""
    from scipy.spatial import cKDTree  # NOTE: lazy: the `export` extra
    from skimage.measure import marching_cubes  # NOTE: lazy: the `export` extra
    v = np.asarray(values, dtype=np.float32)
    empty = Piece(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    if min(v.shape) < 2 or v.min() > level or v.max() < level:
        return empty
    # NOTE: a sample exactly at the level would put a vertex on a lattice point, on no one edge;
    # nudging it up is the same rule in every block that holds the sample.
    lev = np.float32(level)
    v = np.where(v == lev, np.nextafter(lev, np.float32(np.inf)), v)
    ids, pos = crossing_edges(v, float(lev), start, grid.shape)
    if not len(ids):
        return empty
    verts, faces, _, _ = marching_cubes(v, level=float(lev), method="lewiner")
    coords = verts.astype(np.float64) + np.asarray(start, dtype=np.float64)
    dist, near = cKDTree(pos).query(coords)
    # NOTE: faces whose corners snapped onto one sample are degenerate: stitch.merge drops them.
    vid = ids[near]
    vpos = pos[near]
    far = dist > 1e-2
    if far.any():
        cell = np.floor(coords[far]).astype(np.int64)
        nx, ny, nz = grid.shape
        vid[far] = 4 * nx * ny * nz + (cell[:, 0] * ny + cell[:, 1]) * nz + cell[:, 2]
        vpos[far] = coords[far]
    # NOTE: scikit-image winds its triangles towards higher values: reverse them so they face
    # outward (towards lower density), as renderers and normals expect.
    return Piece(vid, vpos, vid[faces[:, ::-1].astype(np.int64)])


__all__ = ["Piece", "crossing_edges", "march_block"]
