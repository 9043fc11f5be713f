"""How the pixel cache stores colours: the smallest form that gives back what the reader gave.

One mode per cache (manifest ``colour.mode``), the first of these that holds every frame:

  rgb8   [n, 3] uint8   decoded as q / 255 in float32, the image readers' own arithmetic, so
                        8-bit images read as they are (no alpha, data.downscale=1) come back
                        bit for bit.
  rgba8  [n, 4] uint8   straight RGBA as decoded; composited over the scene background when a
                        batch is made, with the reader's float32 operations in the reader's
                        order: bit for bit for 8-bit images with alpha at data.downscale=1
                        (Blender scenes such as lego).
  rgb16  [n, 3] uint16  decoded as q / 65535: bit for bit for 16-bit sources; colours that are
                        composited AND area-averaged (data.downscale > 1), or come from
                        float images, are rounded to the nearest 1/65535 (|error| <= 7.7e-6).

Vocabulary: ``raw: [H0, W0, C]`` float32 as :func:`nerf_dist.scenes.images.read_image` returns
it; ``q: [n, C]`` stored integers; ``rgb: [n, 3]`` float32 training colours.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# mode -> (numpy dtype, channels); ORDER: a frame of an earlier mode converts exactly to a later one.
MODES = {"rgb8": (np.dtype(np.uint8), 3), "rgba8": (np.dtype(np.uint8), 4),
         "rgb16": (np.dtype(np.uint16), 3)}
ORDER = ("rgb8", "rgba8", "rgb16")


def bytes_per_pixel(mode: str) -> int:
    dtype, c = MODES[mode]
    return dtype.itemsize * c


def widest(modes) -> str:
    """The mode that holds frames of every mode in modes (rgb8 when empty)."""
    return max(modes, key=ORDER.index, default="rgb8")


def quantise16(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] float32 in [0, 1] -> [n, 3] uint16 (nearest of q / 65535)."""
    q = np.rint(np.clip(rgb, 0.0, 1.0).reshape(-1, 3) * np.float32(65535))
    return q.astype(np.uint16)


def encode(raw: np.ndarray, factor: int, finish: Callable[[np.ndarray], np.ndarray]) -> tuple[str, np.ndarray]:
    """(mode, q [H*W, C]) of one frame.

    raw: the frame as decoded [H0, W0, 3|4] float32; factor: the downscale still to apply;
    finish: the reader's raw -> [H, W, 3] (composite over the background, downscale).
    """
    c = raw.shape[-1]
    if factor == 1 and c in (3, 4):
        q = np.rint(raw * np.float32(255)).astype(np.uint8)
        # NOTE: exact only when every value is some k / 255 in float32 (an 8-bit file).
        if np.array_equal(q.astype(np.float32) / np.float32(255.0), raw):
            return ("rgb8" if c == 3 else "rgba8"), q.reshape(-1, c)
    return "rgb16", quantise16(finish(raw))


def convert(q: np.ndarray, mode: str, to: str, background) -> np.ndarray:
    """q [n, C] of mode -> the same pixels in mode `to` (exact, except rgba8 -> rgb16, which
    composites as the reader does and rounds to 1/65535). to must not come before mode in ORDER."""
    if mode == to:
        return q
    if ORDER.index(to) < ORDER.index(mode):
        raise ValueError(f"cannot store {mode} colours as {to}")
    if mode == "rgb8" and to == "rgba8":
        return np.concatenate([q, np.full((q.shape[0], 1), 255, np.uint8)], axis=1)
    if mode == "rgb8":  # -> rgb16: k / 255 == 257 k / 65535, the same float32 after division
        return q.astype(np.uint16) * np.uint16(257)
    x = q.astype(np.float32) / np.float32(255.0)
    bg = np.asarray(background, dtype=np.float32).reshape(1, 3)
    return quantise16(x[:, :3] * x[:, 3:4] + bg * (1.0 - x[:, 3:4]))


def decode(q: torch.Tensor, mode: str, background: torch.Tensor) -> torch.Tensor:
    """Stored colours q [n, C] (CPU; rgb16 as int16 bits) -> rgb [n, 3] float32 on the CPU.

    NOTE: on the CPU on purpose: CUDA divides by a scalar as a multiply by its reciprocal (one
    ulp off); the CPU's true division matches numpy's in the readers bit for bit.
    """
    if mode == "rgb16":  # q: int16 holding uint16 bits (see RayCache.read_shard)
        return (q.to(torch.int32) & 0xFFFF).to(torch.float32) / 65535.0
    x = q.to(torch.float32) / 255.0
    if mode == "rgba8":
        rgb, a = x[:, :3], x[:, 3:4]
        return rgb * a + background.to(torch.float32) * (1.0 - a)
    return x
