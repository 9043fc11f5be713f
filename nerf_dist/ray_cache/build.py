"""Building a pixel cache from images decoded one at a time, in bounded memory, on N ranks.

Phase 1 (parts): rank r decodes the frames of its block ``[r n / N, (r + 1) n / N)`` one at a
time and keeps them encoded (:func:`.colour.encode`) in a buffer. When the buffer reaches half
of data.cache_memory (or the block ends) it is flushed as one part file
``parts/part-{first frame:08d}.bin``: for s = 0 .. S-1 in turn, the buffered pixels of shard s in
increasing global index. Each block's offset follows from the frame range, and its crc32 is
recorded.
Phase 2 (shards): the ranks exchange their part lists and the widest colour mode; the owner of
shard s (s % N == rank) reads shard s's block of every part in frame order (range reads, crc32
checked), converts it to the cache's mode, and writes ``shard-{s:05d}.bin`` with its sha256.
Rank 0 then writes the manifest and removes parts/.
A single rank whose frames all fit in the buffer writes the shards straight from memory.

Peak memory per rank: about data.cache_memory (the buffer, then the part built from it) plus one
decoded frame (float32 at file size: 16 bytes a pixel for RGBA, and its composited copy); in
phase 2, one shard and one block.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np
import torch

from .. import dist, storage
from ..config import DataConfig
from ..scenes import open_scene, scene_sources
from .agree import together
from .colour import MODES, bytes_per_pixel, convert, encode, widest
from .key import digest, key_inputs_of
from .layout import (CACHE_VERSION, MANIFEST, PARTS, RayCache, RayCacheError, count_in,
                     manifest_problem, rebuild_hint, shard_name, shard_sizes)


class InMemory:
    """A loaded :class:`~nerf_dist.scenes.Scene` as a build source (frames already processed)."""

    factor = 1

    def __init__(self, scene):
        self.scene = scene
        for k in ("n", "H", "W", "K", "c2w", "distortion", "near", "far", "aabb", "background",
                  "ndc", "ndc_focal", "ndc_size", "split", "files", "sources"):
            setattr(self, k, getattr(scene, k))

    def read(self, i: int) -> np.ndarray:
        return self.scene.images[i].numpy()

    def finish(self, raw: np.ndarray) -> np.ndarray:
        return raw


def image_block(n: int, rank: int, world_size: int) -> range:
    """The frames rank encodes in phase 1."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def _slice(q: np.ndarray, frame: int, s: int, n_shards: int, HW: int) -> np.ndarray:
    """Frame's pixels that belong to shard s, in increasing index (q: [H*W, C])."""
    return q[(s - frame * HW) % n_shards::n_shards]


def _fill(frames: list, s: int, n_shards: int, HW: int, mode: str, bg, out: np.ndarray) -> int:
    """Write shard s's pixels of frames [(frame, mode, q)] into out (in mode); returns the count."""
    at = 0
    for i, m, q in frames:
        part = _slice(q, i, s, n_shards, HW)
        out[at:at + len(part)] = convert(part, m, mode, bg)
        at += len(part)
    return at


