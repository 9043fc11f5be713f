"""Pieces of blocks -> one mesh: vertices merged by edge id, degenerate faces dropped, and the
largest connected components kept.

The result depends only on the pieces and their block order, never on which rank made which
piece: 1 rank and N ranks write the same mesh.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .march import Piece


@dataclass
class Mesh:
    """verts [v, 3] float64, faces [f, 3] int64 (outward, counter-clockwise), normals [v, 3]
    float32 unit or None, colors [v, 3] uint8 or None."""
    verts: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None

    def with_vertices_of(self, verts: np.ndarray, faces: np.ndarray, src: np.ndarray) -> Mesh:
        """A mesh of verts [n, 3] and faces whose vertex i takes the normal and colour of this
        mesh's vertex src[i]."""
        return Mesh(verts, faces, None if self.normals is None else self.normals[src],
                    None if self.colors is None else self.colors[src])

    def subset(self, keep_faces: np.ndarray) -> Mesh:
        """The mesh of faces[keep_faces], unused vertices dropped (order kept)."""
        faces = self.faces[keep_faces]
        used = np.unique(faces)
        remap = np.full(len(self.verts), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return self.with_vertices_of(self.verts[used], remap[faces], used)


def merge(pieces: list[Piece]) -> Mesh:
    """Pieces in block order -> one Mesh. A vertex held by several pieces (a block border) is
    kept once, with the attributes of the first piece holding it; vertices are ordered by edge id,
    faces by block then as marched. Faces that merging made degenerate (two equal corners) go."""
    pieces = [p for p in pieces if not p.empty]
    if not pieces:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    ids = np.concatenate([p.ids for p in pieces])
    uniq, first = np.unique(ids, return_index=True)
    faces = np.searchsorted(uniq, np.concatenate([p.faces for p in pieces]))
    good = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])

    def cat(name):
        arrs = [getattr(p, name) for p in pieces]
        return None if any(a is None for a in arrs) else np.concatenate(arrs)[first]
    # NOTE: subset also drops vertices that only degenerate faces used.
    return Mesh(np.concatenate([p.verts for p in pieces])[first], faces, cat("normals"),
                cat("colors")).subset(good)


def components(mesh: Mesh) -> np.ndarray:
    """[f] int64 component label of each face (faces sharing a vertex are connected), labels
    ordered by size, largest first (ties: the component with the lowest first face)."""
    from scipy.sparse import coo_matrix  # NOTE: lazy: the `export` extra
    from scipy.sparse.csgraph import connected_components  # NOTE: lazy: the `export` extra
    n = len(mesh.verts)
    f = mesh.faces
    rows = np.concatenate([f[:, 0], f[:, 1]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, vlabel = connected_components(graph, directed=False)
    flabel = vlabel[f[:, 0]]
    labels, inverse, counts = np.unique(flabel, return_inverse=True, return_counts=True)
    first = np.full(len(labels), len(f), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(f)))
    order = np.lexsort((first, -counts))
    rank_of = np.empty(len(labels), dtype=np.int64)
    rank_of[order] = np.arange(len(labels))
    return rank_of[inverse]


def keep_largest(mesh: Mesh, n: int) -> tuple[Mesh, int]:
    """The n largest connected components (by faces) of mesh, and how many there were."""
    if not len(mesh.faces):
        return mesh, 0
    label = components(mesh)
    total = int(label.max()) + 1
    if n <= 0 or n >= total:
        return mesh, total
    return mesh.subset(label < n), total


__all__ = ["Mesh", "components", "keep_largest", "merge"]
