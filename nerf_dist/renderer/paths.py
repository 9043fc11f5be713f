"""Camera paths: a 360-degree orbit, a forward-facing spiral, a dataset split, a JSON file.

A :class:`CameraPath` is n cameras of one image size: K [n, 3, 3], c2w [n, 3, 4] (OpenGL /
Blender: x right, y up, looking down -z), in the scene's world coordinates (the ones the training
cameras use after the scene reader's normalisation), and optionally per-frame OpenCV lens
distortion [n, 4] (k1 k2 p1 p2), which rays undo exactly as training's do (nerf_dist.render_ops.rays).

Camera-path JSON, our format (a Blender/instant-ngp ``transforms.json`` is also accepted)::

    {
      "camera_model": "pinhole",           # optional; "pinhole", or "opencv" with distortion
      "width": 800, "height": 600,         # image size in pixels (or "w", "h")
      "fl_x": 1111.1, "fl_y": 1111.1,      # focal lengths in pixels (fl_y defaults to fl_x);
                                           #   or "camera_angle_x" (horizontal FOV, radians)
      "cx": 400.0, "cy": 300.0,            # principal point (default: image centre)
      "k1": -0.1, "k2": 0.01,              # optional OpenCV distortion k1 k2 p1 p2 (default 0),
      "p1": 0.0, "p2": 0.0,                #   as in instant-ngp's transforms.json
      "frames": [                          # one entry per output frame, in order
        {"transform_matrix": [[r, r, r, tx], [r, r, r, ty], [r, r, r, tz], [0, 0, 0, 1]]},
        ...                                # a frame may override fl_x, fl_y, cx, cy (zoom)
      ]                                    #   and k1 k2 p1 p2
    }

Intrinsics are read by the instant-ngp scene reader's own parser
(:mod:`nerf_dist.scenes.intrinsics`): each key from the frame when it has it, else from the top
level. Distortion is kept only when the file names k1, k2, p1 or p2 somewhere (else cameras are
pinhole); k3 and k4 are ignored with a warning, as the instant-ngp scene reader does.

Coordinates: ``"coordinates": "scene"`` (what :func:`write_camera_path` writes) means the poses
are in the scene's frame, as the training cameras are after the reader's normalisation;
``"coordinates": "world"`` means the capture's own frame, as in the scene's transforms.json.
Without the key, a file whose frames name a ``file_path`` (a scene's transforms.json) is in
"world" coordinates, any other in "scene" coordinates. `render` moves a "world" path into the
scene's frame with the scene's recorded normalisation (:func:`in_scene_frame`), so a path made
from an instant-ngp scene's own transforms.json renders from its training cameras.

nerfstudio's ``camera_path.json`` (as written by its viewer / ``ns-render``) is read too::

    {"render_width": W, "render_height": H, "camera_type": "perspective",
     "camera_path": [{"camera_to_world": [16 numbers, row-major 4x4], "fov": 50.0,
                      "aspect": 1.333}, ...], "seconds": 4, "fps": 24}

``fov`` is the vertical field of view in degrees; ``render_width`` defaults to
``render_height * aspect``. Poses are taken as given (nerfstudio's own world normalisation is not
undone). Any other camera_type is refused. Errors name the file and the frame / field.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import storage
from ..export.frame import move_poses
from ..memory import MAX_SIDE
from ..scenes.base import to_scene_frame
from ..scenes.intrinsics import DIST_KEYS, parse_intrinsics

COORDINATES = ("scene", "world")

class CameraPathError(ValueError):
    """A malformed camera-path file or unusable cameras; the message names the file and field."""


@dataclass
class CameraPath:
    """n cameras of one image size. K: [n, 3, 3]; c2w: [n, 3, 4]; name: where it came from.

    distortion: [n, 4] OpenCV k1 k2 p1 p2 per frame (on normalised image coordinates, so it does
    not change with the image size), or None for pinhole cameras.
    """

    K: torch.Tensor
    c2w: torch.Tensor
    H: int
    W: int
    name: str
    meta: dict = field(default_factory=dict)
    distortion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.distortion is not None and tuple(self.distortion.shape) != (self.n, 4):
            raise CameraPathError(f"camera path {self.name}: distortion must be [{self.n}, 4] "
                                  f"(k1 k2 p1 p2 per frame), got {list(self.distortion.shape)}")

    @property
    def n(self) -> int:
        return int(self.c2w.shape[0])

    def _dist(self, n: int | None = None) -> torch.Tensor | None:
        return None if self.distortion is None else self.distortion[:n].clone()

    def resized(self, W: int, H: int) -> CameraPath:
        """The same cameras at another image size (intrinsics scaled per axis; the distortion,
        defined on normalised coordinates, is unchanged)."""
        K = self.K.clone()
        K[:, 0] *= W / self.W
        K[:, 1] *= H / self.H
        return CameraPath(K, self.c2w.clone(), H, W, self.name, dict(self.meta), self._dist())

    def first(self, n: int) -> CameraPath:
        return CameraPath(self.K[:n].clone(), self.c2w[:n].clone(), self.H, self.W, self.name,
                          dict(self.meta), self._dist(n))

    def to_json(self) -> dict:
        """Our camera-path JSON format (per-frame intrinsics and, when present, distortion)."""
        dists = self.distortion.tolist() if self.distortion is not None else [None] * self.n
        frames = []
        for K, c2w, d in zip(self.K.tolist(), self.c2w.tolist(), dists):
            fr = {"transform_matrix": [*c2w, [0.0, 0.0, 0.0, 1.0]],
                  "fl_x": K[0][0], "fl_y": K[1][1], "cx": K[0][2], "cy": K[1][2]}
            if d is not None:
                fr.update(zip(DIST_KEYS, d))
            frames.append(fr)
        K0 = self.K[0].tolist()
        return {"camera_model": "pinhole" if self.distortion is None else "opencv",
                "coordinates": "scene", "width": self.W, "height": self.H, "fl_x": K0[0][0],
                "fl_y": K0[1][1], "cx": K0[0][2], "cy": K0[1][2], "frames": frames}


def parse_resolution(text: str) -> tuple[int, int]:
    """'WxH' (or 'N' for N x N) -> (W, H); ValueError for anything else or a zero side."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2:
        raise ValueError(f"--resolution must look like WxH (e.g. 800x600), got {text!r}")
    W, H = nums
    if W < 1 or H < 1:
        raise ValueError(f"--resolution must be at least 1x1, got {text!r}")
    if W > MAX_SIDE or H > MAX_SIDE:
        raise ValueError(f"--resolution {text!r} is beyond any sensible size (at most {MAX_SIDE} "
                         f"pixels a side)")
    return W, H


