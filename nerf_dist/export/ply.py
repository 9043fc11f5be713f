"""A small binary PLY writer (little endian): vertices with optional normals and colours, and
optional triangle faces. Readable by trimesh, Open3D, MeshLab, CloudCompare, Blender.

:func:`read_ply` reads back what :func:`write_ply` writes (binary little-endian, vertex
properties of the scalar types below, triangle faces): the tests' and the measurements' reader,
not a general one (any other layout is refused with a message naming the file)."""
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


_TYPES = {"char": "i1", "uchar": "u1", "short": "<i2", "ushort": "<u2", "int": "<i4",
          "uint": "<u4", "float": "<f4", "double": "<f8", "int8": "i1", "uint8": "u1",
          "int16": "<i2", "uint16": "<u2", "int32": "<i4", "uint32": "<u4", "float32": "<f4",
          "float64": "<f8"}


def read_ply(path: str) -> dict:
    """{verts [n, 3] float32, normals [n, 3] | None, colors [n, 3] uint8 | None, faces [m, 3]
    int64 | None} of a binary little-endian PLY (module docstring); ValueError naming path."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' / 'end_header')")
    lines = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian PLY is read here")
    elements: list[tuple[str, int, list]] = []
    for ln in lines:
        w = ln.split()
        if w[:1] == ["element"]:
            elements.append((w[1], int(w[2]), []))
        elif w[:1] == ["property"] and elements:
            elements[-1][2].append(w[1:])
    pos, out = end + len(b"end_header\n"), {"faces": None}
    for name, count, props in elements:
        if name == "face":
            if props != [["list", "uchar", "int", "vertex_indices"]]:
                raise ValueError(f"{path}: faces must be 'list uchar int vertex_indices'")
            rec = np.frombuffer(data, dtype=[("k", "u1"), ("v", "<i4", (3,))], count=count,
                                offset=pos)
            if count and not (rec["k"] == 3).all():
                raise ValueError(f"{path}: only triangle faces are read here")
            out["faces"] = rec["v"].astype(np.int64)
            pos += rec.nbytes
            continue
        try:
            dt = np.dtype([(p[1], _TYPES[p[0]]) for p in props])
        except (KeyError, IndexError) as e:
            raise ValueError(f"{path}: element {name}: unsupported property {e}") from e
        rec = np.frombuffer(data, dtype=dt, count=count, offset=pos)
        pos += rec.nbytes
        if name != "vertex":
            continue
        cols = lambda *k: (np.stack([rec[c] for c in k], 1)  # noqa: E731
                           if all(c in dt.names for c in k) else None)
        out["verts"] = cols("x", "y", "z").astype(np.float32)
        out["normals"] = cols("nx", "ny", "nz")
        c = cols("red", "green", "blue")
        out["colors"] = None if c is None else c.astype(np.uint8)
    if "verts" not in out:
        raise ValueError(f"{path}: no vertex element")
    return out


__all__ = ["read_ply", "write_ply"]
