"""Image files of a scene and the one decode pipeline the readers share.

Finding them: :data:`IMAGE_EXTS`, :func:`resolve_image`, :func:`list_images`,
:func:`image_folder`, :func:`drop_missing`. Decoding a frame: :func:`read_frame` (decode, check
its size against the scene's) then :func:`finish_frame` (composite over :func:`background_of`,
then downscale); :func:`load_images` runs both over every frame in a thread pool, and
:class:`nerf_dist.scenes.lazy.LazyScene` one frame at a time.

Everything here works on numpy arrays; readers turn the stacked result into a torch tensor.
Vocabulary: ``img: [H, W, C]`` float32 in [0, 1] with C in (3, 4) (RGB or straight-alpha RGBA).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

import imageio.v3 as iio
import numpy as np

from ..config import IMAGE_EXTS, DataConfig
from .base import SceneError


def is_image(path: str) -> bool:
    """Whether path ends in one of :data:`IMAGE_EXTS` (any case)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTS


def resolve_image(root: str, file_path: str, exts: tuple[str, ...] = IMAGE_EXTS) -> str:
    """Image path of a frame: relative to root; without an image extension the first existing
    of exts (each in lower, then upper case) is used (exts[0] when none exists, so the 'missing'
    message names a real candidate)."""
    p = os.path.normpath(os.path.join(root, file_path))
    if is_image(p):
        return p
    for e in exts:
        for cand in (p + e, p + e.upper()):
            if os.path.isfile(cand):
                return cand
    return p + exts[0]


def background_of(data_cfg: DataConfig) -> list[float]:
    """The compositing colour: [3] white with data.white_background, else black."""
    return [1.0, 1.0, 1.0] if data_cfg.white_background else [0.0, 0.0, 0.0]


def read_image(path: str) -> np.ndarray:
    """Decode a PNG/JPG (8 or 16 bit, grey, grey+alpha, RGB or RGBA) with imageio.

    Returns img: [H, W, 3 or 4] float32 in [0, 1] (alpha, when present, is straight, not
    premultiplied). Raises SceneError naming the file when it is missing or cannot be decoded.
    NOTE: 16-bit grey PNGs keep full precision; Pillow (imageio's PNG backend) decodes 16-bit
    RGB/RGBA PNGs to 8 bits per channel, so those are read at 8-bit precision.
    """
    if not os.path.isfile(path):
        raise SceneError(f"image file not found: {path}")
    try:
        raw = np.asarray(iio.imread(path))
    except Exception as e:  # imageio raises many types (OSError, ValueError, plugin errors)
        raise SceneError(f"cannot decode image {path}: {e}") from e
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3 or raw.shape[2] not in (1, 2, 3, 4):
        raise SceneError(f"image {path} has unsupported shape {tuple(raw.shape)}")
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16 or raw.dtype == np.int32:
        # NOTE: Pillow reports 16-bit grey PNGs as uint16 (mode I;16) or int32 (mode I).
        img = raw.astype(np.float32) / 65535.0
    elif raw.dtype == np.bool_:
        img = raw.astype(np.float32)
    elif np.issubdtype(raw.dtype, np.floating):
        img = raw.astype(np.float32)
    else:
        raise SceneError(f"image {path} has unsupported pixel type {raw.dtype}")
    c = img.shape[2]
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    elif c == 2:  # grey + alpha
        img = np.concatenate([np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:]], axis=2)
    return np.clip(img, 0.0, 1.0)


