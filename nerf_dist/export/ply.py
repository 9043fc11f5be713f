"""A small binary PLY writer (little endian): vertices with optional normals and colours, and
optional triangle faces. Readable by trimesh, Open3D, MeshLab, CloudCompare, Blender."""
from __future__ import annotations

import numpy as np


def write_ply(path: str, verts: np.ndarray, colors: np.ndarray | None = None,
              normals: np.ndarray | None = None, faces: np.ndarray | None = None) -> int:
    """Write verts [n, 3] (float32 x y z), normals [n, 3] (float32 nx ny nz), colors [n, 3] uint8
    (red green blue), faces [m, 3] (int32 indices) to path. Returns the bytes written."""
    verts = np.asarray(verts, dtype=np.float32).reshape(-1, 3)
    n = len(verts)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols = [verts]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
        cols.append(np.asarray(normals, dtype=np.float32).reshape(n, 3))
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        cols.append(np.asarray(colors, dtype=np.uint8).reshape(n, 3))
    rec = np.empty(n, dtype=fields)
    k = 0
    for c in cols:
        for j in range(3):
            rec[fields[k][0]] = c[:, j]
            k += 1
    names = {"<f4": "float", "u1": "uchar"}
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    head += [f"property {names[t]} {name}" for name, t in fields]
    if faces is not None:
        faces = np.asarray(faces).reshape(-1, 3)
        head += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    head.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode("ascii"))
        f.write(rec.tobytes())
        if faces is not None:
            fr = np.empty(len(faces), dtype=[("k", "u1"), ("v", "<i4", (3,))])
            fr["k"] = 3
            fr["v"] = faces
            f.write(fr.tobytes())
        return f.tell()


__all__ = ["write_ply"]
