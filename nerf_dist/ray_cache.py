"""Training images -> rays stored as fixed-size shard files + a manifest, on any storage URL.

Layout of one cache (``{base_url}/{key[:16]}/``)::

    shard-00000.pt ... shard-{S-1:05d}.pt   torch.save'd dict of tensors (load with weights_only)
    manifest.json                           written last: its presence marks the cache complete

Global ray index ``i = image * H*W + row*W + col``. Shard ``s`` of ``S`` holds the rays
``{i : i % S == s}`` in increasing ``i``, so every shard covers every image evenly and shard sizes
differ by at most one. Fields per ray (``n`` = rays in the shard):

    rays_o, rays_d, viewdirs: [n, 3] float32  (from :func:`nerf_dist.rays.scene_rays`; NDC rays_d
                                               for forward-facing scenes)
    rgb:  [n, 3] float32
    crop: [n] float16  max(|u/W - 0.5|, |v/H - 0.5|) * 2 at the pixel centre: a ray lies in the
                       centre crop of side fraction f iff crop < f
    img:  [n] int32    image index
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Callable

import torch

from . import dist, storage
from .config import DataConfig
from .rays import scene_rays

CACHE_VERSION = 1
MANIFEST = "manifest.json"
FIELDS = {"rays_o": (torch.float32, 3), "rays_d": (torch.float32, 3),
          "viewdirs": (torch.float32, 3), "rgb": (torch.float32, 3),
          "crop": (torch.float16, 0), "img": (torch.int32, 0)}
_META_FILES = ("poses_bounds.npy",)
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".webp")


class RayCacheError(RuntimeError):
    """A ray cache is missing, incomplete, corrupt or of another version; the message names the URL."""


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.pt"


def shard_sizes(n_rays: int, n_shards: int) -> list[int]:
    """Rays in each shard: shard s holds {i < n_rays : i % n_shards == s}."""
    return [max(0, (n_rays - s + n_shards - 1) // n_shards) for s in range(n_shards)]


# ----------------------------------------------------------------------------- key

def _is_meta(name: str) -> bool:
    return name in _META_FILES or (name.startswith("transforms") and name.endswith(".json"))


def cache_key(data_cfg: DataConfig, split: str = "train") -> str:
    """sha256 (hex) identifying the rays a scene + settings produce, without decoding images.

    Hashes the contents of the metadata files (transforms*.json, poses_bounds.npy), the relative
    path, size and mtime of every image file under data_cfg.root, the settings that change rays,
    and the cache format version.
    """
    root = str(data_cfg.root)
    if not os.path.isdir(root):
        raise RayCacheError(f"cannot key the ray cache: scene folder not found: {root}")
    h = hashlib.sha256()
    settings = {"version": CACHE_VERSION, "format": data_cfg.format, "downscale": data_cfg.downscale,
                "white_background": data_cfg.white_background, "skip_missing": data_cfg.skip_missing,
                "llff_hold": data_cfg.llff_hold, "ndc": str(data_cfg.ndc).lower(),
                "cache_shards": data_cfg.cache_shards, "split": split}
    h.update(json.dumps(settings, sort_keys=True).encode())
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        # NOTE: hidden folders (.git, editor state) never hold scene data; sort for a stable order.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if _is_meta(name):
                with open(path, "rb") as f:
                    entries.append(("meta", rel, hashlib.sha256(f.read()).hexdigest()))
            elif name.lower().endswith(_IMAGE_EXTS):
                st = os.stat(path)
                entries.append(("image", rel, st.st_size, st.st_mtime_ns))
    h.update(json.dumps(sorted(entries)).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading

class RayCache:
    """A complete ray cache on storage (opened from its manifest).

    Attributes: url, key, n_shards, n_rays, shard_sizes (list[int]), H, W, n_images, and meta
    (near, far, aabb, background, ndc, ndc_focal, ndc_size, split, files).
    """

    def __init__(self, url: str, manifest: dict):
        self.url = url
        self.manifest = manifest
        self.key: str = manifest["key"]
        self.n_shards: int = int(manifest["n_shards"])
        self.n_rays: int = int(manifest["n_rays"])
        self.shard_sizes: list[int] = [int(x) for x in manifest["shard_sizes"]]
        self.H: int = int(manifest["H"])
        self.W: int = int(manifest["W"])
        self.n_images: int = int(manifest["n_images"])
        self.meta: dict = dict(manifest["meta"])

    @classmethod
    def open(cls, url: str) -> "RayCache":
        """Open the cache folder at url; RayCacheError naming the URL if it is not a complete,
        valid cache of this version."""
        path = storage.join(url, MANIFEST)
        where = storage.redact(path)
        try:
            text = storage.read_text(path)
        except FileNotFoundError as e:
            raise RayCacheError(f"ray cache manifest not found: {where} (cache not built or "
                                f"build interrupted)") from e
        except Exception as e:  # noqa: BLE001 - any backend error: name the URL
            raise RayCacheError(f"cannot read ray cache manifest {where}: {type(e).__name__}: {e}") from e
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as e:
            raise RayCacheError(f"corrupt ray cache manifest {where}: {e}") from e
        problem = _manifest_problem(manifest)
        if problem:
            raise RayCacheError(f"invalid ray cache manifest {where}: {problem}")
        return cls(url, manifest)

    def shard_url(self, s: int) -> str:
        return storage.join(self.url, shard_name(s))

    def read_shard(self, s: int) -> dict[str, torch.Tensor]:
        """Shard s as a dict of tensors (see the module docstring); RayCacheError names the URL."""
        if not 0 <= s < self.n_shards:
            raise IndexError(f"shard {s} out of range [0, {self.n_shards}) in {storage.redact(self.url)}")
        url = self.shard_url(s)
        where = storage.redact(url)
        try:
            data = torch.load(io.BytesIO(storage.read_bytes(url)), weights_only=True, map_location="cpu")
        except FileNotFoundError as e:
            raise RayCacheError(f"ray cache shard not found: {where}") from e
        except Exception as e:  # noqa: BLE001 - storage or unpickling error: name the URL
            raise RayCacheError(f"cannot read ray cache shard {where}: {type(e).__name__}: {e}") from e
        n = self.shard_sizes[s]
        if not isinstance(data, dict):
            raise RayCacheError(f"corrupt ray cache shard {where}: expected a dict of tensors")
        for name, (dtype, width) in FIELDS.items():
            t = data.get(name)
            shape = (n, width) if width else (n,)
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
                got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                raise RayCacheError(f"corrupt ray cache shard {where}: field '{name}' should be "
                                    f"{dtype} {shape}, got {got}")
        return data

    def __repr__(self) -> str:
        return (f"RayCache({storage.redact(self.url)!r}, n_shards={self.n_shards}, "
                f"n_rays={self.n_rays}, images={self.n_images}x{self.H}x{self.W})")


def _manifest_problem(m) -> str:
    """Why a parsed manifest is unusable ('' when it is fine)."""
    if not isinstance(m, dict):
        return "not a JSON object"
    if m.get("version") != CACHE_VERSION:
        return f"format version {m.get('version')!r}, this code reads version {CACHE_VERSION} (rebuild it)"
    for k in ("key", "n_shards", "n_rays", "shard_sizes", "H", "W", "n_images", "meta"):
        if k not in m:
            return f"missing field '{k}'"
    try:
        if list(m["shard_sizes"]) != shard_sizes(int(m["n_rays"]), int(m["n_shards"])):
            return "shard_sizes do not match n_rays and n_shards"
    except (TypeError, ValueError):
        return "bad n_rays / n_shards / shard_sizes"
    return ""


# ----------------------------------------------------------------------------- building

def pixel_crop(row: torch.Tensor, col: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """crop: [n] float16 = max(|u/W - 0.5|, |v/H - 0.5|) * 2 at pixel centres (u, v) = (col, row) + 0.5;
    a pixel lies in the centre crop of side fraction f iff crop < f."""
    u, v = col.float() + 0.5, row.float() + 0.5
    return (torch.maximum((u / W - 0.5).abs(), (v / H - 0.5).abs()) * 2).to(torch.float16)


def shard_rays(scene, s: int, n_shards: int) -> dict[str, torch.Tensor]:
    """Rays of shard s (every n_shards-th ray, starting at s) of a Scene, as stored in the cache."""
    H, W = scene.H, scene.W
    n_rays = scene.n * H * W
    idx = torch.arange(s, n_rays, n_shards, dtype=torch.int64)
    img = idx // (H * W)
    pix = idx % (H * W)
    row, col = pix // W, pix % W
    u, v = col.float() + 0.5, row.float() + 0.5
    out = {k: [] for k in ("rays_o", "rays_d", "viewdirs")}
    # NOTE: idx is increasing, so each image's pixels form one contiguous run.
    images, counts = torch.unique_consecutive(img, return_counts=True)
    start = 0
    for i, c in zip(images.tolist(), counts.tolist()):
        sl = slice(start, start + c)
        r = scene_rays(scene, i, torch.stack([u[sl], v[sl]], -1))
        for k in out:
            out[k].append(r[k].float())
        start += c
    rays = {k: (torch.cat(v_) if v_ else torch.zeros(0, 3)).contiguous() for k, v_ in out.items()}
    rays["rgb"] = scene.images[img, row, col].float().contiguous()
    rays["crop"] = pixel_crop(row, col, H, W)
    rays["img"] = img.to(torch.int32)
    return rays


def build_shards(scene, url: str, n_shards: int, rank: int = 0, world_size: int = 1,
                 log: Callable[[str], None] = print) -> list[int]:
    """Write the shards this rank owns (s % world_size == rank) under url; returns their indices.

    Holds one shard's rays at a time (beside the scene). Progress goes to log on rank 0.
    """
    n_rays = scene.n * scene.H * scene.W
    if n_rays < n_shards:
        raise RayCacheError(f"scene has {n_rays} rays, fewer than data.cache_shards={n_shards}")
    storage.makedirs(url)
    mine = list(range(rank, n_shards, world_size))
    step = max(1, len(mine) // 4)
    for j, s in enumerate(mine):
        buf = io.BytesIO()
        torch.save(shard_rays(scene, s, n_shards), buf)
        storage.write_bytes(storage.join(url, shard_name(s)), buf.getvalue())
        if rank == 0 and ((j + 1) % step == 0 or j + 1 == len(mine)):
            log(f"ray cache: rank 0 wrote {j + 1}/{len(mine)} of its shards "
                f"({n_shards} shards over {world_size} rank(s))")
    return mine


def write_manifest(scene, url: str, key: str, n_shards: int) -> None:
    """Write manifest.json (the commit marker) after checking every shard file is present."""
    present = set(storage.listdir(url))
    missing = [shard_name(s) for s in range(n_shards) if shard_name(s) not in present]
    if missing:
        raise RayCacheError(f"cannot commit ray cache {storage.redact(url)}: {len(missing)} shard "
                            f"file(s) missing, e.g. {missing[0]}")
    n_rays = scene.n * scene.H * scene.W
    manifest = {
        "version": CACHE_VERSION, "key": key, "n_shards": n_shards, "n_rays": n_rays,
        "shard_sizes": shard_sizes(n_rays, n_shards),
        "H": scene.H, "W": scene.W, "n_images": scene.n,
        "fields": {k: [str(d).replace("torch.", ""), w] for k, (d, w) in FIELDS.items()},
        "meta": {"near": float(scene.near), "far": float(scene.far),
                 "aabb": torch.as_tensor(scene.aabb).tolist(),
                 "background": torch.as_tensor(scene.background).tolist(),
                 "ndc": bool(scene.ndc), "ndc_focal": float(scene.ndc_focal),
                 "ndc_size": [int(x) for x in scene.ndc_size],
                 "split": scene.split, "files": [str(f) for f in scene.files]},
    }
    storage.write_text(storage.join(url, MANIFEST), json.dumps(manifest, indent=1))


def _valid_cache(url: str, key: str) -> bool:
    try:
        return RayCache.open(url).key == key
    except RayCacheError:
        return False


def ensure_cache(data_cfg: DataConfig, base_url: str, rank: int = 0, world_size: int = 1,
                 log: Callable[[str], None] = print, scene=None) -> RayCache:
    """Open the cache of data_cfg's train split under base_url, building it first if needed.

    Collective: every rank must call it. Building: each rank writes the shards it owns, then rank 0
    writes the manifest between two barriers. scene: an already loaded train Scene (else
    :func:`nerf_dist.scenes.load_scene` is called only when a build is needed).
    """
    key = cache_key(data_cfg, "train")
    url = storage.join(base_url, key[:16])
    # NOTE: rank 0 decides so every rank takes the same branch (a manifest could appear mid-check).
    valid = dist.broadcast_object(_valid_cache(url, key) if rank == 0 else None)
    if not valid:
        if rank == 0:
            log(f"ray cache: building {storage.redact(url)} ({data_cfg.cache_shards} shards)")
            storage.remove(storage.join(url, MANIFEST))  # a stale/corrupt marker must not survive
        if scene is None:
            from .scenes import load_scene
            scene = load_scene(data_cfg, "train")
        build_shards(scene, url, data_cfg.cache_shards, rank, world_size, log)
        dist.barrier()
        if rank == 0:
            write_manifest(scene, url, key, data_cfg.cache_shards)
            log(f"ray cache: committed {storage.redact(url)}")
        dist.barrier()
    elif rank == 0:
        log(f"ray cache: reusing {storage.redact(url)}")
    cache = RayCache.open(url)
    if cache.key != key:
        raise RayCacheError(f"ray cache {storage.redact(url)} has key {cache.key[:16]}..., "
                            f"expected {key[:16]}...")
    return cache
