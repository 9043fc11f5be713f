"""Which pixels each training step draws: a pure function of (seed, step) and the cache's shape.

Streams. Shard s's stream is the endless concatenation of per-(seed, stream, epoch, shard)
permutations of its n_s positions (stream _FULL over all of them; _CROP over the centre-crop
ones, during train.precrop_steps). Epoch e of the shard is stream positions [e n_s, (e+1) n_s),
so each pixel comes exactly once in each epoch of its shard, in a new order every epoch.

Windows. The S shards form W = S / G windows of G shards (G divides S): window w holds shards
``a (w G + j) mod S`` for j = 0 .. G-1, with a fixed stride a coprime with S (a = 1 when G = S),
so a window's shards are spread over the whole shard range. In every cycle the W windows are
visited in a new seeded order, each for T steps. While window w is active, step k draws
``b_j = B // G (+1 for j < B % G)`` rays from the window's j-th shard, at its stream positions
``[v b_j, (v+1) b_j)`` where v = c T + t counts the steps that shard was drawn from before (c the
cycle, t the step within the visit). T = max(1, round(n G / (S B))) (n pixels, B rays per batch),
so a cycle draws about every pixel once, and exactly once when T b_j = n_s. The global batch is
the concatenation over j of these draws.

Why each step still sees the whole scene: shard s is every S-th pixel of the scene (pixel
i = image H W + row W + col lies in shard i mod S), so every shard spans every image evenly, and a
step's B rays are drawn from G such shards at permuted positions, i.e. from random pixels of
random images of the whole scene. All a window narrows is which residues i mod S a step sees (G of
the S, spread by the stride). Randomness is renewed per epoch of each shard (a new permutation)
and per cycle (a new window order).

World size: nothing above involves the number of ranks. Rank r of N owns the shards s with
s mod N = r; when N divides G each window gives every rank G / N shards, always at the same
window positions j, so the ranks' parts concatenate to the global batch on any N.

G = S (the whole cache fits, :func:`plan_window`): there is one window, v = k, and the scheme is
exactly the one before windows existed (format 2 caches), batch for batch.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

_FULL, _CROP, _WINDOW = 0, 1, 2
# Bytes a resident pixel needs beside its colour: two int32 permutations (the shard's current
# epoch and the next, both alive while a step crosses the epoch boundary); with a centre-crop
# warm-up, 12: the crop positions (int32) and two crop-stream permutations (the full stream's
# permutations are only built after the warm-up, when the crop ones are dropped). Twice that for
# a shard of 2^31 pixels or more, whose positions need int64 (:func:`index_dtype`).
PERM_BYTES, CROP_BYTES = 8, 12


def index_dtype(n: int) -> torch.dtype:
    """The narrowest dtype that holds the positions 0 .. n-1 of a shard: int32 below 2^31 (half
    the memory of int64), else int64."""
    return torch.int32 if n <= 2 ** 31 else torch.int64


def extra_bytes(max_pixels: int, precrop: bool) -> int:
    """Bytes a resident pixel of a shard of max_pixels needs beside its colour (see above)."""
    return (CROP_BYTES if precrop else PERM_BYTES) * (index_dtype(max_pixels).itemsize // 4)


def stream_seed(seed: int, stream: int, epoch: int, shard: int) -> int:
    """Seed of the permutation for (seed, stream, epoch, shard): a stable hash, not Python's hash()."""
    digest = hashlib.sha256(f"nerf_dist.loader:{seed}:{stream}:{epoch}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shard_batch_sizes(rays_per_batch: int, n_shards: int) -> list[int]:
    """b_j: rays the j-th shard of a window contributes to each global batch (they sum to B)."""
    q, r = divmod(rays_per_batch, n_shards)
    return [q + (1 if s < r else 0) for s in range(n_shards)]


def stream_positions(n: int, start: int, count: int, seed: int, stream: int, shard: int,
                     _perms: dict | None = None) -> torch.Tensor:
    """Indices [count] int64 at positions start .. start+count-1 of the endless stream of a shard
    of n items: epoch e covers positions e*n .. (e+1)*n - 1 with a permutation seeded per (seed,
    stream, e, shard). _perms: optional cache {(stream, shard, epoch): int32 perm}; only the
    newest two epochs of each (stream, shard) are kept.

    NOTE: int32 permutations (below 2^31 items, :func:`index_dtype`) hold the same values as
    torch.randperm's default int64 ones (same generator draws) in half the memory.
    """
    out = []
    pos, end = start, start + count
    while pos < end:
        epoch, within = divmod(pos, n)
        take = min(end - pos, n - within)
        key = (stream, shard, epoch)
        perm = _perms.get(key) if _perms is not None else None
        if perm is None:
            g = torch.Generator().manual_seed(stream_seed(seed, stream, epoch, shard))
            perm = torch.randperm(n, generator=g, dtype=index_dtype(n))
            if _perms is not None:
                for k in [k for k in list(_perms) if k[:2] == key[:2] and k[2] < epoch - 1]:
                    _perms.pop(k, None)
                _perms[key] = perm
        out.append(perm[within:within + take].long())
        pos += take
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def _stride(n_shards: int, window: int) -> int:
    """a: 1 for a single window, else the first integer >= S / G + 1 coprime with S."""
    if window == n_shards:
        return 1
    a = n_shards // window + 1
    while math.gcd(a, n_shards) != 1:
        a += 1
    return a


@dataclass(frozen=True)
class WindowPlan:
    """The window scheme of a run (see the module docstring): S shards, windows of G, T steps a
    visit, B rays a step."""

    n_shards: int
    window: int
    phase_steps: int
    rays_per_batch: int
    _orders: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_windows(self) -> int:
        return self.n_shards // self.window

    @property
    def stride(self) -> int:
        return _stride(self.n_shards, self.window)

    @property
    def b(self) -> list[int]:
        """b_j per window position j."""
        return shard_batch_sizes(self.rays_per_batch, self.window)

    def shards(self, w: int) -> list[int]:
        """The shards of window w, in window-position order."""
        a, G, S = self.stride, self.window, self.n_shards
        return [(a * (w * G + j)) % S for j in range(G)]

    def position(self, s: int) -> int:
        """j: the position of shard s inside its window."""
        return (pow(self.stride, -1, self.n_shards) * s) % self.n_shards % self.window

    def order(self, seed: int, cycle: int) -> list[int]:
        """The windows in the order cycle visits them."""
        if cycle not in self._orders:
            g = torch.Generator().manual_seed(stream_seed(seed, _WINDOW, cycle, 0))
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[cycle] = torch.randperm(self.n_windows, generator=g).tolist()
        return self._orders[cycle]

    def at(self, seed: int, k: int) -> tuple[int, int]:
        """(w, v) at step k of a stream: the active window and how many steps its shards were
        drawn from before (their stream position is v * b_j)."""
        if self.n_windows == 1:
            return 0, k
        T = self.phase_steps
        c, r = divmod(k, self.n_windows * T)
        p, t = divmod(r, T)
        return self.order(seed, c)[p], c * T + t


def shard_cost(max_pixels: int, bytes_per_pixel: int, precrop: bool, streamed: bool) -> int:
    """Bytes a rank needs per shard it owns: colours (twice when streamed: the window in use and
    the next one read ahead) and the permutation bytes (:data:`PERM_BYTES`)."""
    return max_pixels * ((2 if streamed else 1) * bytes_per_pixel + extra_bytes(max_pixels, precrop))


def plan_window(n_pixels: int, n_shards: int, rays_per_batch: int, bytes_per_pixel: int,
                cache_memory: int | None, precrop: bool = False) -> WindowPlan:
    """The window size G for a cache and data.cache_memory, the same on every world size.

    G = S when all shards fit in cache_memory (S x shard_cost), else the largest divisor G of S
    whose window, with the next one read ahead, fits (G x shard_cost(streamed)). cache_memory is
    what ONE rank would hold alone; N ranks hold 1/N of it each (the window is split over them).
    ValueError when not even one shard fits, saying which key to raise.
    """
    S = n_shards
    m = -(-n_pixels // S)
    T = max(1, round(n_pixels * 1.0 / S / rays_per_batch))
    if cache_memory is None or S * shard_cost(m, bytes_per_pixel, precrop, False) <= cache_memory:
        return WindowPlan(S, S, T, rays_per_batch)
    per = shard_cost(m, bytes_per_pixel, precrop, True)
    fits = [d for d in range(S - 1, 0, -1) if S % d == 0 and d * per <= cache_memory]
    if not fits:
        need_shards = -(-n_pixels * (2 * bytes_per_pixel + extra_bytes(m, precrop))
                        // cache_memory)
        raise ValueError(
            f"data.cache_memory={cache_memory} bytes cannot hold one shard of the ray cache "
            f"({m} pixels x {per // m} bytes = {per} bytes, with the next shard read ahead): raise "
            f"data.cache_memory to at least {per}, or rebuild the cache with more shards "
            f"(data.cache_shards >= {need_shards}, a multiple of every world size you use)")
    G = fits[0]
    return WindowPlan(S, G, max(1, round(n_pixels * G / (S * rays_per_batch))), rays_per_batch)


def memory_for(plan: WindowPlan, window: int, n_pixels: int, bytes_per_pixel: int,
               precrop: bool) -> int:
    """data.cache_memory that gives windows of `window` shards (for messages)."""
    m = -(-n_pixels // plan.n_shards)
    if window == plan.n_shards:
        return plan.n_shards * shard_cost(m, bytes_per_pixel, precrop, False)
    return window * shard_cost(m, bytes_per_pixel, precrop, True)
