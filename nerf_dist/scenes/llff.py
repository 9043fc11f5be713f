"""LLFF forward-facing scenes: ``poses_bounds.npy`` + ``images/`` (or ``images_{downscale}/``).

poses_bounds.npy is [N, 17]: per view a 3x5 matrix [R | t | hwf] flattened row-major (columns of
R in the LLFF order [down, right, back]; hwf = (H, W, focal) of the full-size images) followed by
the near and far depth bounds. Images are matched to rows by sorted file name.

Processing (as in the NeRF paper code): axes to OpenGL [right, up, back]; scale so that
0.75 * min(bounds) = 1; recenter on the average pose; every ``llff_hold``-th view (i % hold == 0)
is held out as 'test' (and 'val'), the rest is 'train'.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from .base import Scene, SceneError, SceneFiles
from .images import background_of, image_folder, list_images
from .lazy import LazyScene, probe_size


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def view_matrix(z: np.ndarray, up: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """c2w [3, 4] with back axis z, roughly-up vector up, and centre pos (all [3])."""
    z = _normalize(z)
    x = _normalize(np.cross(up, z))
    y = _normalize(np.cross(z, x))
    return np.stack([x, y, z, pos], axis=1)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """Average camera of c2w [n, 3, 4]: mean centre, summed back and up axes. Returns [3, 4]."""
    return view_matrix(c2w[:, :, 2].sum(0), c2w[:, :, 1].sum(0), c2w[:, :, 3].mean(0))


def recenter(c2w: np.ndarray) -> np.ndarray:
    """Express c2w [n, 3, 4] in the frame of their average pose (which becomes the identity)."""
    avg = np.eye(4)
    avg[:3] = average_pose(c2w)
    full = np.tile(np.eye(4), (c2w.shape[0], 1, 1))
    full[:, :3] = c2w
    return (np.linalg.inv(avg)[None] @ full)[:, :3]


def llff_to_opengl(rot: np.ndarray) -> np.ndarray:
    """[..., 3, k] LLFF columns [down, right, back, ...] -> [right, up, back, ...]: [x1, -x0, x2]."""
    return np.concatenate([rot[..., 1:2], -rot[..., 0:1], rot[..., 2:]], axis=-1)


def read_poses_bounds(path: str) -> tuple[np.ndarray, np.ndarray]:
    """poses: [N, 3, 5], bounds: [N, 2] from poses_bounds.npy; SceneError names file and row."""
    if not os.path.isfile(path):
        raise SceneError(f"LLFF poses file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SceneError(f"cannot read {path}: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise SceneError(f"{path}: expected an [N, 17] array (3x5 pose + near, far per view), "
                         f"got shape {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    bad = np.where(~np.isfinite(arr).all(axis=1))[0]
    if bad.size:
        raise SceneError(f"{path}: frame {int(bad[0])}: pose/bounds row has non-finite values")
    bds = arr[:, 15:17]
    if (bds <= 0).any():
        raise SceneError(f"{path}: frame {int(np.where((bds <= 0).any(1))[0][0])}: "
                         f"near/far bounds must be > 0")
    return arr[:, :15].reshape(-1, 3, 5), bds


def split_indices(n: int, hold: int, split: str) -> list[int]:
    """Every hold-th view (i % hold == 0) for 'test'/'val'; the others for 'train'."""
    if split == "train":
        return [i for i in range(n) if i % hold != 0]
    return [i for i in range(n) if i % hold == 0]


@dataclass
class LlffIndex:
    """What :func:`load_llff` reads, found without decoding an image: pb_path, poses [N, 3, 5],
    bounds [N, 2], folder and remaining downscale factor, idx (the split's views) and files (their
    images)."""

    pb_path: str
    poses: np.ndarray
    bds: np.ndarray
    folder: str
    factor: int
    idx: list[int]
    files: list[str]

    @property
    def sources(self) -> SceneFiles:
        # NOTE: the count check lists the whole folder, but only the split's images are read.
        return SceneFiles(meta=(self.pb_path,), data=tuple(self.files))


def index_llff(data_cfg: DataConfig, split: str) -> LlffIndex:
    """Read poses_bounds.npy, list the image folder and pick the split's views."""
    root = data_cfg.root
    pb_path = os.path.join(root, "poses_bounds.npy")
    poses, bds = read_poses_bounds(pb_path)
    folder, factor = image_folder(root, data_cfg.downscale, "LLFF")
    files = list_images(folder)
    if len(files) != poses.shape[0]:
        raise SceneError(f"{pb_path} has {poses.shape[0]} poses but {folder} holds {len(files)} "
                         f"images; they are matched by sorted name and must agree")
    idx = split_indices(poses.shape[0], data_cfg.llff_hold, split)
    if not idx:
        raise SceneError(f"{pb_path}: split '{split}' is empty ({poses.shape[0]} views, "
                         f"llff_hold={data_cfg.llff_hold})")
    return LlffIndex(pb_path=pb_path, poses=poses, bds=bds, folder=folder, factor=factor,
                     idx=idx, files=[files[i] for i in idx])