# ------------------------------------------------------------------------------ geometry

def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 1e-12 else v


def look_at(pos: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """c2w [3, 4] (OpenGL) of a camera at pos looking at target with the given up direction."""
    z = _normalise(pos - target)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:  # looking straight along up: pick any perpendicular x
        x = np.cross(np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]), z)
    x = _normalise(x)
    y = np.cross(z, x)
    return np.stack([x, y, z, pos], 1)


def orbit_params(c2w: torch.Tensor | np.ndarray) -> dict:
    """Centre, up, radius and elevation of an object-centred camera rig.

    c2w: [n, 3|4, 4]. centre: the point nearest (least squares) to every optical axis; up: the
    mean camera up vector; radius: the median camera distance to the centre; elevation: the
    median angle (radians) of the camera above the plane through the centre normal to up.
    azimuth0: the direction (unit, normal to up) of the first camera, where the orbit starts.
    """
    m = np.asarray(c2w, dtype=np.float64)[:, :3, :4]
    pos, axis = m[:, :, 3], -m[:, :, 2]
    axis = axis / np.linalg.norm(axis, axis=1, keepdims=True)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for p, d in zip(pos, axis):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ p
    if np.linalg.cond(A) < 1e6:
        centre = np.linalg.solve(A, b)
    else:  # parallel axes (one camera, or a forward-facing rig): look at the origin
        centre = np.zeros(3)
    up = _normalise(m[:, :, 1].mean(0))
    if np.linalg.norm(m[:, :, 1].mean(0)) < 1e-6:
        up = np.array([0.0, 0.0, 1.0])
    off = pos - centre
    dist = np.linalg.norm(off, axis=1)
    elev = np.arcsin(np.clip((off @ up) / np.maximum(dist, 1e-12), -1.0, 1.0))
    flat = off[0] - (off[0] @ up) * up
    if np.linalg.norm(flat) < 1e-9:
        flat = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    return {"centre": centre, "up": up, "radius": float(np.median(dist)),
            "elevation": float(np.median(elev)), "azimuth0": _normalise(flat)}


