"""Scenes read one image at a time: what the ray-cache build streams, in bounded memory.

A reader's ``open_*`` (e.g. :func:`nerf_dist.scenes.blender.open_blender`) parses the metadata,
takes the image size from the first file's header, and returns a :class:`LazyScene`: cameras,
bounds and files, but no pixels. :meth:`LazyScene.read` decodes one frame as stored (straight
RGB or RGBA), :meth:`LazyScene.finish` applies the reader's compositing and downscaling, and
:meth:`LazyScene.load` decodes every frame (in a thread pool) into the :class:`Scene` the readers'
``load_*`` return, exactly as before. What needs only cameras (`render`, the cameras of `eval`)
uses a LazyScene as it is; `eval` decodes each view's ground truth (:meth:`LazyScene.image`,
:meth:`LazyScene.depth`) on the rank that scores it, when it scores it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .base import Scene, SceneError, SceneFiles
from .images import finish_frame, load_images, read_frame, read_image


def probe_size(path: str, factor: int) -> tuple[int, int]:
    """(H0, W0) of an image file from its header (Pillow, no decoding), or by decoding it when
    Pillow cannot tell; SceneError as the readers raise it (undecodable, smaller than factor)."""
    size = None
    try:
        with Image.open(path) as im:
            size = (int(im.size[1]), int(im.size[0]))
    except Exception:  # noqa: BLE001 - any Pillow failure: decode, which names the problem
        size = None
    if size is None:
        size = tuple(read_image(path).shape[:2])
    if size[0] // factor == 0 or size[1] // factor == 0:
        raise SceneError(f"image {path}: image of size {size} is smaller than the downscale "
                         f"factor {factor}")
    return size


@dataclass
class LazyScene:
    """One split of a scene whose images are decoded on demand.

    files: n image paths; factor: data.downscale still to apply after decoding (1 when a reader
    picked pre-downscaled files); background: [3] compositing colour; source, frame_ids: the
    metadata file and frame numbers named in errors; size0: (H0, W0) of the files (every frame
    must have it). K [n, 3, 3], c2w [n, 3, 4], distortion [n, 4] | None, near, far, aabb, ndc,
    ndc_focal, ndc_size, meta, split, sources: as in :class:`Scene` (at the loaded size).
    depths: callable (H, W) -> [n, H, W] tensor or None, called by :meth:`load` only.
    depth_frame: callable (i, H, W) -> [H, W] tensor of frame i's ground-truth depth, or None
    when the scene has none (:meth:`depth`).
    """

    files: list[str]
    factor: int
    background: list[float]
    source: str
    frame_ids: list[int]
    size0: tuple[int, int]
    K: torch.Tensor
    c2w: torch.Tensor
    near: float
    far: float
    aabb: torch.Tensor
    split: str
    distortion: torch.Tensor | None = None
    ndc: bool = False
    ndc_focal: float = 0.0
    ndc_size: tuple[int, int] = (0, 0)
    meta: dict = field(default_factory=dict)
    sources: SceneFiles = field(default_factory=SceneFiles)
    depths: Callable[[int, int], torch.Tensor | None] | None = None
    depth_frame: Callable[[int, int, int], torch.Tensor] | None = None

    @property
    def n(self) -> int:
        return len(self.files)

    @property
    def H(self) -> int:
        return self.size0[0] // self.factor

    @property
    def W(self) -> int:
        return self.size0[1] // self.factor

    def read(self, i: int) -> np.ndarray:
        """Frame i as decoded: [H0, W0, 3 or 4] float32 in [0, 1], straight alpha.

        SceneError naming the file and frame when it cannot be decoded or has another size
        (:func:`.images.read_frame`).
        """
        return read_frame(self.files[i], self.source, self.frame_ids[i], self.size0,
                          (self.frame_ids[0], self.files[0]))

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """The reader's processing of a decoded frame: composite over the background, then
        downscale (:func:`.images.finish_frame`). raw: [H0, W0, C]. Returns [H, W, 3] float32
        (what :meth:`load` stores)."""
        return finish_frame(raw, self.factor, self.background)

    def image(self, i: int) -> np.ndarray:
        """Frame i as :meth:`load` holds it: [H, W, 3] float32."""
        return self.finish(self.read(i))

    def depth(self, i: int) -> torch.Tensor | None:
        """Frame i's ground-truth depth [H, W] (as :meth:`load` holds it), None without depths."""
        if self.depth_frame is not None:
            return self.depth_frame(i, self.H, self.W)
        if self.depths is not None:  # NOTE: a reader without a per-frame reader: all, then one
            d = self.depths(self.H, self.W)
            return None if d is None else d[i]
        return None

    def load(self) -> Scene:
        """Every frame decoded (thread pool) into a :class:`Scene`."""
        images, _ = load_images(self.files, self.factor, self.background, self.source,
                                self.frame_ids, self.size0)
        n, H, W = images.shape[:3]
        return Scene(images=torch.from_numpy(images), K=self.K, c2w=self.c2w, near=self.near,
                     far=self.far, aabb=self.aabb,
                     background=torch.tensor(self.background, dtype=torch.float32),
                     files=list(self.files), split=self.split, distortion=self.distortion,
                     depths=self.depths(H, W) if self.depths is not None else None,
                     ndc=self.ndc, ndc_focal=self.ndc_focal, ndc_size=self.ndc_size,
                     meta=self.meta, sources=self.sources)
