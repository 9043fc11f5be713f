"""Rank 0's last stage: decimation, the output frame, and the files (PLY, OBJ, GLB)."""
from __future__ import annotations

import os

import numpy as np

from ..frame import move_points, original_from_meta
from ..ply import write_ply
from .stitch import Mesh


def decimate(mesh: Mesh, target_faces: int) -> Mesh:
    """Quadric decimation to about target_faces faces (trimesh + fast-simplification); normals
    and colours are carried to the kept vertices from their nearest original vertex."""
    import trimesh  # NOTE: lazy: the `export` extra
    try:
        import fast_simplification  # NOTE: lazy: optional, only for --decimate  # noqa: F401
    except ImportError as e:
        raise RuntimeError("--decimate needs the fast-simplification package (pip install "
                           "fast-simplification): trimesh's simplify_quadric_decimation uses "
                           "it") from e
    from scipy.spatial import cKDTree  # NOTE: lazy: the `export` extra
    tm = trimesh.Trimesh(mesh.verts, mesh.faces, process=False)
    out = tm.simplify_quadric_decimation(face_count=int(target_faces))
    verts = np.asarray(out.vertices, dtype=np.float64)
    _, near = cKDTree(mesh.verts).query(verts)
    return mesh.with_vertices_of(verts, np.asarray(out.faces, dtype=np.int64), near)


def to_frame(mesh: Mesh, matrix: np.ndarray) -> Mesh:
    """Apply a 4x4 similarity (scale, rotation, translation) to positions and normals
    (:func:`..frame.move_points`, renormalised); a reflection reverses the faces' winding so
    they keep facing the way the normals do."""
    m = np.asarray(matrix, dtype=np.float64)
    verts, n = move_points(m, mesh.verts, mesh.normals)
    normals = None if n is None else (
        n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)).astype(np.float32)
    faces = mesh.faces if np.linalg.det(m[:3, :3]) > 0 else mesh.faces[:, ::-1]
    return Mesh(verts, faces, normals, mesh.colors)


def write_trimesh(mesh: Mesh, path: str, fmt: str) -> None:
    """OBJ or GLB through trimesh (vertex colours and normals included)."""
    import trimesh  # NOTE: lazy: the `export` extra
    colors = None if mesh.colors is None else np.concatenate(
        [mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], 1)
    tm = trimesh.Trimesh(mesh.verts, mesh.faces, vertex_normals=mesh.normals,
                         vertex_colors=colors, process=False)
    tm.export(path, file_type=fmt)


def finish(mesh: Mesh, meta: dict, o) -> dict:
    """Decimate (o.decimate), move to o.frame (meta: the scene meta, :mod:`..frame`), write
    o.formats into o.out -> (the summary's counts and files ({fmt: {path, bytes}}), the mesh as
    written)."""
    if o.decimate and o.decimate < len(mesh.faces):
        mesh = decimate(mesh, o.decimate)
    if o.frame == "original":
        mesh = to_frame(mesh, original_from_meta(meta))
    os.makedirs(o.out, exist_ok=True)
    files = {}
    for fmt in o.formats:
        path = os.path.join(o.out, f"mesh.{fmt}")
        if fmt == "ply":
            write_ply(path, mesh.verts.astype(np.float32), colors=mesh.colors,
                      normals=mesh.normals, faces=mesh.faces)
        else:
            write_trimesh(mesh, path, fmt)
        files[fmt] = {"path": path, "bytes": os.path.getsize(path)}
    return {"vertices": len(mesh.verts), "faces": len(mesh.faces), "frame": o.frame,
            "files": files}, mesh


__all__ = ["decimate", "finish", "to_frame", "write_trimesh"]
