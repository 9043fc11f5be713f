"""Sharded, world-size-independent ray loader over a :class:`~nerf_dist.ray_cache.RayCache`.

The global batch of step k takes ``b_s = B // S + (1 if s < B % S else 0)`` rays from every shard s
(B = rays_per_batch, S = n_shards), at positions ``k*b_s .. k*b_s + b_s - 1`` of an endless stream
that is the concatenation of per-(seed, epoch, shard) permutations of the shard. The global batch
is the concatenation over shards in shard order. Rank r of N owns shards r, r+N, r+2N, ... (so S
must be a multiple of N), reads only those, and returns its owned shards' parts in shard order. The
batches therefore do not depend on the number of ranks, and a run may resume on another world size.

Centre-crop warm-up: for steps < precrop_steps each shard draws only from its rays with
``crop < precrop_frac``, through its own permutation stream; afterwards the full stream starts at
its position 0 (step k uses position ``(k - precrop_steps) * b_s``) so epoch 0 still sees every ray.
"""
from __future__ import annotations

import hashlib

import torch

from .dist import raise_together
from .ray_cache import RayCache, RayCacheError, pixel_crop

BATCH_FIELDS = ("rays_o", "rays_d", "viewdirs", "rgb")
_FULL, _CROP = 0, 1


def stream_seed(seed: int, stream: int, epoch: int, shard: int) -> int:
    """Seed of the permutation for (seed, stream, epoch, shard): a stable hash, not Python's hash()."""
    digest = hashlib.sha256(f"nerf_dist.loader:{seed}:{stream}:{epoch}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shard_batch_sizes(rays_per_batch: int, n_shards: int) -> list[int]:
    """b_s: rays shard s contributes to each global batch (they sum to rays_per_batch)."""
    q, r = divmod(rays_per_batch, n_shards)
    return [q + (1 if s < r else 0) for s in range(n_shards)]


def stream_positions(n: int, start: int, count: int, seed: int, stream: int, shard: int,
                     _perms: dict | None = None) -> torch.Tensor:
    """Indices [count] at positions start .. start+count-1 of the endless stream of a shard of n
    items: epoch e covers positions e*n .. (e+1)*n - 1 with a permutation seeded per (seed, stream,
    e, shard). _perms: optional cache {(stream, shard, epoch): perm}."""
    out = []
    pos, end = start, start + count
    while pos < end:
        epoch, within = divmod(pos, n)
        take = min(end - pos, n - within)
        key = (stream, shard, epoch)
        perm = _perms.get(key) if _perms is not None else None
        if perm is None:
            g = torch.Generator().manual_seed(stream_seed(seed, stream, epoch, shard))
            perm = torch.randperm(n, generator=g)
            if _perms is not None:
                # NOTE: keep only the newest epochs of each (stream, shard): positions only move forward.
                for k in [k for k in list(_perms) if k[:2] == key[:2] and k[2] < epoch - 1]:
                    _perms.pop(k, None)
                _perms[key] = perm
        out.append(perm[within:within + take])
        pos += take
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


class RayLoader:
    """Batches of training rays for one rank.

    Each :meth:`next` returns rays_o, rays_d, viewdirs, rgb: [b_local, 3] on `device`, and
    n_global (= rays_per_batch, the size of the global batch the local one is part of) and
    index: [b_local] int64, the positions of these rays inside the global batch.
    """

    def __init__(self, cache: RayCache, rank: int, world_size: int, rays_per_batch: int, seed: int,
                 precrop_steps: int = 0, precrop_frac: float = 0.5, device="cpu",
                 prefetch: bool = False):
        S = cache.n_shards
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world_size {world_size}")
        if S % world_size != 0:
            raise ValueError(f"the ray cache has {S} shards (data.cache_shards), which is not a "
                             f"multiple of the world size {world_size}: set data.cache_shards to a "
                             f"multiple of every world size you use (e.g. 64)")
        if rays_per_batch < 1:
            raise ValueError(f"rays_per_batch must be >= 1, got {rays_per_batch}")
        self.cache = cache
        self.rank, self.world_size = rank, world_size
        self.rays_per_batch = int(rays_per_batch)
        self.seed = int(seed)
        self.precrop_steps = int(precrop_steps)
        self.precrop_frac = float(precrop_frac)
        self.device = torch.device(device)
        self.n_shards = S
        self.shards = list(range(rank, S, world_size))
        self.b = shard_batch_sizes(self.rays_per_batch, S)
        # positions of this rank's rays inside the global batch (shard order), for RowNoise
        offsets = [0]
        for b in self.b:
            offsets.append(offsets[-1] + b)
        self.index = torch.cat([torch.arange(offsets[s], offsets[s + 1]) for s in self.shards]) \
            if self.shards else torch.zeros(0, dtype=torch.int64)
        if self.precrop_steps > 0:
            self._check_crop_coverage()
        self._step = 0
        self._perms: dict = {}
        # NOTE: one worker thread builds every batch (batch_at is pure in the step), so prefetching
        # cannot change the sequence and the permutation cache is never touched concurrently.
        self._pool = None
        self._pending = None  # (step, Future) of the batch being prefetched
        if prefetch:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"ray-loader-{rank}")
        self._data: dict[int, dict[str, torch.Tensor]] = {}
        self._crop_idx: dict[int, torch.Tensor] = {}
        err = ""
        try:
            for s in self.shards:
                d = cache.read_shard(s)  # verified against the manifest's size + sha256
                self._data[s] = {k: d[k] for k in BATCH_FIELDS}
                if self.precrop_steps > 0:
                    self._crop_idx[s] = torch.nonzero(d["crop"].float() < self.precrop_frac).flatten()
        except RayCacheError as e:
            err = str(e)
        # NOTE: collective (every rank builds its loader at the same point): a damaged shard is
        # found only by the rank that owns it, and its peers must fail with it rather than wait
        # for it in the first collective until the process-group timeout.
        raise_together(err, rank, world_size, RayCacheError,
                       others="rank {rank} found a damaged ray cache: {err}")

    def _check_crop_coverage(self) -> None:
        """ValueError unless every shard that feeds batches holds a centre-crop ray.

        NOTE: computed from the manifest's geometry for ALL shards, so every rank reaches the same
        verdict (a check on owned shards only could fail on one rank and hang the others).
        """
        H, W, S = self.cache.H, self.cache.W, self.n_shards
        rows = torch.arange(H).repeat_interleave(W)
        cols = torch.arange(W).repeat(H)
        pix = torch.nonzero(pixel_crop(rows, cols, H, W).float() < self.precrop_frac).flatten()
        covered = torch.zeros(S, dtype=torch.bool)
        for img in range(self.cache.n_images):
            covered[(img * H * W + pix) % S] = True
            if bool(covered.all()):
                return
        empty = [s for s in range(S) if not covered[s] and self.b[s] > 0]
        if empty:
            raise ValueError(f"ray cache {self.cache.url}: shard {empty[0]} (of {len(empty)}) holds "
                             f"no ray inside the centre crop train.precrop_frac={self.precrop_frac} "
                             f"({H}x{W} images, data.cache_shards={S}): raise train.precrop_frac or "
                             f"pick a data.cache_shards that does not divide the image width")

    @property
    def step(self) -> int:
        return self._step

    def batch_at(self, step: int) -> dict:
        """The local batch of global step `step` (pure: does not move the cursor)."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in BATCH_FIELDS}
        for s in self.shards:
            b = self.b[s]
            data = self._data[s]
            n = self.cache.shard_sizes[s]
            if step < self.precrop_steps:
                crop = self._crop_idx[s]
                idx = crop[stream_positions(crop.numel(), step * b, b, self.seed, _CROP, s, self._perms)]
            else:
                idx = stream_positions(n, (step - self.precrop_steps) * b, b, self.seed, _FULL, s,
                                       self._perms)
            for k in BATCH_FIELDS:
                parts[k].append(data[k][idx])
        out: dict = {k: torch.cat(v).to(self.device, non_blocking=True) for k, v in parts.items()}
        out["n_global"] = self.rays_per_batch
        out["index"] = self.index
        return out

    def next(self) -> dict:
        """The local batch of the current step; then advance to the next step."""
        if self._pool is None:
            batch = self.batch_at(self._step)
        else:
            if self._pending is not None and self._pending[0] == self._step:
                batch = self._pending[1].result()
            else:
                batch = self._pool.submit(self.batch_at, self._step).result()
            self._pending = (self._step + 1, self._pool.submit(self.batch_at, self._step + 1))
        self._step += 1
        return batch

    def close(self) -> None:
        """Stop the prefetch thread (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._pending = None, None

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"step": self._step, "seed": self.seed, "rays_per_batch": self.rays_per_batch,
                "n_shards": self.n_shards}

    def load_state_dict(self, sd: dict) -> None:
        """Continue at sd['step']. Seed, batch size and shard count must match (world size may not)."""
        for k in ("seed", "rays_per_batch", "n_shards"):
            if k in sd and int(sd[k]) != getattr(self, k):
                raise ValueError(f"loader state has {k}={sd[k]}, this run has {getattr(self, k)}: "
                                 f"resuming would not continue the same ray sequence")
        self._step = int(sd["step"])
        self._pending = None  # a prefetched batch of the old cursor is stale