def orbit_path(train_c2w, K: torch.Tensor, H: int, W: int, n_frames: int,
               radius: float | None = None, elevation_deg: float | None = None) -> CameraPath:
    """A full 360-degree turn around the training cameras' centre (object-centred scenes).

    Radius and elevation default to :func:`orbit_params` of the training cameras; intrinsics K
    [3, 3] (the first training camera's) are used for every frame. The last frame stops one step
    short of the first, so the video loops seamlessly.
    """
    if n_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {n_frames}")
    p = orbit_params(train_c2w)
    r = p["radius"] if radius is None else float(radius)
    el = p["elevation"] if elevation_deg is None else math.radians(elevation_deg)
    e1, up = p["azimuth0"], p["up"]
    e2 = np.cross(up, e1)
    poses = []
    for k in range(n_frames):
        a = 2.0 * math.pi * k / n_frames
        pos = p["centre"] + r * (math.cos(el) * (math.cos(a) * e1 + math.sin(a) * e2)
                                 + math.sin(el) * up)
        poses.append(look_at(pos, p["centre"], up))
    c2w = torch.from_numpy(np.stack(poses).astype(np.float32))
    Ks = torch.as_tensor(K, dtype=torch.float32).reshape(1, 3, 3).repeat(n_frames, 1, 1)
    meta = {"kind": "orbit", "radius": r, "elevation_deg": math.degrees(el),
            "centre": p["centre"].tolist(), "up": p["up"].tolist()}
    return CameraPath(Ks, c2w, H, W, "orbit", meta)


def spiral_path(train_c2w, K: torch.Tensor, H: int, W: int, n_frames: int,
                bounds: tuple[float, float], rotations: float = 2.0, zrate: float = 0.5,
                ) -> CameraPath:
    """A spiral in front of a forward-facing rig (LLFF-style), looking at a focus plane.

    The spiral is centred on the average pose; its radii are the 90th percentile of the camera
    offsets along the average pose's axes; it looks at a point at the focus depth computed from
    the scene bounds (near, far) as in the NeRF paper's spiral renders.
    """
    if n_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {n_frames}")
    m = np.asarray(train_c2w, dtype=np.float64)[:, :3, :4]
    centre = m[:, :, 3].mean(0)
    z = _normalise(m[:, :, 2].sum(0))
    up = _normalise(m[:, :, 1].sum(0))
    x = _normalise(np.cross(up, z))
    y = np.cross(z, x)
    R = np.stack([x, y, z], 1)
    local = (m[:, :, 3] - centre) @ R                      # offsets in the average camera's axes
    rads = np.percentile(np.abs(local), 90, axis=0)
    near, far = float(bounds[0]), float(bounds[1])
    close, inf = 0.9 * near, 5.0 * far
    dt = 0.75
    focus = 1.0 / ((1.0 - dt) / max(close, 1e-6) + dt / max(inf, 1e-6))
    target = centre - focus * z
    poses = []
    for k in range(n_frames):
        th = 2.0 * math.pi * rotations * k / n_frames
        off = np.array([math.cos(th), -math.sin(th), -math.sin(th * zrate)]) * rads
        pos = centre + R @ off
        poses.append(look_at(pos, target, up))
    c2w = torch.from_numpy(np.stack(poses).astype(np.float32))
    Ks = torch.as_tensor(K, dtype=torch.float32).reshape(1, 3, 3).repeat(n_frames, 1, 1)
    meta = {"kind": "spiral", "focus_depth": focus, "radii": rads.tolist(),
            "rotations": rotations}
    return CameraPath(Ks, c2w, H, W, "spiral", meta)


def split_path(scene) -> CameraPath:
    """The cameras of a loaded Scene split, with its per-frame lens distortion (if any)."""
    dist = scene.distortion.clone().float() if scene.distortion is not None else None
    return CameraPath(scene.K.clone().float(), scene.c2w[:, :3, :4].clone().float(), scene.H,
                      scene.W, scene.split, {"kind": "split", "split": scene.split,
                                             "files": list(scene.files)}, dist)