def composite(img: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Composite straight-alpha RGBA over a constant colour: rgb * a + bg * (1 - a).

    img: [H, W, 3 or 4]; background: [3]. Returns [H, W, 3] float32 (RGB input is returned as is).
    """
    if img.shape[-1] == 3:
        return img.astype(np.float32, copy=False)
    rgb, a = img[..., :3], img[..., 3:4]
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    return (rgb * a + bg * (1.0 - a)).astype(np.float32)


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Integer downscale by area averaging over factor x factor blocks.

    img: [H, W, C] (or [H, W]). Returns [H // factor, W // factor, C]. When H or W is not
    divisible by factor the remainder rows (bottom) and columns (right) are cropped, so pixel
    (i, j) of the output covers exactly input pixels [f*i, f*i + f) x [f*j, f*j + f) and the
    intrinsics simply scale by 1 / factor.

    NOTE: readers composite BEFORE averaging; that equals averaging premultiplied colour and alpha
    and compositing afterwards (compositing is linear in the premultiplied colour).
    """
    if factor == 1:
        return img
    h, w = img.shape[0] // factor, img.shape[1] // factor
    if h == 0 or w == 0:
        raise ValueError(f"image of size {img.shape[:2]} is smaller than the downscale factor {factor}")
    x = img[: h * factor, : w * factor]
    x = x.reshape(h, factor, w, factor, *img.shape[2:]).astype(np.float32, copy=False)
    return x.mean(axis=(1, 3), dtype=np.float32)


def downscale_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """Downscale a depth map [H, W] by averaging only the hits (depth > 0) of each block.

    Returns [H // factor, W // factor] (remainder cropped like :func:`downscale`); 0 where no
    sample of the block hits a surface. NOTE: a plain average would blend surfaces with the
    background's 0 and invent depths in front of the object.
    """
    if factor == 1:
        return depth.astype(np.float32, copy=False)
    h, w = depth.shape[0] // factor, depth.shape[1] // factor
    d = depth[: h * factor, : w * factor].reshape(h, factor, w, factor).astype(np.float64)
    hit = (d > 0).sum(axis=(1, 3))
    s = np.where(d > 0, d, 0.0).sum(axis=(1, 3))
    return np.where(hit > 0, s / np.maximum(hit, 1), 0.0).astype(np.float32)


def read_frame(path: str, source: str, frame_id: int, size0: tuple | None = None,
               first: tuple[int, str] | None = None) -> np.ndarray:
    """One frame as decoded: [H0, W0, 3 or 4] float32 in [0, 1], straight alpha.

    SceneError naming source (the metadata file) and the frame when the file is missing or
    cannot be decoded, or when size0 is given and the frame has another (H0, W0); first: (frame
    id, path) of the frame that set size0, named in that message.
    """
    if not os.path.isfile(path):
        raise SceneError(f"{source}: frame {frame_id}: image file not found: {path}")
    img = read_image(path)
    if size0 is not None and tuple(img.shape[:2]) != tuple(size0):
        h, w = img.shape[:2]
        fid, fpath = first if first is not None else ("0", "the first")
        raise SceneError(
            f"{source}: frame {frame_id}: image {path} is {w}x{h} (W x H) but frame {fid} "
            f"({fpath}) is {size0[1]}x{size0[0]}; all images must have one size")
    return img


def finish_frame(raw: np.ndarray, factor: int, background: Sequence[float],
                 path: str = "") -> np.ndarray:
    """A decoded frame as the readers hold it: composite over background, then downscale.

    raw: [H0, W0, C]. Returns [H0 // factor, W0 // factor, 3] float32; SceneError (naming path)
    when the image is smaller than the factor.
    """
    img = composite(raw, background)
    try:
        return downscale(img, factor)
    except ValueError as e:
        raise SceneError(f"image {path}: {e}" if path else str(e)) from e


def _workers() -> int:
    # NOTE: PNG/JPEG decoding releases the GIL, so threads give real parallelism.
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def drop_missing(paths: Sequence[str], skip_missing: bool, source: str,
                 frame_ids: Sequence[int] | None = None) -> list[int]:
    """Positions (into paths) of the frames whose image file exists.

    A missing file raises SceneError naming the file, the frame index (frame_ids[k], default k)
    and ``source`` (the transforms/poses file that lists it) unless skip_missing; then the
    missing frames are dropped and one warning lists them all.
    """
    ids = list(frame_ids) if frame_ids is not None else list(range(len(paths)))
    missing = [k for k, p in enumerate(paths) if not os.path.isfile(p)]
    if missing and not skip_missing:
        k = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SceneError(f"{source}: frame {ids[k]}: image file not found: {paths[k]}{more} "
                         f"(set data.skip_missing=true to drop missing frames)")
    if missing:
        listed = ", ".join(f"frame {ids[k]}: {paths[k]}" for k in missing[:20])
        tail = " ..." if len(missing) > 20 else ""
        warnings.warn(f"{source}: skipping {len(missing)} frame(s) with missing images: {listed}{tail}",
                      stacklevel=3)
    gone = set(missing)
    return [k for k in range(len(paths)) if k not in gone]


def load_images(paths: Sequence[str], factor: int, background: Sequence[float],
                source: str, frame_ids: Sequence[int] | None = None,
                size0: tuple | None = None) -> tuple[np.ndarray, tuple]:
    """:func:`read_frame` then :func:`finish_frame` for many images, in a thread pool.

    paths: n image files (see :func:`drop_missing`). Returns (images: [n, H, W, 3] float32,
    (H0, W0) the file size before downscaling). Every image must have size0 (default: the size
    of the first one); otherwise SceneError names the odd file, its frame index and both sizes.
    """
    if len(paths) == 0:
        raise SceneError(f"{source}: no frames to load")
    ids = list(frame_ids) if frame_ids is not None else list(range(len(paths)))
    first = (ids[0], paths[0])
    raw = read_frame(paths[0], source, ids[0], size0, first)
    size0 = tuple(raw.shape[:2])
    img = finish_frame(raw, factor, background, paths[0])
    out = np.empty((len(paths),) + img.shape, dtype=np.float32)
    out[0] = img

    def one(i: int) -> None:
        out[i] = finish_frame(read_frame(paths[i], source, ids[i], size0, first), factor,
                              background, paths[i])

    if len(paths) > 1:
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            # NOTE: list() re-raises the first worker exception in frame order.
            list(pool.map(one, range(1, len(paths))))
    return out, size0


def image_folder(root: str, factor: int, what: str) -> tuple[str, int]:
    """(folder, downscale still to apply): root/images_{factor}/ when factor > 1 and it exists
    (pre-downscaled copies, as LLFF and nerfstudio write them), else root/images/ and factor.
    SceneError names the missing folder (``what``: the scene format, for the message)."""
    if factor > 1:
        pre = os.path.join(root, f"images_{factor}")
        if os.path.isdir(pre):
            return pre, 1
    folder = os.path.join(root, "images")
    if not os.path.isdir(folder):
        raise SceneError(f"{what} image folder not found: {folder}")
    return folder, factor


def list_images(folder: str) -> list[str]:
    """Image files (png/jpg/jpeg, any case) directly inside folder, sorted by name."""
    names = sorted(n for n in os.listdir(folder) if is_image(n) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]
