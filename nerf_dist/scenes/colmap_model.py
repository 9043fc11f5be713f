"""Our own reader of COLMAP sparse models: ``cameras``, ``images``, ``points3D`` as .bin or .txt.

The formats are COLMAP's documented ones (https://colmap.github.io/format.html); pycolmap is not
needed to read them. Binary (little endian):

- cameras.bin: uint64 n; per camera: uint32 camera_id, int32 model_id, uint64 width, uint64 height,
  float64 params[model's count].
- images.bin: uint64 n; per image: uint32 image_id, float64 qw qx qy qz, float64 tx ty tz,
  uint32 camera_id, name (bytes up to a NUL), uint64 n_points2D, then per point float64 x, y and
  int64 point3D_id.
- points3D.bin: uint64 n; per point: uint64 point3D_id, float64 x y z, uint8 r g b, float64 error,
  uint64 track_length, then per element uint32 image_id, uint32 point2D_idx.

Ids are COLMAP's unsigned types (camera_t, image_t, point2D_t: uint32; point3D_t: uint64), read
as such and kept as Python ints / int64 arrays, so an id past 2^31 names the same image in
images.bin and in a track.

Text: one line per camera / point, two lines per image (the second, possibly empty, holds the 2D
points); ``#`` starts a comment line. Ids need not be contiguous. COLMAP 4 also writes rigs and
frames files; a scene needs only the three read here (each image still carries its own pose).

Vocabulary: ``qvec: [4]`` (w, x, y, z) and ``tvec: [3]`` map world to camera (OpenCV axes:
x right, y down, z forward): ``x_cam = R(qvec) @ x_world + tvec``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .base import SceneError

# model id -> (name, number of params), as numbered in COLMAP's sensor/models.h.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: (mid, n) for mid, (name, n) in CAMERA_MODELS.items()}


@dataclass(frozen=True)
class Camera:
    """One COLMAP camera: model name, width, height (pixels) and params as COLMAP orders them."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class Image:
    """One registered image: qvec [4] (w, x, y, z), tvec [3] world-to-camera; name relative to
    the image folder. n_points2D: keypoints stored for it (their coordinates are not kept)."""

    image_id: int
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int
    name: str
    n_points2D: int = 0


