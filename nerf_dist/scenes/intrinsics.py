"""The one parser of instant-ngp / nerfstudio intrinsics: the ngp scene reader and camera-path
files (``transforms.json`` as a path, our own JSON format) both read cameras through it, so a path
made from a scene's own transforms file has exactly the scene's cameras.

Keys, each taken from the frame when the frame has it, else from the top level:
``fl_x``, ``fl_y`` (focal lengths in pixels) or ``camera_angle_x``, ``camera_angle_y`` (full field
of view in radians, in (0, pi); they need the image width / height); ``fl_y`` defaults to ``fl_x``
and ``fl_x`` to ``fl_y``. ``cx``, ``cy`` (principal point; None here = the image centre, which
the caller knows). ``w``, ``h`` (image size as the file states it). OpenCV distortion ``k1 k2 p1
p2`` (0 when absent); ``k3``, ``k4`` are reported in :attr:`Intrinsics.extra`, not used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .base import SceneError

DIST_KEYS = ("k1", "k2", "p1", "p2")


@dataclass(frozen=True)
class Intrinsics:
    """One frame's merged intrinsics (pixels of the file's own image size).

    cx, cy: None when neither the frame nor the top level names them (the image centre).
    w, h: the size the file states (None when it states none). distortion: (k1, k2, p1, p2).
    has_dist: some distortion key is present (pinhole otherwise). extra: k3/k4 keys set to a
    non-zero value (ignored, for a warning).
    """

    fx: float
    fy: float
    cx: float | None
    cy: float | None
    w: float | None
    h: float | None
    distortion: tuple[float, float, float, float]
    has_dist: bool
    extra: tuple[str, ...]

    def K(self, w: float, h: float, factor: int = 1) -> list[list[float]]:
        """[3, 3] pinhole matrix for an image of w x h pixels (the principal point's default),
        scaled by 1 / factor (a downscaled image)."""
        cx = self.cx if self.cx is not None else w / 2.0
        cy = self.cy if self.cy is not None else h / 2.0
        return [[self.fx / factor, 0.0, cx / factor], [0.0, self.fy / factor, cy / factor],
                [0.0, 0.0, 1.0]]


def number(v, key: str, where: str, error: type[Exception] = SceneError) -> float:
    """float(v), or error naming where and the field when v is not a finite number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise error(f"{where}: field '{key}' must be a finite number, got {v!r}")
    return float(v)


def parse_intrinsics(top: dict, frame: dict, where: str, size: tuple[float, float] | None = None,
                     error: type[Exception] = SceneError) -> Intrinsics:
    """A frame's intrinsics, its own fields winning over the top level's (module docstring).

    top: the file's top-level object; frame: one entry of its ``frames``; where: names the file
    and frame in errors; size: (w, h) of the image when the caller knows it (the field of view
    and the principal point need it when the file states no ``w``/``h``). error: the exception
    type raised for bad values (SceneError for scenes, CameraPathError for paths).
    """
    top_where = f"{where} (top level)"

    def get(key):
        if key in frame:
            return number(frame[key], key, where, error)
        if key in top:
            return number(top[key], key, top_where, error)
        return None

    w, h = get("w"), get("h")
    w_img = w if w is not None else (size[0] if size is not None else None)
    h_img = h if h is not None else (size[1] if size is not None else None)

    def focal(fl_key: str, angle_key: str, length, size_key: str):
        # NOTE: a frame's own focal or angle wins over any top-level one.
        for src, label in ((frame, where), (top, top_where)):
            if fl_key in src:
                return number(src[fl_key], fl_key, label, error)
            if angle_key in src:
                ang = number(src[angle_key], angle_key, label, error)
                if not 0 < ang < math.pi:
                    raise error(f"{label}: field '{angle_key}' must be in (0, pi) radians, got {ang}")
                if length is None:
                    raise error(f"{label}: '{angle_key}' needs the image size: missing field "
                                f"'{size_key}'")
                return 0.5 * length / math.tan(0.5 * ang)
        return None

    fx = focal("fl_x", "camera_angle_x", w_img, "w")
    fy = focal("fl_y", "camera_angle_y", h_img, "h")
    if fx is None and fy is None:
        raise error(f"{where}: missing field 'fl_x' (or 'camera_angle_x'): no focal length")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if fx <= 0 or fy <= 0:
        raise error(f"{where}: focal lengths must be > 0, got fl_x={fx}, fl_y={fy}")
    dist = tuple(get(k) or 0.0 for k in DIST_KEYS)
    extra = tuple(k for k in ("k3", "k4") if get(k))
    return Intrinsics(fx=fx, fy=fy, cx=get("cx"), cy=get("cy"), w=w, h=h,
                      distortion=dist,  # type: ignore[arg-type]
                      has_dist=any(k in frame or k in top for k in DIST_KEYS), extra=extra)
