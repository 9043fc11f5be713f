"""The shard data one rank holds: the active window's shards, the next window's read ahead on a
background thread, and the permutations drawn over them; every byte of it counted."""
from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..ray_cache import RayCache
from .schedule import _CROP, _FULL, index_dtype, stream_positions

_CHUNK = 1 << 20  # pixels per chunk when finding a shard's centre-crop positions


def crop_positions(cache: RayCache, s: int, frac: float) -> torch.Tensor:
    """Positions p of shard s whose pixel (s + p S) lies in the centre crop frac: int32 (int64
    for a shard of 2^31 pixels or more, :func:`.schedule.index_dtype`)."""
    n, S = cache.shard_sizes[s], cache.n_shards
    dtype, parts = index_dtype(n), []
    for lo in range(0, n, _CHUNK):
        p = torch.arange(lo, min(n, lo + _CHUNK), dtype=torch.int64)
        inside = cache.crop(s + p * S).float() < frac
        parts.append(p[inside].to(dtype))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


class ShardStore:
    """Colours of the owned shards of one window, read on demand or ahead.

    colours: {shard: [n_s, C] uint8/uint16}. Only the thread that builds batches calls the
    methods; the read-ahead thread only runs :meth:`read`, whose one write here is appending to
    ``reads`` (a list append is atomic in CPython; readers wait for the read-ahead to land).
    """

    def __init__(self, cache: RayCache, read_ahead: bool, name: str = "ray-loader"):
        self.cache = cache
        self.colours: dict[int, torch.Tensor] = {}
        self._perms: dict = {}  # (stream, shard, epoch) -> int32 permutation
        self._crop: dict[int, torch.Tensor] = {}  # shard -> int32 positions inside the crop
        self._crop_frac: float | None = None
        self._ahead: tuple[tuple[int, ...], Future] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-read") if read_ahead else None
        self.reads: list[int] = []  # every shard read, in order (tests and logs)
        self.sync_reads = 0  # reads the batch had to wait for (the read-ahead was not there)

    def read(self, shards: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """{shard: colours}, each verified against the manifest (retried, see RayCache.read_bytes)."""
        out = {}
        for s in shards:
            out[s] = self.cache.read_shard(s)
            self.reads.append(s)
        return out

    def hold(self, shards: tuple[int, ...]) -> None:
        """Make exactly these shards resident (the read-ahead if it is them, else a read now).

        A read-ahead that failed is read again now, once (its own retries were spent a whole
        window earlier: an outage may be over); a second failure raises, naming the shard URL.
        NOTE: what is held is dropped BEFORE a synchronous read, so the bound holds on a jump
        (resume, a read-ahead that guessed wrong) as well as on an ordinary window change.
        """
        if set(shards) == set(self.colours):
            return
        if self._ahead is not None and set(self._ahead[0]) == set(shards):
            fut = self._ahead[1]
            self._ahead = None
            self.drop()
            try:
                self.colours = fut.result()
                return
            except Exception as e:  # noqa: BLE001 - read again below; that read's error is final
                print(f"nerf-dist ray loader: reading ray cache shards {list(shards)} ahead "
                      f"failed ({e}); reading them again now", file=sys.stderr, flush=True)
        self.drop()
        self.cancel_ahead()
        self.sync_reads += 1
        self.colours = self.read(shards)

    def prefetch(self, shards: tuple[int, ...]) -> None:
        """Start reading shards in the background (no-op when held or already on the way)."""
        if self._pool is None or not shards or set(shards) == set(self.colours):
            return
        if self._ahead is not None:
            if set(self._ahead[0]) == set(shards):
                return
            self.cancel_ahead()
        self._ahead = (tuple(shards), self._pool.submit(self.read, tuple(shards)))

    def cancel_ahead(self) -> None:
        """Forget the read-ahead (a read already running finishes; its bytes are dropped)."""
        if self._ahead is not None:
            fut = self._ahead[1]
            self._ahead = None
            if not fut.cancel():
                try:
                    fut.result()
                except Exception:  # noqa: BLE001 - not needed any more; a later read reports it
                    pass

    def drop(self) -> None:
        """Release the held shards, their permutations and crop positions."""
        self.colours = {}
        self._perms.clear()
        self._crop.clear()

    def drop_crop(self) -> None:
        """Release the centre-crop positions and permutations (the warm-up is over)."""
        if self._crop or any(k[0] == _CROP for k in self._perms):
            self._crop.clear()
            for k in [k for k in self._perms if k[0] == _CROP]:
                del self._perms[k]

    def crop_positions(self, s: int, frac: float) -> torch.Tensor:
        """int32 positions p of shard s whose pixel (s + p S) lies in the centre crop frac."""
        if self._crop_frac != frac:
            self._crop.clear()
            self._crop_frac = frac
        if s not in self._crop:
            self._crop[s] = crop_positions(self.cache, s, frac)
        return self._crop[s]

    def positions(self, stream: int, s: int, start: int, count: int, seed: int,
                  frac: float) -> torch.Tensor:
        """Positions [count] int64 inside shard s at stream positions start .. start+count-1."""
        if stream == _FULL:
            return stream_positions(self.cache.shard_sizes[s], start, count, seed, _FULL, s,
                                    self._perms)
        crop = self.crop_positions(s, frac)
        idx = stream_positions(crop.numel(), start, count, seed, _CROP, s, self._perms)
        return crop[idx].long()

    def bytes_held(self) -> int:
        """Bytes of shard data held: colours, permutations, crop positions, and the read-ahead
        (counted in full from the moment it starts)."""
        n = sum(t.nbytes for t in self.colours.values())
        n += sum(t.nbytes for t in self._perms.values())
        n += sum(t.nbytes for t in self._crop.values())
        if self._ahead is not None:
            n += sum(self.cache.shard_bytes(s) for s in self._ahead[0])
        return n

    def close(self) -> None:
        """Stop the read-ahead thread (a read in flight finishes first); idempotent."""
        if self._pool is not None:
            self.cancel_ahead()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