@dataclass
class Points3D:
    """The sparse points: ids [m] int64, xyz [m, 3] float64, rgb [m, 3] uint8, error [m] (px),
    and the track as two flat arrays, track_image [k] (image ids) and track_point [k] (index into
    the m points)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_image: np.ndarray
    track_point: np.ndarray


class _Bin:
    """Sequential little-endian reads of a binary model file; a short read names file and field."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.buf = f.read()
        except OSError as e:
            raise SceneError(f"cannot read COLMAP model file {path}: {e}") from e
        self.pos = 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise SceneError(f"{self.path}: file ends early (truncated?) while reading {what} at "
                             f"byte {self.pos} of {len(self.buf)}")
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.buf):
            raise SceneError(f"{self.path}: file ends early (truncated?) while reading {what} at "
                             f"byte {self.pos} of {len(self.buf)}")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def name(self, what: str) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise SceneError(f"{self.path}: file ends early (truncated?) while reading {what} "
                             f"(no terminating NUL) at byte {self.pos} of {len(self.buf)}")
        raw = self.buf[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SceneError(f"{self.path}: {what} is not valid UTF-8: {e}") from e

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise SceneError(f"{self.path}: {len(self.buf) - self.pos} unexpected bytes after the "
                             f"last record (not a COLMAP model file, or a different version?)")


def _text_lines(path: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of a text model file, comments dropped, empty kept."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"cannot read COLMAP model file {path}: {e}") from e
    return [(i + 1, ln.strip()) for i, ln in enumerate(raw) if not ln.lstrip().startswith("#")]


def _fields(path: str, lineno: int, tokens: list[str], types: list, what: str) -> list:
    if len(tokens) < len(types):
        raise SceneError(f"{path}: line {lineno}: {what} needs {len(types)} fields, got "
                         f"{len(tokens)}")
    try:
        return [t(v) for t, v in zip(types, tokens)]
    except ValueError as e:
        raise SceneError(f"{path}: line {lineno}: bad {what}: {e}") from e


def _check_camera(path: str, where: str, cam_id: int, name: str, w: int, h: int, params) -> Camera:
    if w <= 0 or h <= 0:
        raise SceneError(f"{path}: {where}: camera {cam_id} has size {w}x{h}")
    if not np.all(np.isfinite(params)):
        raise SceneError(f"{path}: {where}: camera {cam_id} has non-finite params")
    return Camera(cam_id, name, int(w), int(h), tuple(float(p) for p in params))


def read_cameras(path: str) -> dict[int, Camera]:
    """{camera_id: Camera} from cameras.bin or cameras.txt (by extension)."""
    out = {}
    if path.endswith(".bin"):
        b = _Bin(path)
        (n,) = b.take("Q", "the number of cameras")
        for k in range(n):
            cam_id, model_id, w, h = b.take("IiQQ", f"camera {k} (id, model, width, height)")
            if model_id not in CAMERA_MODELS:
                raise SceneError(f"{path}: camera {cam_id}: unknown camera model id {model_id}")
            name, n_par = CAMERA_MODELS[model_id]
            params = b.take("d" * n_par, f"camera {cam_id} params ({name}, {n_par} values)")
            out[cam_id] = _check_camera(path, f"camera {k}", cam_id, name, w, h, params)
        b.done()
        return out
    for lineno, line in _text_lines(path):
        if not line:
            continue
        tok = line.split()
        cam_id, name, w, h = _fields(path, lineno, tok, [int, str, int, int], "camera")
        if name not in MODEL_IDS:
            raise SceneError(f"{path}: line {lineno}: camera {cam_id}: unknown camera model {name!r}")
        n_par = MODEL_IDS[name][1]
        if len(tok) != 4 + n_par:
            raise SceneError(f"{path}: line {lineno}: camera {cam_id} ({name}) needs {n_par} params, "
                             f"got {len(tok) - 4}")
        params = _fields(path, lineno, tok[4:], [float] * n_par, f"camera {cam_id} params")
        out[cam_id] = _check_camera(path, f"line {lineno}", cam_id, name, w, h, params)
    return out


def _check_image(path: str, where: str, img: Image) -> Image:
    q = np.asarray(img.qvec)
    if not np.all(np.isfinite(q)) or not np.all(np.isfinite(img.tvec)) or np.linalg.norm(q) < 1e-12:
        raise SceneError(f"{path}: {where}: image {img.image_id} ({img.name}) has a non-finite or "
                         f"zero pose")
    if not img.name:
        raise SceneError(f"{path}: {where}: image {img.image_id} has an empty name")
    return img


def read_images(path: str) -> dict[int, Image]:
    """{image_id: Image} from images.bin or images.txt (by extension)."""
    out = {}
    if path.endswith(".bin"):
        b = _Bin(path)
        (n,) = b.take("Q", "the number of images")
        for k in range(n):
            vals = b.take("I7dI", f"image {k} (id, qvec, tvec, camera id)")
            name = b.name(f"image {vals[0]} name")
            (n2d,) = b.take("Q", f"image {vals[0]} ({name}) number of 2D points")
            b.array("u1", 24 * n2d, f"image {vals[0]} ({name}) 2D points")
            img = Image(vals[0], tuple(vals[1:5]), tuple(vals[5:8]), vals[8], name, int(n2d))
            out[img.image_id] = _check_image(path, f"image {k}", img)
        b.done()
        return out
    lines = _text_lines(path)
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        i += 1
        if not line:
            continue
        tok = line.split(maxsplit=9)
        vals = _fields(path, lineno, tok, [int] + [float] * 7 + [int, str], "image")
        # NOTE: the next line holds the image's 2D points and may be empty (COLMAP writes it so).
        n2d = 0
        if i < len(lines):
            n2d = len(lines[i][1].split()) // 3
            i += 1
        img = Image(vals[0], tuple(vals[1:5]), tuple(vals[5:8]), vals[8], vals[9].strip(), n2d)
        out[img.image_id] = _check_image(path, f"line {lineno}", img)
    return out


def read_points3D(path: str) -> Points3D:
    """The sparse points of points3D.bin or points3D.txt (by extension)."""
    ids, xyz, rgb, err, t_img, t_pt = [], [], [], [], [], []
    if path.endswith(".bin"):
        b = _Bin(path)
        (n,) = b.take("Q", "the number of 3D points")
        for k in range(n):
            vals = b.take("Q3d3BdQ", f"3D point {k} (id, xyz, rgb, error, track length)")
            track = b.array("<u4", 2 * vals[8], f"3D point {vals[0]} track ({vals[8]} entries)")
            ids.append(vals[0])
            xyz.append(vals[1:4])
            rgb.append(vals[4:7])
            err.append(vals[7])
            t_img.append(track[0::2])
            t_pt.append(np.full(vals[8], k, dtype=np.int64))
        b.done()
    else:
        for lineno, line in _text_lines(path):
            if not line:
                continue
            tok = line.split()
            vals = _fields(path, lineno, tok, [int] + [float] * 3 + [int] * 3 + [float], "3D point")
            track = tok[8:]
            if len(track) % 2:
                raise SceneError(f"{path}: line {lineno}: 3D point {vals[0]}: the track needs "
                                 f"(IMAGE_ID, POINT2D_IDX) pairs, got {len(track)} values")
            tr = np.asarray(_fields(path, lineno, track, [int] * len(track), "track"), dtype=np.int64)
            k = len(ids)
            ids.append(vals[0])
            xyz.append(vals[1:4])
            rgb.append(vals[4:7])
            err.append(vals[7])
            t_img.append(tr[0::2])
            t_pt.append(np.full(len(tr) // 2, k, dtype=np.int64))
    cat = (lambda a: np.concatenate(a).astype(np.int64)) if t_img else (lambda a: np.zeros(0, np.int64))
    return Points3D(ids=np.asarray(ids, dtype=np.int64),
                    xyz=np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
                    rgb=np.asarray(rgb, dtype=np.uint8).reshape(-1, 3),
                    error=np.asarray(err, dtype=np.float64), track_image=cat(t_img),
                    track_point=cat(t_pt))


def model_file(folder: str, stem: str) -> str | None:
    """folder/stem.bin, else folder/stem.txt, else None (COLMAP prefers the binary form too)."""
    for ext in (".bin", ".txt"):
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def qvec_to_rotmat(qvec) -> np.ndarray:
    """[3, 3] rotation of a quaternion (w, x, y, z); normalised first (text files round it)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