def open_llff(data_cfg: DataConfig, split: str) -> LazyScene:
    """One split of an LLFF scene, images not yet decoded (see :func:`load_llff`)."""
    root = data_cfg.root
    ix = index_llff(data_cfg, split)
    pb_path, poses, bds, factor, idx, files = ix.pb_path, ix.poses, ix.bds, ix.factor, ix.idx, ix.files

    h0, w0, focal0 = poses[0, :, 4]
    c2w = llff_to_opengl(poses[:, :, :4])
    sc = 1.0 / (bds.min() * 0.75)
    c2w[:, :, 3] *= sc
    bds = bds * sc
    # NOTE: x_scene = avg^-1 (sc x_file), recorded as meta['transform'] (the exporters undo it).
    avg = np.eye(4)
    avg[:3] = average_pose(c2w)
    transform = np.linalg.inv(avg) @ np.diag([sc, sc, sc, 1.0])
    c2w = recenter(c2w)

    bg = background_of(data_cfg)
    size0 = probe_size(files[0], factor)
    n, H, W = len(files), size0[0] // factor, size0[1] // factor
    focal = float(focal0) * W / float(w0)
    K = np.array([[focal, 0.0, W / 2.0], [0.0, focal, H / 2.0], [0.0, 0.0, 1.0]])

    ndc = str(data_cfg.ndc).lower() != "false"
    if ndc:
        near, far = 0.0, 1.0
        aabb = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    else:
        near, far = float(bds.min() * 0.9), float(bds.max() * 1.0)
        centres = c2w[:, :, 3]
        aabb = np.stack([centres.min(0) - far, centres.max(0) + far])

    return LazyScene(
        files=files, factor=factor, background=bg, source=pb_path, frame_ids=idx, size0=size0,
        K=torch.from_numpy(np.repeat(K[None], n, axis=0).astype(np.float32)),
        c2w=torch.from_numpy(c2w[idx].astype(np.float32)),
        near=near, far=far, aabb=torch.from_numpy(aabb.astype(np.float32)), split=split,
        ndc=ndc, ndc_focal=focal if ndc else 0.0, ndc_size=(H, W) if ndc else (0, 0),
        meta={"format": "llff", "root": root, "scale": float(sc), "indices": idx,
              "bounds": [float(bds.min()), float(bds.max())], "ndc_near": 1.0,
              "hwf": [float(h0), float(w0), float(focal0)], "downscale": data_cfg.downscale,
              "transform": transform.tolist()},
        sources=ix.sources,
    )


def load_llff(data_cfg: DataConfig, split: str) -> Scene:
    """Read one split of an LLFF scene.

    Returns a Scene with c2w [n, 3, 4] (OpenGL, rescaled, recentred), K [n, 3, 3] (focal from
    hwf scaled to the loaded width, principal point at the image centre). With NDC (data.ndc auto
    or true): near = 0, far = 1, aabb = [-1, 1]^3, ndc_focal/ndc_size of the loaded images (the
    NDC near plane is at z = -1 after the rescale, recorded as meta['ndc_near']). Without: near =
    0.9 * min bound, far = max bound, aabb = camera centres +- far. Reads exactly
    ``index_llff(data_cfg, split).sources`` (recorded as Scene.sources).
    """
    return open_llff(data_cfg, split).load()
