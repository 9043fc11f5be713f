"""Training images -> rays stored as fixed-size shard files + a manifest, on any storage URL.

Layout of one cache (``{base_url}/{key[:16]}/``)::

    shard-00000.pt ... shard-{S-1:05d}.pt   torch.save'd dict of tensors (load with weights_only)
    manifest.json                           written last: its presence marks the cache complete;
                                            records each shard's size and sha256 (computed from
                                            the bytes before they were written), checked on load

The folder name is a hash (:func:`cache_key`) of every file the scene reader reads (resolved
path, size and mtime_ns of images; contents of metadata) and every setting that changes rays.

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
from .scenes.base import SceneError

CACHE_VERSION = 2  # 2: per-shard size + sha256 in the manifest; key over the files the reader reads
MANIFEST = "manifest.json"
FIELDS = {"rays_o": (torch.float32, 3), "rays_d": (torch.float32, 3),
          "viewdirs": (torch.float32, 3), "rgb": (torch.float32, 3),
          "crop": (torch.float16, 0), "img": (torch.int32, 0)}


class RayCacheError(RuntimeError):
    """A ray cache is missing, incomplete, corrupt or of another version; the message names the URL."""


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.pt"


def shard_sizes(n_rays: int, n_shards: int) -> list[int]:
    """Rays in each shard: shard s holds {i < n_rays : i % n_shards == s}."""
    return [max(0, (n_rays - s + n_shards - 1) // n_shards) for s in range(n_shards)]


def rebuild_hint(url: str) -> str:
    """What to do about a damaged cache folder (ends every such error)."""
    return (f"delete the cache folder {storage.redact(url)} or run `nerf-dist cache --rebuild` "
            f"with the same config and overrides")


# ----------------------------------------------------------------------------- key

def _file_entry(path: str, real_root: str, content: bool) -> list:
    """[label, size, mtime_ns or sha256 of the contents] of one scene file.

    label: the resolved path (symlinks followed) relative to the resolved data.root, or absolute
    when it lies outside (so moving a whole scene folder keeps its cache, and repointing a
    symlink does not).
    """
    real = os.path.realpath(path)
    rel = os.path.relpath(real, real_root)
    label = rel.replace(os.sep, "/") if rel != ".." and not rel.startswith(".." + os.sep) else real
    try:
        st = os.stat(real)
        if content:
            with open(real, "rb") as f:
                return [label, st.st_size, hashlib.sha256(f.read()).hexdigest()]
    except OSError as e:
        raise SceneError(f"cannot key the ray cache: cannot read scene file {path}: {e}") from e
    return [label, st.st_size, st.st_mtime_ns]


def key_inputs(data_cfg: DataConfig, split: str = "train") -> dict:
    """What :func:`cache_key` hashes: the settings that change rays, the reader's format, and one
    entry per file the scene reader reads for split (``meta``: contents; ``data``: size and
    mtime_ns), in reading order. Parses only metadata (no image is decoded).

    NOTE: data.allow_outside_root is not a setting here: it only admits files, and those enter the
    key through the file list.
    """
    from .scenes import scene_sources
    return _key_inputs(data_cfg, split, scene_sources(data_cfg, split))


def _key_inputs(data_cfg: DataConfig, split: str, files) -> dict:
    """key_inputs for the SceneFiles files."""
    from .scenes import scene_format
    real_root = os.path.realpath(str(data_cfg.root))
    return {"version": CACHE_VERSION, "format": scene_format(data_cfg),
            "downscale": data_cfg.downscale, "white_background": data_cfg.white_background,
            "skip_missing": data_cfg.skip_missing, "llff_hold": data_cfg.llff_hold,
            "ndc": str(data_cfg.ndc).lower(), "cache_shards": data_cfg.cache_shards, "split": split,
            "meta": [_file_entry(f, real_root, True) for f in files.meta],
            "data": [_file_entry(f, real_root, False) for f in files.data]}


def cache_key(data_cfg: DataConfig, split: str = "train") -> str:
    """sha256 (hex) identifying the rays a scene + settings produce (see :func:`key_inputs`).

    SceneError (naming the file) when the scene cannot be indexed: missing folder or files, a
    file_path outside data.root without data.allow_outside_root, broken metadata.
    """
    return _digest(key_inputs(data_cfg, split))


def _digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- reading

class RayCache:
    """A complete ray cache on storage (opened from its manifest).

    Attributes: url, key, n_shards, n_rays, shard_sizes (list[int]), checksums (per shard
    {"bytes": int, "sha256": hex}), H, W, n_images, and meta (near, far, aabb, background, ndc,
    ndc_focal, ndc_size, split, files).
    """

    def __init__(self, url: str, manifest: dict):
        self.url = url
        self.manifest = manifest
        self.key: str = manifest["key"]
        self.n_shards: int = int(manifest["n_shards"])
        self.n_rays: int = int(manifest["n_rays"])
        self.shard_sizes: list[int] = [int(x) for x in manifest["shard_sizes"]]
        self.checksums: list[dict] = [dict(c) for c in manifest["shards"]]
        self.H: int = int(manifest["H"])
        self.W: int = int(manifest["W"])
        self.n_images: int = int(manifest["n_images"])
        self.meta: dict = dict(manifest["meta"])

    @classmethod
    def open(cls, url: str) -> "RayCache":
        """Open the cache folder at url; RayCacheError naming the URL if it is not a complete,
        valid cache of this version (shards are verified when read, not here)."""
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
            raise RayCacheError(f"corrupt ray cache manifest {where}: {e}; {rebuild_hint(url)}") from e
        problem = _manifest_problem(manifest)
        if problem:
            raise RayCacheError(f"invalid ray cache manifest {where}: {problem}; {rebuild_hint(url)}")
        return cls(url, manifest)

    def shard_url(self, s: int) -> str:
        return storage.join(self.url, shard_name(s))

    def check_bytes(self, s: int, raw: bytes) -> None:
        """RayCacheError naming the shard unless raw has the size and sha256 the manifest records."""
        want = self.checksums[s]
        where = storage.redact(self.shard_url(s))
        if len(raw) != int(want["bytes"]):
            raise RayCacheError(f"ray cache shard {where} is damaged: {len(raw)} bytes, the manifest "
                                f"records {want['bytes']} (truncated or overwritten); "
                                f"{rebuild_hint(self.url)}")
        got = hashlib.sha256(raw).hexdigest()
        if got != want["sha256"]:
            raise RayCacheError(f"ray cache shard {where} is damaged: sha256 {got[:16]}... differs "
                                f"from the manifest's {str(want['sha256'])[:16]}...; "
                                f"{rebuild_hint(self.url)}")

    def read_shard(self, s: int, verify: bool = True) -> dict[str, torch.Tensor]:
        """Shard s as a dict of tensors (see the module docstring), its bytes checked against the
        manifest first (verify); RayCacheError names the URL and says how to rebuild."""
        if not 0 <= s < self.n_shards:
            raise IndexError(f"shard {s} out of range [0, {self.n_shards}) in {storage.redact(self.url)}")
        url = self.shard_url(s)
        where = storage.redact(url)
        try:
            raw = storage.read_bytes(url)
        except FileNotFoundError as e:
            raise RayCacheError(f"ray cache shard not found: {where} (the cache is incomplete); "
                                f"{rebuild_hint(self.url)}") from e
        except Exception as e:  # noqa: BLE001 - storage error: name the URL
            raise RayCacheError(f"cannot read ray cache shard {where}: {type(e).__name__}: {e}") from e
        if verify:
            self.check_bytes(s, raw)
        try:
            data = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - unpickling error: name the URL
            raise RayCacheError(f"cannot load ray cache shard {where}: {type(e).__name__}: {e}; "
                                f"{rebuild_hint(self.url)}") from e
        n = self.shard_sizes[s]
        if not isinstance(data, dict):
            raise RayCacheError(f"corrupt ray cache shard {where}: expected a dict of tensors; "
                                f"{rebuild_hint(self.url)}")
        for name, (dtype, width) in FIELDS.items():
            t = data.get(name)
            shape = (n, width) if width else (n,)
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
                got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                raise RayCacheError(f"corrupt ray cache shard {where}: field '{name}' should be "
                                    f"{dtype} {shape}, got {got}; {rebuild_hint(self.url)}")
        return data

    def __repr__(self) -> str:
        return (f"RayCache({storage.redact(self.url)!r}, n_shards={self.n_shards}, "
                f"n_rays={self.n_rays}, images={self.n_images}x{self.H}x{self.W})")


def _manifest_problem(m) -> str:
    """Why a parsed manifest is unusable ('' when it is fine)."""
    if not isinstance(m, dict):
        return "not a JSON object"
    if m.get("version") != CACHE_VERSION:
        old = " (an older format without shard checksums)" if m.get("version") == 1 else ""
        return (f"format version {m.get('version')!r}{old}, this code reads version "
                f"{CACHE_VERSION}")
    for k in ("key", "n_shards", "n_rays", "shard_sizes", "shards", "H", "W", "n_images", "meta"):
        if k not in m:
            return f"missing field '{k}'"
    try:
        if list(m["shard_sizes"]) != shard_sizes(int(m["n_rays"]), int(m["n_shards"])):
            return "shard_sizes do not match n_rays and n_shards"
        sums = m["shards"]
        if len(sums) != int(m["n_shards"]) or not all(
                isinstance(c, dict) and isinstance(c.get("bytes"), int)
                and isinstance(c.get("sha256"), str) and len(c["sha256"]) == 64 for c in sums):
            return "'shards' must hold one {bytes, sha256} entry per shard"
    except (TypeError, ValueError):
        return "bad n_rays / n_shards / shard_sizes / shards"
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
                 log: Callable[[str], None] = print) -> dict[int, dict]:
    """Write the shards this rank owns (s % world_size == rank) under url.

    Returns {shard: {"bytes": int, "sha256": hex}} in shard order, computed from the bytes before
    they go to storage (so damage in transit or at rest is caught when they are read back). Holds
    one shard's rays at a time (beside the scene). Progress goes to log on rank 0.
    """
    n_rays = scene.n * scene.H * scene.W
    if n_rays < n_shards:
        raise RayCacheError(f"scene has {n_rays} rays, fewer than data.cache_shards={n_shards}")
    storage.makedirs(url)
    mine = list(range(rank, n_shards, world_size))
    step = max(1, len(mine) // 4)
    sums = {}
    for j, s in enumerate(mine):
        buf = io.BytesIO()
        torch.save(shard_rays(scene, s, n_shards), buf)
        raw = buf.getvalue()
        sums[s] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        storage.write_bytes(storage.join(url, shard_name(s)), raw)
        if rank == 0 and ((j + 1) % step == 0 or j + 1 == len(mine)):
            log(f"ray cache: rank 0 wrote {j + 1}/{len(mine)} of its shards "
                f"({n_shards} shards over {world_size} rank(s))")
    return sums


def write_manifest(scene, url: str, key: str, n_shards: int, checksums: dict[int, dict],
                   inputs: dict | None = None) -> None:
    """Write manifest.json (the commit marker) after checking every shard file is present and
    has a checksum. checksums: {shard: {"bytes", "sha256"}} from every rank's
    :func:`build_shards`; inputs: :func:`key_inputs` (recorded to explain a key)."""
    present = set(storage.listdir(url))
    missing = [shard_name(s) for s in range(n_shards)
               if shard_name(s) not in present or s not in checksums]
    if missing:
        raise RayCacheError(f"cannot commit ray cache {storage.redact(url)}: {len(missing)} shard "
                            f"file(s) missing or without a checksum, e.g. {missing[0]}")
    n_rays = scene.n * scene.H * scene.W
    manifest = {
        "version": CACHE_VERSION, "key": key, "n_shards": n_shards, "n_rays": n_rays,
        "shard_sizes": shard_sizes(n_rays, n_shards),
        "shards": [{"bytes": int(checksums[s]["bytes"]), "sha256": str(checksums[s]["sha256"])}
                   for s in range(n_shards)],
        "H": scene.H, "W": scene.W, "n_images": scene.n,
        "fields": {k: [str(d).replace("torch.", ""), w] for k, (d, w) in FIELDS.items()},
        "meta": {"near": float(scene.near), "far": float(scene.far),
                 "aabb": torch.as_tensor(scene.aabb).tolist(),
                 "background": torch.as_tensor(scene.background).tolist(),
                 "ndc": bool(scene.ndc), "ndc_focal": float(scene.ndc_focal),
                 "ndc_size": [int(x) for x in scene.ndc_size],
                 "split": scene.split, "files": [str(f) for f in scene.files]},
        "inputs": inputs,
    }
    storage.write_text(storage.join(url, MANIFEST), json.dumps(manifest, indent=1))


def verify_shards(cache: RayCache, rank: int = 0, world_size: int = 1) -> int:
    """Check the size + sha256 of the shards this rank owns (s % world_size == rank), without
    unpickling them; returns how many. Collective: a damaged shard raises RayCacheError on every
    rank."""
    err, n = "", 0
    try:
        for s in range(rank, cache.n_shards, world_size):
            cache.check_bytes(s, storage.read_bytes(cache.shard_url(s)))
            n += 1
    except FileNotFoundError:
        err = (f"ray cache shard not found: {storage.redact(cache.shard_url(s))}; "
               f"{rebuild_hint(cache.url)}")
    except (RayCacheError, OSError) as e:
        err = str(e)
    dist.raise_together(err, rank, world_size, RayCacheError)
    return n


def _cache_problem(url: str, key: str) -> str | None:
    """None when url holds a valid cache for key; else why not ('' when there is no manifest)."""
    try:
        cache = RayCache.open(url)
    except RayCacheError as e:
        # NOTE: the remedy in the message is what ensure_cache is about to do: leave it out.
        return "" if isinstance(e.__cause__, FileNotFoundError) else \
            str(e).replace(f"; {rebuild_hint(url)}", "")
    return None if cache.key == key else f"its key {cache.key[:16]}... is not {key[:16]}..."


def ensure_cache(data_cfg: DataConfig, base_url: str, rank: int = 0, world_size: int = 1,
                 log: Callable[[str], None] = print, scene=None, rebuild: bool = False) -> RayCache:
    """Open the cache of data_cfg's train split under base_url, building it first if needed
    (or always, with rebuild).

    Collective: every rank must call it. Building: each rank writes the shards it owns, the
    checksums are gathered, then rank 0 writes the manifest between two barriers. scene: an
    already loaded train Scene (else :func:`nerf_dist.scenes.load_scene` is called only when a
    build is needed).
    """
    from .scenes import scene_sources
    files = scene_sources(data_cfg, "train")
    inputs = _key_inputs(data_cfg, "train", files)
    # NOTE: every rank indexes the scene (so a bad scene fails on all of them alike), but rank 0's
    # key wins: a file touched between two ranks' reads must not split them over two folders.
    key = dist.broadcast_object(_digest(inputs))
    url = storage.join(base_url, key[:16])
    where = storage.redact(url)
    # NOTE: rank 0 decides so every rank takes the same branch (a manifest could appear mid-check).
    problem = dist.broadcast_object(("--rebuild" if rebuild else _cache_problem(url, key))
                                    if rank == 0 else None)
    if problem is not None:
        if rank == 0:
            why = f"rebuilding {where}: {problem}" if problem else f"building {where}"
            log(f"ray cache: {why} ({data_cfg.cache_shards} shards)")
            storage.remove(storage.join(url, MANIFEST))  # a stale/corrupt marker must not survive
        if scene is None:
            from .scenes import load_scene
            scene = load_scene(data_cfg, "train")
        # NOTE: a rank that fails here must not leave the others waiting in the gather below:
        # its error travels with the checksums and every rank raises it.
        mine, err = {}, ""
        try:
            if scene.sources.all and _key_inputs(data_cfg, "train", scene.sources) != inputs:
                raise RayCacheError(f"the scene files under {data_cfg.root} changed while the ray "
                                    f"cache was being built; run the command again")
            mine = build_shards(scene, url, data_cfg.cache_shards, rank, world_size, log)
        except Exception as e:  # noqa: BLE001 - re-raised below on every rank
            err = f"[rank {rank}] {e}" if world_size > 1 else str(e)
            if world_size == 1:
                raise
        parts = dist.all_gather_object((mine, err), rank, world_size)
        errs = [e for part in parts if part for e in part[1:] if e]
        if errs:
            raise RayCacheError(f"building the ray cache {where} failed: {errs[0]}")
        sums = {s: c for part in parts if part for s, c in part[0].items()}
        dist.barrier()
        if rank == 0:
            write_manifest(scene, url, key, data_cfg.cache_shards, sums, inputs)
            log(f"ray cache: committed {where}")
        dist.barrier()
    elif rank == 0:
        log(f"ray cache: reusing {where}")
    cache = RayCache.open(url)
    if cache.key != key:
        raise RayCacheError(f"ray cache {where} has key {cache.key[:16]}..., expected {key[:16]}...; "
                            f"{rebuild_hint(url)}")
    return cache
