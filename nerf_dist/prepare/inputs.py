"""The images `prepare` solves: a folder of photos (EXIF orientation applied) or a video's frames.

Both write into one flat folder ``images/`` (of the staging directory) and return what they wrote
and what they skipped. Nothing here imports torch or pycolmap.

Vocabulary: ``frame: [H, W, 3]`` uint8 RGB (a decoded video frame).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
EXIF_ORIENTATION = 0x0112


class PrepareError(ValueError):
    """Bad input to `nerf-dist prepare` or a failed solve; the message says what to try."""


@dataclass
class Collected:
    """names: image files written to the images folder (sorted); skipped: [(file, why)] of the
    input entries not used; size: (W, H) of every image; kind: 'images' or 'video'."""

    names: list[str]
    kind: str
    size: tuple[int, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def is_video(path: str) -> bool:
    """A regular file (not a folder) is taken as a video; its extension is not required."""
    return os.path.isfile(path)


def collect_images(folder: str, dest: str, progress=None) -> Collected:
    """Copy the photos of folder (not recursive) into dest, EXIF orientation applied.

    Files whose extension is not png/jpg/jpeg, hidden files and sub-folders are skipped with a
    note; an image that cannot be decoded is an error naming it (a half-copied or corrupt photo
    is better removed than solved around). Every image must have one size (nerf_dist trains on
    one size). PrepareError when fewer than two images remain.
    """
    if not os.path.isdir(folder):
        raise PrepareError(f"input not found: {folder} (a folder of photos or a video file)")
    entries = sorted(os.listdir(folder))
    skipped, todo = [], []
    for n in entries:
        p = os.path.join(folder, n)
        if n.startswith("."):
            continue
        if os.path.isdir(p):
            skipped.append((n, "a folder (prepare reads only the photos directly inside INPUT)"))
        elif os.path.splitext(n)[1].lower() not in IMAGE_EXTS:
            skipped.append((n, "not a png/jpg image"))
        else:
            todo.append(n)
    if not todo:
        raise PrepareError(f"no images in {folder}: prepare reads .png/.jpg/.jpeg files directly "
                           f"inside it" + (f" (skipped: {', '.join(s for s, _ in skipped[:5])})"
                                          if skipped else ""))
    if len(todo) < 2:
        raise PrepareError(f"only one image in {folder} ({todo[0]}): structure from motion needs "
                           f"several overlapping photos of the scene (20 or more is typical)")
    os.makedirs(dest, exist_ok=True)
    sizes = {}
    for n in todo:
        src, out = os.path.join(folder, n), os.path.join(dest, n)
        try:
            with Image.open(src) as im:
                im.load()
                turned = im.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
                if turned:
                    # NOTE: COLMAP reads pixels as stored; a photo taken in portrait but stored
                    # landscape with an EXIF tag would be solved sideways, so the turn is baked in.
                    im2 = ImageOps.exif_transpose(im)
                    im2.save(out, quality=95) if n.lower().endswith((".jpg", ".jpeg")) else im2.save(out)
                    sizes[n] = im2.size
                else:
                    sizes[n] = im.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise PrepareError(f"cannot read image {src}: {e} (remove or replace the file)") from e
        if not turned:
            shutil.copyfile(src, out)
        if progress is not None:
            progress(1)
    common = max(set(sizes.values()), key=list(sizes.values()).count)
    odd = [n for n, s in sizes.items() if s != common]
    if odd:
        listed = ", ".join(f"{n} is {sizes[n][0]}x{sizes[n][1]}" for n in odd[:5])
        raise PrepareError(f"images in {folder} must all have one size: most are {common[0]}x"
                           f"{common[1]} but {listed}{' ...' if len(odd) > 5 else ''} (resize or "
                           f"remove them)")
    return Collected(names=sorted(todo), kind="images", size=common, skipped=skipped)


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (higher = sharper); frame: [H, W, 3] uint8.
    Computed on every second pixel: the ranking, not the value, is what matters."""
    g = frame[::2, ::2].astype(np.float32).mean(axis=2)
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1])
    return float(lap.var()) if lap.size else 0.0


def extract_frames(video: str, dest: str, n_frames: int, progress=None) -> Collected:
    """Write about n_frames evenly spaced frames of video into dest as frame_NNNNN.jpg.

    The video is cut into n_frames windows of consecutive frames and the sharpest frame of each
    window (:func:`sharpness`) is kept, so motion blur is avoided where a window has a better
    frame. Decoded with imageio-ffmpeg; PrepareError naming the file when it cannot be decoded.
    """
    if os.path.splitext(video)[1].lower() in IMAGE_EXTS:
        raise PrepareError(f"{video} is one image; pass the folder that holds the photos (or a "
                           f"video file)")
    try:
        # NOTE: lazy: imageio-ffmpeg is the optional `video` extra; only video input needs it.
        import imageio_ffmpeg
    except ImportError as e:
        raise PrepareError("reading a video needs imageio-ffmpeg: pip install imageio-ffmpeg "
                           "(or pip install -e .[video])") from e
    try:
        total, _ = imageio_ffmpeg.count_frames_and_secs(video)
        gen = imageio_ffmpeg.read_frames(video)
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration, ValueError) as e:
        # NOTE: ffmpeg's message is long; its last line says what went wrong.
        why = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise PrepareError(f"cannot decode video {video}: {why} (is it a video file ffmpeg can "
                           f"read?)") from e
    if total < 2:
        raise PrepareError(f"video {video} has {total} frame(s); structure from motion needs many "
                           f"views of the scene")
    w, h = meta["size"]
    n = min(n_frames, total)
    edges = [total * k // n for k in range(n + 1)]  # exact integers at any length
    os.makedirs(dest, exist_ok=True)
    names, best, best_score, win = [], None, -1.0, 0
    try:
        for i, raw in enumerate(gen):
            while win < n and i >= edges[win + 1]:
                win += 1
            if win >= n:
                break
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
            score = sharpness(frame)
            if score > best_score:
                best, best_score = frame.copy(), score
            if i == edges[win + 1] - 1:
                name = f"frame_{len(names) + 1:05d}.jpg"
                Image.fromarray(best).save(os.path.join(dest, name), quality=95)
                names.append(name)
                best, best_score = None, -1.0
                if progress is not None:
                    progress(1)
    except (RuntimeError, OSError) as e:
        raise PrepareError(f"cannot decode video {video} after {len(names)} frames: {e}") from e
    finally:
        gen.close()
    if best is not None:  # a window cut short by a count that overestimated the frames
        name = f"frame_{len(names) + 1:05d}.jpg"
        Image.fromarray(best).save(os.path.join(dest, name), quality=95)
        names.append(name)
    if len(names) < 2:
        raise PrepareError(f"video {video}: only {len(names)} frame(s) could be decoded")
    return Collected(names=names, kind="video", size=(w, h))