# ------------------------------------------------------------------------------ JSON files

def _num(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise CameraPathError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _size(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or int(v) < 1:
        raise CameraPathError(f"{where}: expected a positive whole number of pixels, got {v!r}")
    return int(v)


def _pose(raw, where: str) -> np.ndarray:
    """A 4x4 / 3x4 nested list or a flat list of 16 (row-major) -> c2w [3, 4], validated."""
    try:
        a = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise CameraPathError(f"{where}: expected a 4x4 matrix of numbers") from None
    if a.shape == (16,):
        a = a.reshape(4, 4)
    if a.shape not in ((4, 4), (3, 4)):
        raise CameraPathError(f"{where}: expected a 4x4 (or 3x4) matrix, got shape {list(a.shape)}")
    if not np.all(np.isfinite(a)):
        raise CameraPathError(f"{where}: matrix holds non-finite values")
    R = a[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise CameraPathError(f"{where}: the rotation part is not a rotation (orthonormal, det +1)"
                              f"; scaled or mirrored poses are not supported")
    return a[:3, :4]


def load_camera_path(path: str) -> CameraPath:
    """Read a camera-path JSON file (our format, transforms.json or nerfstudio camera_path.json)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CameraPathError(f"camera path file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CameraPathError(f"camera path {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CameraPathError(f"camera path {path}: top level must be an object")
    if "camera_path" in data:
        return _nerfstudio(data, path)
    return _ours(data, path)


def _ours(data: dict, path: str) -> CameraPath:
    model = data.get("camera_model", "pinhole")
    if str(model).lower() not in ("pinhole", "opencv", "perspective"):
        raise CameraPathError(f"camera path {path}: camera_model {model!r} is not supported "
                              f"(pinhole, or opencv with k1 k2 p1 p2)")
    W = data.get("width", data.get("w"))
    H = data.get("height", data.get("h"))
    if W is None or H is None:
        raise CameraPathError(f"camera path {path}: missing 'width'/'height' (image size)")
    W, H = _size(W, f"camera path {path}: width"), _size(H, f"camera path {path}: height")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise CameraPathError(f"camera path {path}: 'frames' must be a non-empty list")

    coords = data.get("coordinates")
    if coords is None:
        coords = "world" if any(isinstance(fr, dict) and "file_path" in fr for fr in frames) \
            else "scene"
    if coords not in COORDINATES:
        raise CameraPathError(f"camera path {path}: 'coordinates' must be one of {COORDINATES}, "
                              f"got {coords!r}")
    Ks, poses, dists = [], [], []
    has_dist, ignored = False, set()
    for i, fr in enumerate(frames):
        where = f"camera path {path}: frame {i}"
        if not isinstance(fr, dict):
            raise CameraPathError(f"{where}: expected an object")
        if "transform_matrix" not in fr:
            raise CameraPathError(f"{where}: missing 'transform_matrix'")
        poses.append(_pose(fr["transform_matrix"], f"{where}: transform_matrix"))
        it = parse_intrinsics(data, fr, where, (W, H), CameraPathError)
        Ks.append(it.K(W, H))
        dists.append(list(it.distortion))
        has_dist = has_dist or it.has_dist
        ignored |= set(it.extra)
    if ignored:
        warnings.warn(f"camera path {path}: distortion fields {sorted(ignored)} are ignored "
                      f"(only k1 k2 p1 p2 are used)", stacklevel=3)
    return CameraPath(torch.tensor(Ks, dtype=torch.float32),
                      torch.from_numpy(np.stack(poses).astype(np.float32)), H, W,
                      os.path.basename(path), {"kind": "file", "file": path, "format": "nerf_dist",
                                               "coordinates": coords},
                      torch.tensor(dists, dtype=torch.float32) if has_dist else None)


def in_scene_frame(cams: CameraPath, scene_meta: dict) -> CameraPath:
    """A camera path in the scene's frame: ``cams`` itself unless its meta says "world"
    coordinates (module docstring), else moved by the scene's recorded normalisation.

    scene_meta: ``Scene.meta`` / ``LazyScene.meta`` of the scene rendered. Instant-ngp scenes
    record ``world_to_scene`` (:func:`nerf_dist.scenes.base.to_scene_frame`); COLMAP and LLFF
    scenes a 4x4 ``transform`` (x_scene = T x_world); Blender scenes are not normalised (world =
    scene). A reader that records no map refuses a "world" path.
    """
    if cams.meta.get("coordinates", "scene") != "world":
        return cams
    meta = dict(cams.meta, coordinates="scene")
    w2s = scene_meta.get("world_to_scene")
    if w2s is None and scene_meta.get("format") == "blender":
        return CameraPath(cams.K.clone(), cams.c2w.clone(), cams.H, cams.W, cams.name, meta,
                          cams._dist())
    if w2s is None and "transform" in scene_meta:
        # NOTE: COLMAP and LLFF readers record x_scene = T x_world as a 4x4 similarity.
        T = np.asarray(scene_meta["transform"], dtype=np.float64).reshape(4, 4)
        c2w = torch.from_numpy(move_poses(T, cams.c2w.numpy())[:, :3].astype(np.float32))
        meta["scene_from_world"] = T.tolist()
        return CameraPath(cams.K.clone(), c2w, cams.H, cams.W, cams.name, meta, cams._dist())
    if w2s is None:
        raise CameraPathError(
            f"camera path {cams.name} is in the capture's world coordinates (a transforms.json, "
            f"or \"coordinates\": \"world\"), but the {scene_meta.get('format', '?')} scene "
            f"reader records no map from those to the scene's frame: write the path in the scene's "
            f"frame and mark it \"coordinates\": \"scene\"")
    c2w = torch.from_numpy(to_scene_frame(cams.c2w.numpy(), w2s).astype(np.float32))
    meta["world_to_scene"] = w2s
    return CameraPath(cams.K.clone(), c2w, cams.H, cams.W, cams.name, meta, cams._dist())


def _nerfstudio(data: dict, path: str) -> CameraPath:
    where0 = f"camera path {path}"
    ctype = data.get("camera_type", "perspective")
    if ctype != "perspective":
        raise CameraPathError(f"{where0}: camera_type {ctype!r} is not supported (perspective only)")
    frames = data["camera_path"]
    if not isinstance(frames, list) or not frames:
        raise CameraPathError(f"{where0}: 'camera_path' must be a non-empty list")
    if "render_height" not in data:
        raise CameraPathError(f"{where0}: missing 'render_height'")
    H = _size(data["render_height"], f"{where0}: render_height")
    if "render_width" in data:
        W = _size(data["render_width"], f"{where0}: render_width")
    else:
        first = frames[0] if isinstance(frames[0], dict) else {}
        if "aspect" not in first:
            raise CameraPathError(f"{where0}: missing 'render_width' (and no 'aspect' to derive it)")
        W = max(1, round(H * _num(first["aspect"], f"{where0}: frame 0: aspect")))
    Ks, poses = [], []
    for i, fr in enumerate(frames):
        where = f"{where0}: camera_path[{i}]"
        if not isinstance(fr, dict):
            raise CameraPathError(f"{where}: expected an object")
        for key in ("camera_to_world", "fov"):
            if key not in fr:
                raise CameraPathError(f"{where}: missing '{key}'")
        poses.append(_pose(fr["camera_to_world"], f"{where}: camera_to_world"))
        fov = _num(fr["fov"], f"{where}: fov")
        if not 0 < fov < 180:
            raise CameraPathError(f"{where}: fov must be in (0, 180) degrees, got {fov}")
        f = 0.5 * H / math.tan(math.radians(fov) / 2.0)
        Ks.append([[f, 0.0, W / 2.0], [0.0, f, H / 2.0], [0.0, 0.0, 1.0]])
    return CameraPath(torch.tensor(Ks, dtype=torch.float32),
                      torch.from_numpy(np.stack(poses).astype(np.float32)), H, W,
                      os.path.basename(path), {"kind": "file", "file": path, "format": "nerfstudio"})


def write_camera_path(path: CameraPath, file: str) -> None:
    """Write `path` in our JSON format (atomically)."""
    with storage.atomic_write(file) as tmp, open(tmp, "w") as f:
        json.dump(path.to_json(), f, indent=1)
