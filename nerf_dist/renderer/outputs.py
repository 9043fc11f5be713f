"""What a render writes, atomically, so an interrupted render resumes and never looks complete.

Layout of a render folder::

    render.json          settings, camera path, depth scale; "complete": true only at the end
    rgb/00000.png        8-bit RGB
    depth/00000.png      colourised depth (near = bright, far = dark, no surface = black)
    depth16/00000.png    raw depth, 16-bit grey: depth = value * depth_scale (render.json)
    acc/00000.png        accumulated opacity, 8-bit grey (255 = opaque)
    float/00000.npz      (--save-float) rgb [H, W, 3], depth [H, W], acc [H, W] as float32
    video.mp4, video.gif the sequence, made from rgb/ at the end

Every file is written under a temporary name and moved into place in one step
(:func:`nerf_dist.storage.atomic_write`); a frame
counts as done only when all of its files exist.
"""
from __future__ import annotations

import os
import warnings

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import torch

from .. import storage
from .images import colourise_depth, colourise_inverse_depth, to_uint8

__all__ = ["DEPTH16_MAX", "FrameWriter", "clean_temp", "depth16_scale",
           "to_uint8", "write_png", "write_videos"]

DEPTH16_MAX = 65535
# far / near beyond which a render's depth is coloured by inverse depth (ngp captures: 0.05 to
# 2 sqrt(3) aabb_scale; Blender scenes 2 to 6).
UNBOUNDED_RATIO = 100.0


def depth16_scale(far: float) -> float:
    """Scene units per 16-bit step, so depths up to `far` fit (depth = value * scale)."""
    return max(float(far), 1e-6) / DEPTH16_MAX


def write_png(path: str, arr: np.ndarray) -> None:
    """Write a PNG atomically (:func:`storage.atomic_write`)."""
    with storage.atomic_write(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png")


def clean_temp(folder: str) -> int:
    """Remove leftovers of interrupted writes (``.NAME.tmp-XXXXXXXX``, see
    :func:`storage.atomic_write`) under folder; returns how many."""
    n = 0
    if not os.path.isdir(folder):
        return 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and ".tmp" in name:
                os.remove(os.path.join(dirpath, name))
                n += 1
    return n


class FrameWriter:
    """Writes and recognises the per-frame files of a render folder (rank 0 only)."""

    def __init__(self, out_dir: str, near: float, far: float, save_float: bool = False):
        self.out_dir = out_dir
        self.near, self.far = float(near), float(far)
        self.depth_scale = depth16_scale(far)
        self.kinds = ("rgb", "depth", "depth16", "acc") + (("float",) if save_float else ())

    def files(self, frame: int) -> dict[str, str]:
        return {k: os.path.join(self.out_dir, k, f"{frame:05d}.{'npz' if k == 'float' else 'png'}")
                for k in self.kinds}

    def done(self, frame: int) -> bool:
        return all(os.path.exists(p) for p in self.files(frame).values())

    def write(self, frame: int, out: dict) -> None:
        """out: rgb [H, W, 3], depth [H, W], acc [H, W] (float tensors, CPU)."""
        files = self.files(frame)
        for k in self.kinds:
            os.makedirs(os.path.dirname(files[k]), exist_ok=True)
        rgb, depth, acc = out["rgb"].clamp(0, 1), out["depth"], out["acc"]
        raw = torch.round(depth.clamp(min=0) / self.depth_scale).clamp(max=DEPTH16_MAX)
        write_png(files["depth16"], raw.numpy().astype(np.uint16))
        # NOTE (issue 18): a far plane hundreds of times the near one (an unbounded scene's)
        # makes a linear ramp one colour; such renders are coloured by inverse depth.
        if self.near > 0 and self.far > UNBOUNDED_RATIO * self.near:
            colour = colourise_inverse_depth(depth, acc)
        else:
            colour = colourise_depth(depth, self.near, self.far, acc)
        write_png(files["depth"], to_uint8(colour))
        write_png(files["acc"], to_uint8(acc))
        if "float" in files:
            with storage.atomic_write(files["float"]) as tmp, open(tmp, "wb") as f:
                np.savez(f, rgb=rgb.numpy().astype(np.float32),
                         depth=depth.numpy().astype(np.float32), acc=acc.numpy().astype(np.float32))
        # NOTE: rgb last: a listing of rgb/ then shows only frames whose other files exist too.
        write_png(files["rgb"], to_uint8(rgb))


def write_videos(out_dir: str, frame_files: list[str], fps: float, log=print) -> dict[str, str]:
    """MP4 (needs imageio-ffmpeg; skipped with a warning without it) and GIF of the rgb frames.

    Returns {'mp4': path, 'gif': path} for those written. Written under temporary names first.
    """
    frames = [iio.imread(p)[..., :3] for p in frame_files]
    if not frames:
        return {}
    written = {}
    gif = os.path.join(out_dir, "video.gif")
    with storage.atomic_write(gif) as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=int(round(1000.0 / fps)),
                    loop=0)
    written["gif"] = gif
    try:
        # NOTE: lazy because it is an optional extra (nerf_dist[video]), only probed here.
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        warnings.warn("imageio-ffmpeg is not installed (pip install 'nerf_dist[video]'): "
                      "no MP4 written, only the GIF", stacklevel=2)
        return written
    H, W = frames[0].shape[:2]
    # NOTE: H.264 (yuv420p) needs even sides: pad by one edge row/column rather than resample.
    ph, pw = H % 2, W % 2
    mp4 = os.path.join(out_dir, "video.mp4")
    # NOTE: the temporary name ends in .mp4: ffmpeg picks the container from it.
    with storage.atomic_write(mp4) as tmp, iio2.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=1,
            quality=8, pixelformat="yuv420p", ffmpeg_log_level="error") as w:
        for f in frames:
            w.append_data(np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else f)
    written["mp4"] = mp4
    return written