def write_parts(source, url: str, n_shards: int, rank: int = 0, world_size: int = 1,
                budget: int = 2 << 30, log: Callable[[str], None] = print):
    """Phase 1 on one rank. Returns (flushes, mode, frames): flushes = [{"name", "first", "end",
    "mode", "crc": [S]}] of the part files written; mode = the widest colour mode seen; frames =
    the encoded frames when a single rank holds them all (nothing written then), else None."""
    HW = source.H * source.W
    block = image_block(source.n, rank, world_size)
    frames: list = []
    held, flushes, modes = 0, [], set()
    step = max(1, len(block) // 4)
    for j, (i, (m, q)) in enumerate(zip(block, _encoded(source, block, budget))):
        modes.add(m)
        frames.append((i, m, q))
        held += q.nbytes
        last = j + 1 == len(block)
        if held >= budget // 2 or (last and (world_size > 1 or flushes)):
            flushes.append(_flush(frames, url, n_shards, HW, source.background))
            frames, held = [], 0
        if rank == 0 and ((j + 1) % step == 0 or last):
            log(f"ray cache: rank 0 encoded {j + 1}/{len(block)} of its images")
    return flushes, widest(modes), (frames if world_size == 1 and not flushes else None)


def _encoded(source, block: range, budget: int):
    """(mode, q) of each frame of block, in order, decoded by a few threads ahead.

    NOTE: PNG/JPEG decoding and numpy release the GIL. Frames in flight are bounded by the cores
    and by budget (a decoded RGBA frame and its processed copies take ~64 bytes a file pixel).
    """
    h0, w0 = getattr(source, "size0", (source.H, source.W))
    workers = max(1, min(4, os.cpu_count() or 1, budget // (64 * h0 * w0 + 1)))

    def one(i):
        return encode(source.read(i), source.factor, source.finish)
    if workers == 1 or len(block) < 2:
        yield from (one(i) for i in block)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ray-cache-decode") as pool:
        todo = iter(block)
        flying = deque(pool.submit(one, i) for i in islice(todo, workers))
        while flying:
            got = flying.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                flying.append(pool.submit(one, nxt))
            yield got


def _flush(frames: list, url: str, n_shards: int, HW: int, bg) -> dict:
    """Write frames as one part file (shard by shard); frames is emptied to free memory early."""
    first, end = frames[0][0], frames[-1][0] + 1
    mode = widest(m for _, m, _ in frames)
    dtype, c = MODES[mode]
    part = np.empty((len(frames) * HW, c), dtype)
    crc, at = [], 0
    for s in range(n_shards):
        k = _fill(frames, s, n_shards, HW, mode, bg, part[at:])
        crc.append(zlib.crc32(part[at:at + k]))
        at += k
    frames.clear()
    name = f"part-{first:08d}.bin"
    storage.write_bytes(storage.join(url, PARTS, name), part.data)
    return {"name": name, "first": first, "end": end, "mode": mode, "crc": crc}


class _DamagedBlock(RayCacheError):
    """A part block whose bytes fail their crc32 (read again when remote)."""


def _read_block(url: str, start: int, end: int, crc: int) -> bytes:
    """Bytes [start, end) of a part, crc32-checked; a remote read is retried like a shard's
    (:func:`storage.retry`: storage.retries more reads, storage.backoff_s doubling)."""
    def once():
        data = storage.read_range(url, start, end)
        if zlib.crc32(data) != crc:
            raise _DamagedBlock(f"bytes {start}..{end} fail their crc32")
        return data

    def gave_up(e, what, url, attempts):
        return RayCacheError(f"ray cache part {storage.redact(url)} is damaged (bytes {start}.."
                             f"{end} fail their crc32 after {attempts} read(s)); run the command "
                             f"again")
    return storage.retry("read ray cache part", url, once,
                         retry_if=lambda e: isinstance(e, _DamagedBlock),
                         attempts=None if storage.is_url(url) else 1, gave_up=gave_up)


def part_offsets(first: int, end: int, HW: int, n_shards: int) -> np.ndarray:
    """[n_shards + 1] int64: the pixel offset of each shard's block in the part file of frames
    [first, end) of HW pixels (shard s's block is [out[s], out[s + 1])); times the part's bytes
    per pixel, its byte range. int64 whatever numpy's default integer (int32 on Windows)."""
    counts = [count_in(first * HW, end * HW, t, n_shards) for t in range(n_shards)]
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(counts, dtype=np.int64)])


def _write_shard(url: str, s: int, q: np.ndarray) -> dict:
    sha = hashlib.sha256(q.data).hexdigest()
    storage.write_bytes(storage.join(url, shard_name(s)), q.data)
    return {"bytes": int(q.nbytes), "sha256": sha}


def write_shards(source, url: str, n_shards: int, flushes: list, mode: str, rank: int = 0,
                 world_size: int = 1, frames: list | None = None,
                 log: Callable[[str], None] = print) -> dict[int, dict]:
    """Phase 2 on one rank: write the shards it owns (s % world_size == rank) from the parts
    (flushes of every rank, any order) or, on a single rank, from frames. Returns {shard:
    {"bytes", "sha256"}}, computed from the bytes before they go to storage."""
    HW = source.H * source.W
    sizes = shard_sizes(source.n * HW, n_shards)
    dtype, c = MODES[mode]
    flushes = sorted(flushes, key=lambda f: f["first"])
    # offsets of every shard's block in every part, in that part's own bytes per pixel
    starts = [(part_offsets(f["first"], f["end"], HW, n_shards), bytes_per_pixel(f["mode"]))
              for f in flushes]
    mine = list(range(rank, n_shards, world_size))
    sums, step = {}, max(1, len(mine) // 4)
    for j, s in enumerate(mine):
        out = np.empty((sizes[s], c), dtype)
        if frames is not None:
            at = _fill(frames, s, n_shards, HW, mode, source.background, out)
        else:
            at = 0
            for f, (cum, bpp) in zip(flushes, starts):
                lo, hi = int(cum[s]), int(cum[s + 1])
                if hi == lo:
                    continue
                part_url = storage.join(url, PARTS, f["name"])
                data = _read_block(part_url, lo * bpp, hi * bpp, f["crc"][s])
                q = np.frombuffer(data, MODES[f["mode"]][0]).reshape(hi - lo, -1)
                out[at:at + hi - lo] = convert(q, f["mode"], mode, source.background)
                at += hi - lo
        if at != sizes[s]:
            raise RayCacheError(f"building shard {s}: {at} pixels gathered, {sizes[s]} expected "
                                f"(a part file is missing or from another build); run it again")
        sums[s] = _write_shard(url, s, out)
        if rank == 0 and ((j + 1) % step == 0 or j + 1 == len(mine)):
            log(f"ray cache: rank 0 wrote {j + 1}/{len(mine)} of its shards "
                f"({n_shards} shards over {world_size} rank(s))")
    return sums


def build_shards(scene, url: str, n_shards: int, budget: int = 2 << 30,
                 log: Callable[[str], None] = print) -> dict[int, dict]:
    """Every shard of a Scene or LazyScene on one process (phase 1 + 2); {shard: checksum}."""
    source = InMemory(scene) if hasattr(scene, "images") else scene
    _check_size(source, n_shards)
    flushes, mode, frames = write_parts(source, url, n_shards, 0, 1, budget, log)
    return write_shards(source, url, n_shards, flushes, mode, 0, 1, frames, log)


def _check_size(source, n_shards: int) -> None:
    if source.n * source.H * source.W < n_shards:
        raise RayCacheError(f"scene has {source.n * source.H * source.W} pixels, fewer than "
                            f"data.cache_shards={n_shards}")


def write_manifest(source, url: str, key: str, n_shards: int, checksums: dict[int, dict],
                   mode: str, inputs: dict | None = None) -> None:
    """Write manifest.json (the commit marker) after checking every shard file is present and
    has a checksum. checksums: {shard: {"bytes", "sha256"}} from every rank's
    :func:`write_shards`; inputs: :func:`.key.key_inputs` (recorded to explain a key)."""
    present = set(storage.listdir(url))
    missing = [shard_name(s) for s in range(n_shards)
               if shard_name(s) not in present or s not in checksums]
    if missing:
        raise RayCacheError(f"cannot commit ray cache {storage.redact(url)}: {len(missing)} shard "
                            f"file(s) missing or without a checksum, e.g. {missing[0]}")
    n_pixels = source.n * source.H * source.W
    dtype, channels = MODES[mode]
    dist_ = source.distortion
    manifest = {
        "version": CACHE_VERSION, "key": key, "n_shards": n_shards,
        "n_rays": n_pixels,  # NOTE: the format's name for the pixel count (format 3 keeps it)
        "shard_sizes": shard_sizes(n_pixels, n_shards),
        "shards": [{"bytes": int(checksums[s]["bytes"]), "sha256": str(checksums[s]["sha256"])}
                   for s in range(n_shards)],
        "H": source.H, "W": source.W, "n_images": source.n,
        "colour": {"mode": mode, "dtype": dtype.name, "channels": channels,
                   "bytes_per_pixel": bytes_per_pixel(mode)},
        # NOTE: float32 values as JSON numbers (their exact float64 repr) read back bit for bit.
        "cameras": {"K": torch.as_tensor(source.K, dtype=torch.float32).tolist(),
                    "c2w": torch.as_tensor(source.c2w, dtype=torch.float32)[:, :3, :4].tolist(),
                    "distortion": None if dist_ is None else
                    torch.as_tensor(dist_, dtype=torch.float32).tolist()},
        "meta": {"near": float(source.near), "far": float(source.far),
                 "aabb": torch.as_tensor(source.aabb).tolist(),
                 "background": torch.as_tensor(source.background, dtype=torch.float32).tolist(),
                 "ndc": bool(source.ndc), "ndc_focal": float(source.ndc_focal),
                 "ndc_size": [int(x) for x in source.ndc_size],
                 "split": source.split, "files": [str(f) for f in source.files]},
        "inputs": inputs,
    }
    storage.write_text(storage.join(url, MANIFEST), json.dumps(manifest, indent=1))


def verify_shards(cache: RayCache, rank: int = 0, world_size: int = 1) -> int:
    """Check the size + sha256 of the shards this rank owns (s % world_size == rank), one at a
    time; returns how many. Collective: a damaged shard raises RayCacheError on every rank."""
    err, n = "", 0
    try:
        for s in range(rank, cache.n_shards, world_size):
            cache.read_bytes(s)
            n += 1
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


def _older_caches(base_url: str, mine: str) -> list[str]:
    """Folders under base_url holding a cache of another format version (never read, only named)."""
    out = []
    try:
        for name in storage.listdir(base_url):
            if name == mine:
                continue
            try:
                m = json.loads(storage.read_text(storage.join(base_url, name, MANIFEST)))
            except Exception:  # noqa: BLE001 - not a cache folder, or unreadable: not ours to judge
                continue
            if isinstance(m, dict) and m.get("version") != CACHE_VERSION:
                out.append(f"{name} (format {m.get('version')!r}: {manifest_problem(m)})")
    except Exception:  # noqa: BLE001 - listing is a courtesy
        pass
    return out


def ensure_cache(data_cfg: DataConfig, base_url: str, rank: int = 0, world_size: int = 1,
                 log: Callable[[str], None] = print, scene=None, rebuild: bool = False) -> RayCache:
    """Open the cache of data_cfg's train split under base_url, building it first if needed
    (or always, with rebuild).

    Collective: every rank must call it. Building streams the frames (see the module docstring)
    with data.cache_memory bounding each rank's buffer. scene: an already loaded train Scene
    (else the scene is opened lazily, only when a build is needed).

    A step that fails on one rank (indexing the scene, rank 0's decision and commit, opening the
    cache) raises on every rank (:func:`.agree.together`), the failure named in every rank's log.
    """
    # NOTE: every rank indexes the scene (so a bad scene fails on all of them alike), but rank 0's
    # key wins: a file touched between two ranks' reads must not split them over two folders.
    inputs = together(lambda: key_inputs_of(data_cfg, "train", scene_sources(data_cfg, "train")),
                      rank, world_size, "indexing the scene's files")
    key = dist.broadcast_object(digest(inputs))
    url = storage.join(base_url, key[:16])
    where = storage.redact(url)

    def decide():
        if rank != 0:
            return None
        problem = "--rebuild" if rebuild else _cache_problem(url, key)
        if problem is not None:
            why = f"rebuilding {where}: {problem}" if problem else f"building {where}"
            log(f"ray cache: {why} ({data_cfg.cache_shards} shards, format {CACHE_VERSION})")
            for old in _older_caches(base_url, key[:16]):
                log(f"ray cache: not using {storage.redact(storage.join(base_url, ''))}{old}; "
                    f"delete it to free its space")
            storage.remove(storage.join(url, MANIFEST))  # a stale/corrupt marker must not survive
        return problem
    # NOTE: rank 0 decides so every rank takes the same branch (a manifest could appear mid-check).
    problem = dist.broadcast_object(together(decide, rank, world_size,
                                             f"checking the ray cache {where}"))
    if problem is not None:
        _build(data_cfg, url, key, inputs, rank, world_size, log, scene)
    elif rank == 0:
        log(f"ray cache: reusing {where}")

    def open_():
        cache = RayCache.open(url)
        if cache.key != key:
            raise RayCacheError(f"ray cache {where} has key {cache.key[:16]}..., expected "
                                f"{key[:16]}...; {rebuild_hint(url)}")
        return cache
    return together(open_, rank, world_size, f"opening the ray cache {where}")


def _gather(value, err: str, rank: int, world_size: int, where: str) -> list:
    """Every rank's value; RayCacheError on every rank when any rank failed.

    NOTE: a rank that fails must not leave the others waiting in a later collective: its error
    travels with the values and every rank raises it.
    """
    # NOTE: without a process group only this rank's slot is filled (tests drive ranks by hand).
    parts = [p for p in dist.all_gather_object((value, err), rank, world_size) if p is not None]
    errs = [p[1] for p in parts if p[1]]
    if errs:
        raise RayCacheError(f"building the ray cache {where} failed: {errs[0]}")
    return [p[0] for p in parts]


def _build(data_cfg, url, key, inputs, rank, world_size, log, scene) -> None:
    S, where = data_cfg.cache_shards, storage.redact(url)

    def guard(fn):
        try:
            return fn(), ""
        except Exception as e:  # noqa: BLE001 - re-raised on every rank by _gather
            if world_size == 1:
                raise
            return None, f"[rank {rank}] {e}"

    def phase1():
        src = InMemory(scene) if scene is not None else open_scene(data_cfg, "train")
        if src.sources.all and key_inputs_of(data_cfg, "train", src.sources) != inputs:
            raise RayCacheError(f"the scene files under {data_cfg.root} changed while the ray "
                                f"cache was being built; run the command again")
        _check_size(src, S)
        storage.makedirs(url)
        return src, write_parts(src, url, S, rank, world_size, data_cfg.cache_memory_bytes, log)

    got, err = guard(phase1)
    source, (flushes, mode, frames) = got if got else (None, ([], "rgb8", None))
    infos = _gather((flushes, mode), err, rank, world_size, where)
    all_flushes = [f for fl, _ in infos for f in fl]
    mode = widest(m for _, m in infos)
    sums, err = guard(lambda: write_shards(source, url, S, all_flushes, mode, rank, world_size,
                                           frames, log))
    # NOTE: the gather above waits for every rank's shards: rank 0 may commit right after it.
    sums = {s: c for part in _gather(sums, err, rank, world_size, where) for s, c in part.items()}

    def commit():
        if rank != 0:
            return
        write_manifest(source, url, key, S, sums, mode, inputs)
        if all_flushes:
            storage.remove(storage.join(url, PARTS), recursive=True)
        total = sum(int(c["bytes"]) for c in sums.values())
        log(f"ray cache: committed {where} ({source.n * source.H * source.W} pixels, {mode}, "
            f"{bytes_per_pixel(mode)} bytes a pixel, {total / 1e6:.1f} MB)")
    # NOTE: rank 0 commits alone; the others wait here, and learn of its failure here.
    together(commit, rank, world_size, f"committing the ray cache {where}")
