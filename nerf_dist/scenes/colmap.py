"""COLMAP scenes: a sparse model (``sparse/0/{cameras,images,points3D}.{bin,txt}``) + ``images/``.

What ``nerf-dist prepare`` writes, and what COLMAP, nerfstudio's ns-process-data and most capture
tools leave behind. The model is read by :mod:`nerf_dist.scenes.colmap_model` (no pycolmap).

Model folder: data.colmap_dir (relative to data.root) when set, else the first of ``sparse/0``,
``sparse`` and data.root itself that holds a cameras file. Images: ``images/NAME`` (NAME as the
model stores it); with data.downscale N, ``images_N/NAME`` when that folder exists (nerfstudio
writes them; intrinsics follow the files' size), else the full images are area-averaged.

Cameras: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV become K plus OpenCV
k1 k2 p1 p2 (what :func:`nerf_dist.render_ops.rays.make_rays` undistorts); one camera per image
is fine (per-frame K), but every image of a split must have one size. Other models
(OPENCV_FISHEYE, FULL_OPENCV, ...) are refused by name: make_rays has no fisheye or
higher-order distortion.

Pixels: COLMAP puts the centre of the top-left pixel at (0.5, 0.5), as
:mod:`nerf_dist.render_ops.rays` does, so cx, cy are used as they are: a 3D point projects to the
pixel COLMAP measured.

Poses: ``x_cam = R(q) x_world + t`` (OpenCV axes) becomes camera-to-world in the OpenGL
convention (c2w = [R^T | -R^T t] with the y and z axes negated). Then the whole scene (every
registered image, whatever the split, so splits share one frame) is normalised:
``x_scene = scale * rotation @ (x_world - offset)``, stored as meta['transform'] (4x4) with
meta['rotation'], meta['offset'], meta['scale'] (its inverse maps points and poses back):

- rotation (data.orient): 'up' turns the mean camera up vector to +z (the renderer's orbit and
  most viewers expect it); 'pca' takes the principal axes of the camera centres (smallest
  spread = z, signed so cameras look upright); 'none' keeps COLMAP's axes.
- offset: the mean camera centre; scale: the cameras fit in [-1, 1]^3 (as the ngp reader does).

Bounds: the scene box is [-s, s]^3, s = the 99th percentile of the sparse points' largest
coordinate (scene units), clipped to [1, 16] (meta['aabb_scale']). near / far: per image, the 1st
and 99th percentile of the distances from the camera to the points it observes (meta['near_far']);
the scene's near is half the smallest, its far 1.5 times the largest (margins for content the
sparse points miss). Fallback (no points3D file, or no image observing at least MIN_POINTS
points): near = 0.05, far = 2 sqrt(3) s, as the ngp reader; meta['bounds_from'] says which.

Splits: the registered images sorted by name; every data.llff_hold-th (i % hold == 0) is 'test'
and 'val' (the mip-NeRF 360 convention), the rest 'train'. A split file DATA_ROOT/test_list.txt
(one image name per line; '#' comments) overrides that: the images it names are 'test' and 'val',
the others 'train'.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from .base import Scene, SceneError, SceneFiles, inside_root
from .colmap_model import (Camera, Image, Points3D, model_file, qvec_to_rotmat, read_cameras,
                           read_images, read_points3D)
from .images import background_of, drop_missing, image_folder
from .lazy import LazyScene, probe_size

NEAR_FALLBACK = 0.05
MIN_POINTS = 8
MAX_AABB_SCALE = 16.0
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
MODEL_DIRS = ("sparse/0", "sparse", ".")


def find_model(root: str, colmap_dir: str = "") -> str | None:
    """The model folder of a scene (see the module docstring), or None when there is none."""
    cands = (colmap_dir,) if colmap_dir else MODEL_DIRS
    for d in cands:
        folder = os.path.normpath(os.path.join(root, d))
        if model_file(folder, "cameras") is not None:
            return folder
    return None


def camera_intrinsics(cam: Camera, where: str) -> tuple[float, float, float, float, list[float]]:
    """(fx, fy, cx, cy, [k1, k2, p1, p2]) of a COLMAP camera in its own pixel units; SceneError
    naming the model for the ones make_rays cannot undistort."""
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], [0.0, 0.0, 0.0, 0.0]
    if cam.model == "PINHOLE":
        return p[0], p[1], p[2], p[3], [0.0, 0.0, 0.0, 0.0]
    if cam.model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], [p[3], 0.0, 0.0, 0.0]
    if cam.model == "RADIAL":
        return p[0], p[0], p[1], p[2], [p[3], p[4], 0.0, 0.0]
    if cam.model == "OPENCV":
        return p[0], p[1], p[2], p[3], list(p[4:8])
    raise SceneError(
        f"{where}: camera {cam.camera_id} uses the COLMAP camera model {cam.model}, which nerf_dist "
        f"cannot use: its rays support {', '.join(SUPPORTED)} (OpenCV k1 k2 p1 p2 distortion "
        f"only). Undistort the images first (colmap image_undistorter writes a PINHOLE model), "
        f"or solve again with one of those models (nerf-dist prepare --camera-model OPENCV)")


def colmap_c2w(img: Image) -> np.ndarray:
    """c2w [3, 4] (OpenGL axes) of a COLMAP image's world-to-camera qvec, tvec."""
    R = qvec_to_rotmat(img.qvec)
    c2w = np.zeros((3, 4))
    c2w[:, :3] = R.T
    c2w[:, 3] = -R.T @ np.asarray(img.tvec, dtype=np.float64)
    # NOTE: OpenCV camera axes (y down, z forward) -> OpenGL (y up, z backward).
    c2w[:, 1:3] *= -1.0
    return c2w


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[3, 3] rotation taking unit vector a to unit vector b (Rodrigues)."""
    v, c = np.cross(a, b), float(a @ b)
    if c < -1.0 + 1e-9:  # opposite: half a turn about any axis normal to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def orientation(c2w: np.ndarray, how: str) -> np.ndarray:
    """[3, 3] world rotation of data.orient for the cameras c2w [n, 3, 4] (OpenGL)."""
    up = c2w[:, :, 1].mean(0)
    if how == "none" or np.linalg.norm(up) < 1e-9:
        return np.eye(3)
    up = up / np.linalg.norm(up)
    if how == "up":
        return _rotation_between(up, np.array([0.0, 0.0, 1.0]))
    centres = c2w[:, :, 3] - c2w[:, :, 3].mean(0)
    _, vecs = np.linalg.eigh(centres.T @ centres)  # ascending eigenvalues
    rot = vecs[:, ::-1].T.copy()  # rows: largest spread -> x, smallest -> z
    if rot[2] @ up < 0:
        rot[2] *= -1.0
    if np.linalg.det(rot) < 0:
        rot[1] *= -1.0
    return rot


@dataclass
class ColmapIndex:
    """What :func:`load_colmap` reads, found without decoding an image.

    model_dir; cam_path, img_path, pts_path (None when there is no points3D file): the model
    files; cameras, images: parsed ({id: ...}); order: every image id sorted by name; chosen: the
    split's image ids (missing files dropped with data.skip_missing); files: their image paths;
    folder, factor: the image folder and the downscale still to apply.
    """

    model_dir: str
    cam_path: str
    img_path: str
    pts_path: str | None
    cameras: dict
    images: dict
    order: list[int]
    chosen: list[int]
    files: list[str]
    folder: str
    factor: int
    split_file: str | None = None

    @property
    def sources(self) -> SceneFiles:
        meta = (self.cam_path, self.img_path) + ((self.pts_path,) if self.pts_path else ()) + \
            ((self.split_file,) if self.split_file else ())
        return SceneFiles(meta=meta, data=tuple(self.files))


SPLIT_FILE = "test_list.txt"


def held_out(root: str, names: list[str], hold: int) -> tuple[list[bool], str | None]:
    """Which of `names` (sorted) are held out: those DATA_ROOT/test_list.txt names when the file
    exists (SceneError naming it and the unknown names otherwise), else every hold-th.
    -> (held [n], the split file or None)."""
    path = os.path.join(root, SPLIT_FILE)
    if not os.path.isfile(path):
        return [k % hold == 0 for k in range(len(names))], None
    with open(path, encoding="utf-8") as f:
        listed = {ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")}
    unknown = sorted(listed - set(names))
    if unknown:
        raise SceneError(f"{path}: {len(unknown)} name(s) are not registered images of the model: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return [n in listed for n in names], path


def index_colmap(data_cfg: DataConfig, split: str) -> ColmapIndex:
    """Parse the model's cameras and images and resolve (and check) the split's image files."""
    root = str(data_cfg.root)
    model_dir = find_model(root, data_cfg.colmap_dir)
    if model_dir is None:
        where = data_cfg.colmap_dir or " or ".join(MODEL_DIRS)
        raise SceneError(f"no COLMAP model in {root}: no cameras.bin or cameras.txt under {where}")
    cam_path = model_file(model_dir, "cameras")
    img_path = model_file(model_dir, "images")
    if img_path is None:
        raise SceneError(f"COLMAP model {model_dir}: images.bin / images.txt not found next to "
                         f"{cam_path}")
    cameras = read_cameras(cam_path)
    images = read_images(img_path)
    if not images:
        raise SceneError(f"{img_path}: the model has no registered images")
    for img in images.values():
        if img.camera_id not in cameras:
            raise SceneError(f"{img_path}: image {img.image_id} ({img.name}) refers to camera "
                             f"{img.camera_id}, which {cam_path} does not define")
    order = sorted(images, key=lambda i: images[i].name)
    hold = data_cfg.llff_hold
    held, split_file = held_out(root, [images[i].name for i in order], hold)
    chosen = [i for i, h in zip(order, held) if h == (split != "train")]
    if not chosen:
        raise SceneError(f"{img_path}: split '{split}' is empty ({len(order)} images, "
                         f"{split_file or f'llff_hold={hold}'})")
    folder, factor = image_folder(root, data_cfg.downscale, "COLMAP")
    paths = [inside_root(root, folder, images[i].name, data_cfg.allow_outside_root,
                         f"{img_path}: image {i}", "name") for i in chosen]
    keep = drop_missing(paths, data_cfg.skip_missing, img_path, chosen)
    if not keep:
        raise SceneError(f"{img_path}: split '{split}' is empty: every image is missing")
    return ColmapIndex(model_dir=model_dir, cam_path=cam_path, img_path=img_path,
                       pts_path=model_file(model_dir, "points3D"), cameras=cameras, images=images,
                       order=order, chosen=[chosen[k] for k in keep],
                       files=[paths[k] for k in keep], folder=folder, factor=factor,
                       split_file=split_file)


def _bounds(points: Points3D | None, ids: list[int], centres: np.ndarray,
            to_scene) -> tuple[np.ndarray, float]:
    """(near_far [n, 2] per image of ids (nan where too few points), aabb scale s)."""
    nf = np.full((len(ids), 2), np.nan)
    if points is None or len(points.ids) == 0:
        return nf, 1.0
    xyz = to_scene(points.xyz)
    extent = np.percentile(np.abs(xyz).max(1), 99)
    s = float(min(max(extent, 1.0), MAX_AABB_SCALE))
    row = {i: k for k, i in enumerate(ids)}
    for k_img in np.unique(points.track_image):
        if int(k_img) not in row:
            continue
        k = row[int(k_img)]
        seen = np.unique(points.track_point[points.track_image == k_img])
        if len(seen) < MIN_POINTS:
            continue
        d = np.linalg.norm(xyz[seen] - centres[k], axis=1)
        nf[k] = np.percentile(d, [1.0, 99.0])
    return nf, s


def open_colmap(data_cfg: DataConfig, split: str) -> LazyScene:
    """One split of a COLMAP scene, images not yet decoded (see :func:`load_colmap`)."""
    ix = index_colmap(data_cfg, split)
    cams = [ix.cameras[ix.images[i].camera_id] for i in ix.chosen]
    sizes = {(c.width, c.height) for c in cams}
    if len(sizes) > 1:
        raise SceneError(f"{ix.cam_path}: the images of split '{split}' come from cameras of "
                         f"several sizes {sorted(sizes)}; nerf_dist needs one image size per "
                         f"split (resize the images and cameras to one size)")
    h0, w0 = probe_size(ix.files[0], ix.factor)
    cw, ch = cams[0].width, cams[0].height
    if os.path.basename(ix.folder) == "images":
        if (w0, h0) != (cw, ch):
            raise SceneError(f"{ix.files[0]} is {w0}x{h0} (W x H) but its camera in "
                             f"{ix.cam_path} is {cw}x{ch}")
        sx = sy = 1.0 / ix.factor
    else:
        # NOTE: images_N/ files were resized by another tool (sizes rounded its way): the
        # intrinsics follow the files' actual size.
        sx, sy = w0 / cw, h0 / ch

    # NOTE: normalise with every registered image (every split) so that splits share one frame.
    all_c2w = np.stack([colmap_c2w(ix.images[i]) for i in ix.order])
    rot = orientation(all_c2w, data_cfg.orient)
    centres = all_c2w[:, :, 3] @ rot.T
    offset_r = centres.mean(0)
    extent = float(np.abs(centres - offset_r).max())
    scale = 1.0 / extent if extent > 1e-12 else 1.0
    offset = rot.T @ offset_r  # in world coordinates

    def to_scene(x: np.ndarray) -> np.ndarray:
        return scale * (x - offset) @ rot.T

    pos = {i: k for k, i in enumerate(ix.order)}
    c2w = np.stack([all_c2w[pos[i]] for i in ix.chosen])
    c2w[:, :, :3] = rot[None] @ c2w[:, :, :3]
    c2w[:, :, 3] = to_scene(c2w[:, :, 3])

    points = read_points3D(ix.pts_path) if ix.pts_path else None
    nf, s = _bounds(points, ix.order, to_scene(all_c2w[:, :, 3]), to_scene)
    ok = ~np.isnan(nf[:, 0])
    if ok.any():
        near = max(0.5 * float(nf[ok, 0].min()), 1e-3)
        far = 1.5 * float(nf[ok, 1].max())
        bounds_from = "points"
    else:
        near, far, bounds_from = NEAR_FALLBACK, 2.0 * math.sqrt(3.0) * s, "fallback"

    n = len(cams)
    K = np.zeros((n, 3, 3))
    dist = np.zeros((n, 4))
    for k, (i, cam) in enumerate(zip(ix.chosen, cams)):
        fx, fy, cx, cy, d = camera_intrinsics(cam, ix.cam_path)
        K[k] = [[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]]
        dist[k] = d
    transform = np.eye(4)
    transform[:3, :3] = scale * rot
    transform[:3, 3] = -scale * rot @ offset
    return LazyScene(
        files=ix.files, factor=ix.factor, background=background_of(data_cfg), source=ix.img_path,
        frame_ids=list(ix.chosen), size0=(h0, w0), split=split,
        K=torch.from_numpy(K.astype(np.float32)), c2w=torch.from_numpy(c2w.astype(np.float32)),
        near=near, far=far, aabb=torch.tensor([[-s] * 3, [s] * 3], dtype=torch.float32),
        distortion=torch.from_numpy(dist.astype(np.float32)) if np.any(dist != 0) else None,
        meta={"format": "colmap", "root": str(data_cfg.root), "model": ix.model_dir,
              "camera_models": sorted({c.model for c in cams}), "orient": data_cfg.orient,
              "transform": transform.tolist(), "rotation": rot.tolist(),
              "offset": offset.tolist(), "scale": scale, "aabb_scale": s,
              "bounds_from": bounds_from, "n_points": 0 if points is None else len(points.ids),
              "near_far": {ix.images[i].name: nf[pos[i]].tolist() for i in ix.chosen},
              "downscale": data_cfg.downscale},
        sources=ix.sources,
    )


def colmap_points(data_cfg: DataConfig) -> np.ndarray | None:
    """The sparse points [n, 3] float64 in the scene's frame (the normalisation open_colmap
    applies), or None when the model has no points3D file."""
    ix = index_colmap(data_cfg, "train")
    if not ix.pts_path:
        return None
    meta = open_colmap(data_cfg, "train").meta
    rot, offset = np.asarray(meta["rotation"]), np.asarray(meta["offset"])
    return float(meta["scale"]) * (read_points3D(ix.pts_path).xyz - offset) @ rot.T


def load_colmap(data_cfg: DataConfig, split: str) -> Scene:
    """Read one split of a COLMAP scene (see the module docstring).

    Returns a Scene with images [n, H, W, 3], K [n, 3, 3] (per image, scaled to the loaded size),
    distortion [n, 4] (k1 k2 p1 p2; None when every camera is undistorted), c2w [n, 3, 4]
    (OpenGL, normalised), near / far from the sparse points and aabb [-s, s]^3. Reads exactly
    ``index_colmap(data_cfg, split).sources`` plus nothing else (recorded as Scene.sources).
    """
    return open_colmap(data_cfg, split).load()
