"""A small binary PLY writer (little endian): vertices with optional normals and colours, and
optional triangle faces, at once (:func:`write_ply`) or in chunks (:class:`PlyWriter`). Readable by
trimesh, Open3D, MeshLab, CloudCompare, Blender.

:func:`read_ply` reads back what :func:`write_ply` writes (binary little-endian, vertex
properties of the scalar types below, triangle faces): the tests' and the measurements' reader,
not a general one (any other layout is refused with a message naming the file)."""
from __future__ import annotations

import numpy as np


_XYZ, _NRM, _RGB = ("x", "y", "z"), ("nx", "ny", "nz"), ("red", "green", "blue")


class PlyWriter:
    """A PLY file written in pieces: the counts are stated up front, then vertices and faces are
    appended chunk by chunk (so a large export never holds one big record array); :meth:`close`
    (or leaving the ``with`` block) checks that exactly the stated counts were written.

    >>> with PlyWriter(path, n_verts, normals=True, colors=True) as w:
    ...     for v, c, nrm in chunks: w.vertices(v, colors=c, normals=nrm)
    """

    def __init__(self, path: str, n_verts: int, normals: bool = False, colors: bool = False,
                 n_faces: int | None = None):
        self.fields = [(k, "<f4") for k in _XYZ] + ([(k, "<f4") for k in _NRM] if normals else [])
        self.fields += [(k, "u1") for k in _RGB] if colors else []
        self.counts, self.done = (int(n_verts), n_faces), [0, 0]
        head = ["ply", "format binary_little_endian 1.0", f"element vertex {int(n_verts)}"]
        head += [f"property {'float' if t == '<f4' else 'uchar'} {k}" for k, t in self.fields]
        if n_faces is not None:
            head += [f"element face {int(n_faces)}", "property list uchar int vertex_indices"]
        self.f = open(path, "wb")
        self.f.write(("\n".join(head + ["end_header"]) + "\n").encode("ascii"))
        self.path = path

    def vertices(self, verts, colors=None, normals=None) -> None:
        """Append verts [k, 3] (with normals [k, 3] / colors [k, 3] uint8 when declared)."""
        verts = np.asarray(verts, dtype=np.float32).reshape(-1, 3)
        rec = np.empty(len(verts), dtype=self.fields)
        given = {_XYZ: ("positions", verts), _NRM: ("normals", normals), _RGB: ("colours", colors)}
        for names, (label, arr) in given.items():
            if names[0] not in rec.dtype.names:
                if arr is not None:
                    raise ValueError(f"{self.path}: {label} for a PLY declared without them")
                continue
            if arr is None:
                raise ValueError(f"{self.path}: the PLY declares {', '.join(names)}: give them")
            arr = np.asarray(arr).reshape(len(verts), 3)
            for j, name in enumerate(names):
                rec[name] = arr[:, j]
        if self.done[1]:
            raise ValueError(f"{self.path}: vertices after faces")
        self.done[0] += len(rec)
        self.f.write(rec.tobytes())

    def faces(self, faces) -> None:
        """Append triangles faces [k, 3] (int32 vertex indices)."""
        faces = np.asarray(faces).reshape(-1, 3)
        fr = np.empty(len(faces), dtype=[("k", "u1"), ("v", "<i4", (3,))])
        fr["k"] = 3
        fr["v"] = faces
        self.done[1] += len(fr)
        self.f.write(fr.tobytes())

    def close(self) -> int:
        """Close; ValueError unless the stated counts were written. Returns the file's bytes."""
        size = self.f.tell()
        self.f.close()
        want = (self.counts[0], self.counts[1] or 0)
        if tuple(self.done) != want:
            raise ValueError(f"{self.path}: {self.done[0]} vertices and {self.done[1]} faces "
                             f"written, the header states {want[0]} and {want[1]}")
        return size

    def __enter__(self) -> PlyWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.f.close()


def write_ply(path: str, verts: np.ndarray, colors: np.ndarray | None = None,
              normals: np.ndarray | None = None, faces: np.ndarray | None = None) -> int:
    """Write verts [n, 3] (float32 x y z), normals [n, 3] (float32 nx ny nz), colors [n, 3] uint8
    (red green blue), faces [m, 3] (int32 indices) to path. Returns the bytes written."""
    verts = np.asarray(verts, dtype=np.float32).reshape(-1, 3)
    faces = None if faces is None else np.asarray(faces).reshape(-1, 3)
    w = PlyWriter(path, len(verts), normals is not None, colors is not None,
                  None if faces is None else len(faces))
    try:
        w.vertices(verts, colors, normals)
        if faces is not None:
            w.faces(faces)
    except BaseException:
        w.f.close()
        raise
    return w.close()


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


__all__ = ["PlyWriter", "read_ply", "write_ply"]
