"""Memory budgets: refuse requests whose size is known up front before any work starts.

A render resolution, tile and chunk, or a training batch over a cache, fix how much memory a
rank will hold. :func:`check_render` and :func:`check_train_batch` compare an upper-bound
estimate with this rank's share of what the machine has left (:func:`host_share`: the host's
available memory divided by the ranks torchrun started on it, ``LOCAL_WORLD_SIZE``; the CUDA
device's free memory) and raise
:class:`MemoryBudgetError` (a ValueError: the CLI prints it on one line and exits 1) with the
estimate, the limit and the knob to turn. :func:`on_all_ranks` runs a check on every rank and
makes them agree, so one rank short of memory never leaves the others waiting in a collective.

The estimates are deliberately simple formulas of the config (documented on each function and
checked against measured peaks in tests/test_memory.py): each model kind's own estimate of its
activations per ray and its weights (``memory_estimate`` of the model protocol, asked through
the registry), bytes per pixel for frame buffers, bytes per ray for the cache. They are upper
bounds for fp32; bf16/fp16 activations need less.

Set ``NERF_DIST_MEMORY_CHECK=off`` to skip the comparison with available memory (the
absurd-value checks and ``rays_per_batch > cache rays`` still apply), e.g. when the machine's
memory is shared in ways the kernel does not report.
"""
from __future__ import annotations

import math
import os

import torch

from .dist import raise_together
from .loader.schedule import CROP_BYTES, PERM_BYTES
from .models.base import F32
from .models.registry import memory_estimate as model_memory
from .ray_cache.colour import bytes_per_pixel

# Hard sanity limits, independent of the machine: values beyond them are mistakes, not requests.
MAX_SIDE = 1 << 20          # pixels per image side
MAX_TILE = 1 << 16          # pixels per tile side
MAX_CHUNK = 1 << 26         # rays per model call

# Rank 0 holds each frame of the batch being assembled: rgb [H, W, 3] + depth + acc, float32.
FRAME_BYTES_PER_PIXEL = 5 * F32
# Writing one frame (FrameWriter.write: clamp copies, 16-bit depth, colourised depth, uint8 and
# PNG buffers) peaks at about this many transient bytes per pixel on top of the frame itself.
WRITE_BYTES_PER_PIXEL = 128
# Evaluating one frame (evaluate_split: PSNR, SSIM's blurred [3, H, W] maps, hit depth, PNGs).
EVAL_BYTES_PER_PIXEL = 384
# One tile in flight on a rank (tile_rays + render_chunked outputs + the cat + the CPU copy).
TILE_BYTES_PER_PIXEL = 128
# Bytes a rank holds per cached pixel it owns, at most: rgb16 colours (6) + two int32 permutations
# (8) or, with a centre-crop warm-up, crop positions and two crop permutations (12); the loader
# streams shards when the cache is larger than data.cache_memory (see nerf_dist.loader).
CACHE_BYTES_PER_PIXEL = bytes_per_pixel("rgb16") + max(PERM_BYTES, CROP_BYTES)
# Tile results sent to rank 0 per gather round, summed over the ranks (renderer.core): bounds what
# rank 0 receives at once, whatever the frame size.
ROUND_BYTES = 64 << 20
# Added to every estimate: one-time buffers the per-sample and per-pixel figures leave out (BLAS
# and OpenMP workspaces, allocator slack; measured at up to ~30 MiB on CPU).
_SLACK = 64 << 20


class MemoryBudgetError(ValueError):
    """A request would need more memory than this machine has; the message says what to change."""


# ------------------------------------------------------------------------------ what is there

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _meminfo_available() -> int | None:
    text = _read("/proc/meminfo")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of cgroup mounts from /proc/self/mountinfo."""
    out = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            out.append((f[3], f[4], r[0], r[2]))
    return out


def _cgroup_dirs() -> list[tuple[str, str]]:
    """(version, directory) of this process's memory cgroup and its ancestors, innermost first."""
    dirs: list[tuple[str, str]] = []
    lines = (_read("/proc/self/cgroup") or "").splitlines()
    for root, mnt, fstype, opts in _mounts():
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, ctrls, path = parts
            if fstype == "cgroup2" and parts[0] == "0" and ctrls == "":
                version = "v2"
            elif fstype == "cgroup" and "memory" in ctrls.split(",") and "memory" in opts.split(","):
                version = "v1"
            else:
                continue
            # NOTE: inside a cgroup namespace the mount's root is the process's own cgroup, so
            # the path from /proc/self/cgroup is relative to it; otherwise strip the mount root.
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            d = os.path.normpath(os.path.join(mnt, rel.lstrip("/")))
            if not os.path.isdir(d):
                d = mnt
            while True:
                dirs.append((version, d))
                if os.path.normpath(d) == os.path.normpath(mnt):
                    break
                d = os.path.dirname(d)
    return dirs


def _stat_value(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return 0


def _cgroup_headroom() -> tuple[int, int] | None:
    """(bytes left, limit) of the tightest memory cgroup limit above this process, or None.

    Left = limit - (usage - inactive file cache): the page cache the kernel would drop first
    does not count as used, as in `docker stats`.
    """
    best = None
    for version, d in _cgroup_dirs():
        if version == "v2":
            lim, cur = _read(os.path.join(d, "memory.max")), _read(os.path.join(d, "memory.current"))
            inactive = _stat_value(_read(os.path.join(d, "memory.stat")), "inactive_file")
        else:
            lim = _read(os.path.join(d, "memory.limit_in_bytes"))
            cur = _read(os.path.join(d, "memory.usage_in_bytes"))
            inactive = _stat_value(_read(os.path.join(d, "memory.stat")), "total_inactive_file")
        if not lim or not lim.isdigit() or not cur or not cur.isdigit():
            continue  # "max" (v2) or unreadable: no limit here
        limit = int(lim)
        if limit >= 1 << 60:  # v1 spells "no limit" as a huge page-aligned number
            continue
        left = max(0, limit - max(0, int(cur) - inactive))
        if best is None or left < best[0]:
            best = (left, limit)
    return best


def host_available() -> tuple[int, str]:
    """(bytes, description) of host memory this process can still use: the smaller of the
    cgroup (v2 or v1) headroom and /proc/meminfo MemAvailable."""
    found: list[tuple[int, str]] = []
    avail = _meminfo_available()
    if avail is not None:
        found.append((avail, f"{fmt_bytes(avail)} available (MemAvailable)"))
    cg = _cgroup_headroom()
    if cg is not None:
        found.append((cg[0], f"{fmt_bytes(cg[0])} available under the cgroup limit of "
                             f"{fmt_bytes(cg[1])}"))
    if not found:
        return 1 << 62, "unknown (no /proc/meminfo or cgroup limit)"
    return min(found)


def ranks_on_host() -> tuple[int, int]:
    """(local rank, ranks on this host) from torchrun's ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``;
    (0, 1) when they are unset or malformed (a single process, or a launcher that sets neither).
    """
    try:
        n = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0, 1
    return (local, n) if n >= 1 and 0 <= local < n else (0, 1)


def host_share() -> tuple[int, str]:
    """(bytes, description) of this rank's share of the host: :func:`host_available` divided by
    the ranks on this host (:func:`ranks_on_host`).

    NOTE: the ranks of one host check at about the same time, before any of them allocates what
    it estimates, so each sees the whole host's available memory; comparing each estimate with
    the whole would let N ranks together take N times what is there.
    """
    avail, where = host_available()
    local, n = ranks_on_host()
    if n == 1:
        return avail, f"only {where}"
    share = avail // n
    return share, (f"its share is {fmt_bytes(share)} (the {where} split over the {n} ranks on "
                   f"this host)")


def _device_type(device) -> str:
    """'cpu', 'cuda', ... of a torch.device, a string like 'cuda:1', or None (the CPU)."""
    if device is None:
        return "cpu"
    return getattr(device, "type", None) or str(device).split(":", 1)[0]


def device_available(device) -> tuple[int, str] | None:
    """(bytes, description) free on a CUDA device (driver free + this process's cached blocks),
    None for a CPU device."""
    if _device_type(device) != "cuda":
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    free, total = torch.cuda.mem_get_info(dev)
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    left = int(free + max(0, cached))
    return left, f"{fmt_bytes(left)} free of {fmt_bytes(total)} on {dev}"


def available_bytes(device=None) -> int:
    """Bytes this process can still allocate: free device memory for a CUDA device, else the
    smaller of the cgroup (v2/v1) headroom and MemAvailable."""
    dev = device_available(device)
    return dev[0] if dev is not None else host_available()[0]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _enabled() -> bool:
    return os.environ.get("NERF_DIST_MEMORY_CHECK", "on").strip().lower() not in ("off", "0", "false", "no")


# ------------------------------------------------------------------------------ model estimates

def samples_per_ray(model_cfg, train: bool) -> int:
    """Upper bound on field samples per ray held at once (the kind's estimate)."""
    return model_memory(model_cfg).samples_per_ray(train)


def bytes_per_ray(model_cfg, train: bool) -> int:
    """Activation bytes per ray in training or in one rendering call (the kind's estimate:
    :meth:`nerf_dist.models.base.NeRFModel.memory_estimate`; the formulas are documented there)."""
    return model_memory(model_cfg).bytes_per_ray(train)


def param_bytes(model_cfg) -> int:
    """The model's weights and buffers (the kind's estimate)."""
    return model_memory(model_cfg).param_bytes


def train_param_bytes(model_cfg, world_size: int = 1) -> int:
    """Weights plus what training adds: gradients and optimiser state (the kind's estimate), of
    one rank of world_size (less than the whole model when the kind splits its weights)."""
    return model_memory(model_cfg).rank_param_bytes(world_size, train=True)


def render_param_bytes(model_cfg, world_size: int = 1) -> int:
    """The weights one rank of world_size holds to render (less than the whole model when the
    kind splits its weights: a partitioned model's boxes, placed as training places them)."""
    return model_memory(model_cfg).rank_param_bytes(world_size)


# ------------------------------------------------------------------------------ checks

def _positive_int(value, name: str, cap: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MemoryBudgetError(f"{name} must be a whole number >= 1, got {value!r}")
    if value > cap:
        raise MemoryBudgetError(f"{name}={value} is beyond any sensible value (limit {cap}); {hint}")
    return value


def on_all_ranks(check, rank: int = 0, world_size: int = 1):
    """check() on every rank (each compares its own estimate with its own share of its host,
    :func:`host_share`); with a process group, every rank raises the same
    MemoryBudgetError if any rank's check failed (prefixed with that rank when it is another), so
    no rank goes on into a collective that the failing one never joins. Returns check()'s value.

    Every rank must call it (it holds an all-gather when world_size > 1).
    """
    err, value = None, None
    try:
        value = check()
    except MemoryBudgetError as e:
        err = str(e)
    raise_together(err, rank, world_size, MemoryBudgetError)
    return value


def _largest(parts: dict[str, int]) -> str:
    return max(parts, key=lambda k: parts[k])


def _describe(parts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {fmt_bytes(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))


def render_estimate(W: int, H: int, tile: int, chunk: int, model_cfg, world_size: int = 1,
                    device="cpu", evaluate: bool = False) -> dict[str, dict[str, int]]:
    """Per-rank peak memory of a tiled render, as {'host': {part: bytes}, 'device': {...}}.

    host (rank 0, the largest): the frames of one batch being assembled (frames per batch as in
    renderer.tiles.frame_batches, each H W x 20 B), writing or evaluating one frame (H W x 128 B,
    or x 384 B for eval), one tile in flight (tile^2 x 128 B), one gather round of tile results
    (renderer.core bounds it to ROUND_BYTES over all ranks, x 3 for pickling), and the model's
    chunk (chunk x bytes_per_ray) when the device is the CPU. device (CUDA only): the chunk's
    activations, the tile's rays and outputs, and the weights: this rank's share of them
    (:func:`render_param_bytes`; a partitioned model's boxes are split over the ranks).
    """
    tiles_per_frame = math.ceil(H / tile) * math.ceil(W / tile)
    batch = max(1, math.ceil(2 * world_size / max(1, tiles_per_frame)))
    pixels = W * H
    tile_px = min(tile, H) * min(tile, W)
    host = {
        f"{batch} frame(s) of {W}x{H} being assembled": batch * pixels * FRAME_BYTES_PER_PIXEL,
        ("evaluating" if evaluate else "writing") + " a frame":
            pixels * (EVAL_BYTES_PER_PIXEL if evaluate else WRITE_BYTES_PER_PIXEL),
        f"--tile {tile} buffers": tile_px * TILE_BYTES_PER_PIXEL,
    }
    if world_size > 1:
        host["gathering tiles from other ranks"] = 3 * min(ROUND_BYTES, batch * pixels *
                                                           FRAME_BYTES_PER_PIXEL)
    chunk_rays = min(chunk, tile_px)
    acts = {f"model.chunk={chunk} activations ({min(chunk, tile_px)} rays x "
            f"{samples_per_ray(model_cfg, False)} samples)":
            chunk_rays * bytes_per_ray(model_cfg, False),
            "model weights": render_param_bytes(model_cfg, world_size)}
    if _device_type(device) == "cuda":
        device_parts = {**acts, f"--tile {tile} rays and outputs on the device": tile_px * 96}
    else:
        host.update(acts)
        device_parts = {}
    return {"host": host, "device": device_parts}


def _compare(parts: dict[str, int], avail: tuple[int, str], what: str, advice: dict[str, str],
             shared: bool = False) -> None:
    """MemoryBudgetError unless sum(parts) + slack fits avail (bytes, description). shared: avail
    is this rank's share of the host (:func:`host_share`): the message names the rank and the
    ranks on its host."""
    total = sum(parts.values()) + _SLACK
    if total <= avail[0]:
        return
    big = _largest(parts)
    hint = next((v for k, v in advice.items() if k in big), "reduce the request")
    local, n = ranks_on_host() if shared else (0, 1)
    who, limit = "", avail[1] if shared else f"only {avail[1]}"
    if n > 1:
        who = f"rank {local} of {n} on this host: "
        hint += f", or start fewer ranks per host (torchrun --nproc_per_node, now {n})"
    raise MemoryBudgetError(f"{who}{what} needs about {fmt_bytes(total)} ({_describe(parts)}), "
                            f"but {limit}: {hint}. Set NERF_DIST_MEMORY_CHECK=off to skip this "
                            f"check.")


def check_parts(parts: dict[str, int], what: str, advice: dict[str, str]) -> None:
    """MemoryBudgetError unless the estimate parts ({what: bytes}) fit this rank's share of its
    host (:func:`host_share`); advice: {substring of the largest part: what to do}. Used by the
    exporters (nerf_dist.export), whose estimates are their own. NERF_DIST_MEMORY_CHECK=off skips
    it."""
    if _enabled():
        _compare(parts, host_share(), what, advice, shared=True)


def check_render(W: int, H: int, tile: int, chunk: int, model_cfg, world_size: int = 1,
                 device="cpu", evaluate: bool = False) -> dict[str, dict[str, int]]:
    """Raise MemoryBudgetError unless a W x H render with this tile and chunk fits this rank.

    Refuses absurd sizes first (a side over MAX_SIDE, tile over MAX_TILE, chunk over MAX_CHUNK),
    then compares :func:`render_estimate` with this rank's :func:`host_share` (and the CUDA
    device's free memory). Returns the estimate. Every rank of a render calls it (renderer.core.check_memory
    makes the ranks agree).
    """
    W = _positive_int(W, "resolution width", MAX_SIDE, "pass a smaller --resolution")
    H = _positive_int(H, "resolution height", MAX_SIDE, "pass a smaller --resolution")
    tile = _positive_int(tile, "--tile", MAX_TILE, "tiles of 32-512 pixels work well")
    chunk = _positive_int(chunk, "model.chunk", MAX_CHUNK, "1024-65536 rays per call work well")
    est = render_estimate(W, H, tile, chunk, model_cfg, world_size, device, evaluate)
    if not _enabled():
        return est
    what = f"{'evaluating' if evaluate else 'rendering'} at {W}x{H} (tile {tile}, chunk {chunk})"
    advice = {"frame": f"lower --resolution (a {W}x{H} frame alone needs "
                       f"{fmt_bytes(W * H * (FRAME_BYTES_PER_PIXEL + WRITE_BYTES_PER_PIXEL))})",
              "model.chunk": "lower model.chunk (e.g. model.chunk=" + str(max(1, chunk // 8)) + ")",
              "--tile": "lower --tile", "gathering": "lower --resolution or --tile",
              "weights": "the model itself does not fit: use a machine with more memory"}
    _compare(est["host"], host_share(), what + " on the host", advice, shared=True)
    dev = device_available(device)
    if dev is not None and est["device"]:
        _compare(est["device"], dev, what + " on the device", advice)
    return est


def train_estimate(cfg, n_cache_pixels: int, world_size: int = 1,
                   device="cpu") -> dict[str, dict[str, int]]:
    """Per-rank peak memory of a training step, as {'host': {...}, 'device': {...}}.

    The rank's batch is ceil(rays_per_batch / world_size) rays; its activations are rays x
    bytes_per_ray(train), the kind's estimate (for the fast model max_samples bounds the kept
    samples, so this is an upper bound). Weights count with gradients and Adam moments
    (train_param_bytes). The rank's share of the ray cache (n_cache_pixels / world_size x
    CACHE_BYTES_PER_PIXEL, at most data.cache_memory: the loader streams larger caches) is host
    memory; activations and weights go to the device (the host when the device is the CPU).
    """
    rays = math.ceil(cfg.train.rays_per_batch / world_size)
    per_ray = bytes_per_ray(cfg.model, True)
    share = math.ceil(n_cache_pixels / world_size) * CACHE_BYTES_PER_PIXEL
    limit = cfg.data.cache_memory_bytes
    host = {f"the rank's share of the ray cache ({math.ceil(n_cache_pixels / world_size)} pixels)"
            if share <= limit else f"ray cache shards streamed within data.cache_memory="
                                   f"{cfg.data.cache_memory}": min(share, limit)}
    acts = {f"activations of {rays} rays x {samples_per_ray(cfg.model, True)} samples "
            f"(train.rays_per_batch={cfg.train.rays_per_batch} over {world_size} rank(s))":
            rays * per_ray,
            "model weights, gradients and Adam moments": train_param_bytes(cfg.model,
                                                                           world_size)}
    if _device_type(device) == "cuda":
        return {"host": host, "device": acts}
    host.update(acts)
    return {"host": host, "device": {}}


def check_train_batch(cfg, n_cache_pixels: int, world_size: int = 1,
                      device="cpu") -> dict[str, dict[str, int]]:
    """Raise MemoryBudgetError if a training step cannot fit, or the batch exceeds the cache.

    ``train.rays_per_batch > n_cache_pixels`` is an error naming both numbers (every batch would
    repeat rays). Then :func:`train_estimate` is compared with what this rank has (its
    :func:`host_share`, the device's free memory): call it after the ray cache exists and before
    the loader reads its shards. Returns the estimate.
    """
    rpb = int(cfg.train.rays_per_batch)
    if rpb > n_cache_pixels:
        raise MemoryBudgetError(f"train.rays_per_batch={rpb} is larger than the ray cache "
                                f"({n_cache_pixels} training pixels, one ray each): lower "
                                f"train.rays_per_batch to at most {n_cache_pixels}")
    est = train_estimate(cfg, n_cache_pixels, world_size, device)
    if not _enabled():
        return est
    fit = None
    per_ray = bytes_per_ray(cfg.model, True)
    budget = (device_available(device) or host_share())[0]
    spare = budget - _SLACK - sum(v for k, v in (est["device"] or est["host"]).items()
                                  if not k.startswith("activations"))
    if per_ray > 0 and spare > 0:
        fit = max(1, spare // per_ray) * world_size
    advice = {"activations": (f"lower train.rays_per_batch (about {fit} fits on {world_size} "
                              f"rank(s))" if fit else "lower train.rays_per_batch")
              + ", lower model.n_samples/n_importance (vanilla) or model.max_samples (fast), "
                "or train on more ranks",
              "ray cache": "lower data.cache_memory (it is per rank: the ranks of one host hold "
                           "it each; the loader then streams the cache in windows of shards), "
                           "train on more hosts, or raise data.downscale",
              "weights": "the model itself does not fit: make it smaller"}
    what = f"training with train.rays_per_batch={rpb}"
    _compare(est["host"], host_share(), what + " on the host", advice, shared=True)
    dev = device_available(device)
    if dev is not None and est["device"]:
        _compare(est["device"], dev, what + " on the device", advice)
    return est
