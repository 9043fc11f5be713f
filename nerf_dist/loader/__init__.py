"""Sharded, world-size-independent training batches over a pixel cache, in bounded memory.

Which pixels step k draws is a pure function of (seed, k) and the cache's shape
(:mod:`.schedule`: per-shard permutation streams, visited window by window). Rank r of N owns the
shards r, r+N, r+2N, ... (S must be a multiple of N), holds only its shards of the active window
(:mod:`.store`; the next window is read ahead on a background thread), and returns its owned
shards' parts in window order. Global batches therefore do not depend on the number of ranks, and
a run may resume on another world size.

Failures reach every rank. Nothing is read when the loader is built: the first batch reads the
window of its step (so a run resumed mid-window reads that window once, not window 0 first).
Because the schedule is global, every rank enters a new window at the same step; there the ranks
agree once (one small all-gather per window, none on the other steps, :meth:`RayLoader.batch_at`):
a shard that a rank could not read (storage error, missing, damaged: found by the read-ahead and
read once more at the switch, or by a read at the switch) raises on that rank its own :class:`~nerf_dist.ray_cache.ShardReadError`
(a StorageError) and on every other rank a RayCacheError naming that rank and that shard, so no
rank goes on into the gradient all-reduce and waits there until dist.timeout_s.

Memory: a rank holds at most data.cache_memory of shard data (colours, permutations, crop
positions, the read-ahead; :meth:`RayLoader.bytes_held`). When the whole cache fits (S shards x
their cost <= cache_memory) there is a single window: every shard is loaded once and every step
draws from all of them, as format-2 caches did. Otherwise the window G is the largest divisor of
S whose shards fit twice (in use + read ahead): a property of the run, the same on every world
size; N ranks then hold about G/N shards each. A world size that does not divide G is refused
with the data.cache_memory that would allow it.

Rays are made per batch from the pixels' global indices by :meth:`RayCache.rays`
(:func:`nerf_dist.render_ops.rays.make_rays`) on `device`; colours are decoded on the CPU (bit-exact with
the scene reader, see :mod:`nerf_dist.ray_cache.colour`).

Versus format 2 (rays stored as float32), when everything fits: the same pixels in the same
order at every step; colours bit-identical for 8-bit images read as they are (rgb8/rgba8), within
7.7e-6 for downscaled ones (rgb16); rays_o bit-identical, rays_d/viewdirs within float rounding
(per-ray camera matrices are applied as a batched product instead of one image at a time). So the
trajectory equals format 2's within float tolerance, not bit for bit. Measured over 200 batches
of 4096 on lego 800x800: rgb identical, max |diff| 1.8e-7 in rays_d; lego 100x100 (rgb16): 7.6e-6
in rgb, 1.2e-7 in rays_d.

Centre-crop warm-up: for steps < precrop_steps each shard draws only from its pixels with
``crop < precrop_frac``, through its own permutation stream; afterwards the schedule restarts at
step 0 of the full stream, so epoch 0 still sees every pixel.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..ray_cache import RayCache, pixel_crop
from ..ray_cache.agree import together
from .schedule import (_CROP, _FULL, WindowPlan, memory_for, plan_window, shard_batch_sizes,
                       stream_positions, stream_seed)
from .store import ShardStore, crop_positions

BATCH_FIELDS = ("rays_o", "rays_d", "viewdirs", "rgb")


class RayLoader:
    """Batches of training rays for one rank.

    Each :meth:`next` returns rays_o, rays_d, viewdirs, rgb: [b_local, 3] float32 on `device`
    (rgb composited over the scene background), image: [b_local] int64 (the training image of each
    ray), alpha: [b_local] float32 (the pixel's opacity, 1 without an alpha channel), and
    n_global (= rays_per_batch, the size of the global batch the local one is part of) and
    index: [b_local] int64, the positions of these rays inside the global batch.
    cache_memory: bytes of shard data one rank may hold (data.cache_memory); None = no bound.
    watch: ``watch(what)`` gives a context manager put around every blocking wait for shard reads
    and for the other ranks at a window switch (the trainer passes its StallWatchdog.waiting).
    agree: (rank, world_size) of the window-switch agreement, over every rank of the job; by
    default (rank, world_size). NOTE: a model placed across ranks reads shard `replica` of
    `n_replicas` (every rank of a box group the same rays), yet a failed read on one rank must
    stop every rank, its box partners too (they would wait in the segment exchange).
    :meth:`close` stops the read-ahead thread. Batches are built on the calling thread only.
    """

    def __init__(self, cache: RayCache, rank: int, world_size: int, rays_per_batch: int, seed: int,
                 precrop_steps: int = 0, precrop_frac: float = 0.5, device="cpu",
                 cache_memory: int | None = None, log=None,
                 watch: Callable[[str], contextlib.AbstractContextManager] | None = None,
                 agree: tuple[int, int] | None = None):
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
        self.cache_memory = cache_memory
        self.plan: WindowPlan = plan_window(cache.n_pixels, S, self.rays_per_batch,
                                            cache.bytes_per_pixel, cache_memory,
                                            self.precrop_steps > 0)
        self._check_window()
        self.shards = list(range(rank, S, world_size))  # every shard this rank ever reads
        self.b = self.plan.b  # rays per window position (= per shard when the window is all)
        if self.precrop_steps > 0:
            self._check_crop_coverage()
        self._step = 0
        self._window: int | None = None  # the window whose shards are held (None: none yet)
        self._watch = watch or (lambda what: contextlib.nullcontext())
        self._agree = (rank, world_size) if agree is None else (int(agree[0]), int(agree[1]))
        self.store = ShardStore(cache, read_ahead=self.plan.n_windows > 1,
                                name=f"ray-loader-{rank}")
        if log is not None:
            log(self.describe())

    def describe(self) -> str:
        """One line: how this rank holds the cache (whole, or streamed in windows)."""
        plan, N = self.plan, self.world_size
        limit = "no limit" if self.cache_memory is None else \
            f"data.cache_memory={self.cache_memory / 1e6:.1f} MB"
        if plan.n_windows == 1:
            mine = sum(self.cache.shard_sizes[s] for s in range(plan.n_shards)
                       if s % N == self.rank) * self.cache.bytes_per_pixel
            # NOTE: what the first batch will read (nothing is read before it): bytes_held() is 0 here.
            return (f"ray loader: the whole cache in memory ({mine / 1e6:.1f} MB on this rank, "
                    f"{limit})")
        return (f"ray loader: streaming windows of {plan.window} of {plan.n_shards} shards "
                f"({plan.window // N} on each of {N} rank(s)), {plan.phase_steps} steps each, the "
                f"next window read ahead ({limit})")

    # ------------------------------------------------------------------ checks
    def _check_window(self) -> None:
        """ValueError unless windows split evenly over the ranks and feed whole batches."""
        plan, N = self.plan, self.world_size
        G, S = plan.window, plan.n_shards
        if G % N:
            bigger = next(d for d in range(G + 1, S + 1) if S % d == 0 and d % N == 0)
            need = memory_for(plan, bigger, self.cache.n_pixels, self.cache.bytes_per_pixel,
                              self.precrop_steps > 0)
            raise ValueError(
                f"data.cache_memory={self.cache_memory} bytes streams the ray cache in windows of "
                f"{G} shards, which do not split evenly over {N} ranks: raise data.cache_memory "
                f"to at least {need} (windows of {bigger} shards; each rank then holds "
                f"{bigger // N}), or train on a number of ranks that divides {G}")
        smallest = min(self.cache.shard_sizes)
        if G < S and max(plan.b) > smallest:
            raise ValueError(
                f"train.rays_per_batch={self.rays_per_batch} draws {max(plan.b)} rays a step from "
                f"each of the {G} shards of a window, more than a shard holds ({smallest}): raise "
                f"data.cache_memory (larger windows) or lower train.rays_per_batch")

    def _check_crop_coverage(self) -> None:
        """ValueError unless every shard that feeds batches holds a centre-crop pixel.

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
        empty = [s for s in range(S) if not covered[s] and self.b[self.plan.position(s)] > 0]
        if empty:
            raise ValueError(f"ray cache {self.cache.url}: shard {empty[0]} (of {len(empty)}) holds "
                             f"no pixel inside the centre crop train.precrop_frac={self.precrop_frac} "
                             f"({H}x{W} images, data.cache_shards={S}): raise train.precrop_frac or "
                             f"pick a data.cache_shards that does not divide the image width")

    # ------------------------------------------------------------------ schedule
    def _where(self, step: int) -> tuple[int, int, int]:
        """(stream, window w, v) at global step `step` (the window's shards: plan.shards(w))."""
        stream, k = (_CROP, step) if step < self.precrop_steps else (_FULL, step - self.precrop_steps)
        w, v = self.plan.at(self.seed, k)
        return stream, w, v

    def _owned(self, shards: list[int]) -> tuple[int, ...]:
        return tuple(s for s in shards if s % self.world_size == self.rank)

    def _next_window(self, step: int) -> tuple[int, ...] | None:
        """This rank's shards of the next window unlike the current one (None: there is none)."""
        plan = self.plan
        if plan.n_windows == 1:
            return None
        cur = set(self._owned(plan.shards(self._where(step)[1])))
        k, P, T = step, self.precrop_steps, plan.phase_steps
        for _ in range(2 * plan.n_windows + 2):
            local = k if k < P else k - P
            nxt = k + T - local % T  # the first step of the next visit
            k = P if k < P <= nxt else nxt
            shards = self._owned(plan.shards(self._where(k)[1]))
            if set(shards) != cur:
                return shards
        return None

    @property
    def step(self) -> int:
        return self._step

    def bytes_held(self) -> int:
        """Bytes of shard data this rank holds now (<= data.cache_memory)."""
        return self.store.bytes_held()

    def pixels_at(self, step: int) -> torch.Tensor:
        """Global pixel indices [b_local] int64 of this rank's rays at `step`, in batch order,
        computed from the schedule alone (nothing read, nothing cached)."""
        stream, w, v = self._where(step)
        shards = self.plan.shards(w)
        out = []
        for j, s in enumerate(shards):
            b = self.b[j]
            if s % self.world_size == self.rank and b:
                if stream == _FULL:
                    pos = stream_positions(self.cache.shard_sizes[s], v * b, b, self.seed, _FULL, s)
                else:
                    crop = crop_positions(self.cache, s, self.precrop_frac)
                    pos = crop[stream_positions(crop.numel(), v * b, b, self.seed, _CROP, s)].long()
                out.append(s + pos * self.n_shards)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)

    def batch_at(self, step: int) -> dict:
        """The local batch of global step `step` (does not move the cursor).

        Collective when `step` lies in another window than the one held (and at the first
        batch): see :meth:`_enter`. :meth:`next` reaches those steps on every rank together.
        """
        stream, w, v = self._where(step)
        if stream == _FULL:
            self.store.drop_crop()
        if w != self._window:
            self._enter(w, step)
        shards = self.plan.shards(w)
        S, q, gidx, where, off = self.n_shards, [], [], [], 0
        for j, s in enumerate(shards):
            b = self.b[j]
            if s % self.world_size == self.rank and b:
                pos = self.store.positions(stream, s, v * b, b, self.seed, self.precrop_frac)
                q.append(self.store.colours[s][pos])
                gidx.append(s + pos * S)
                where.append(torch.arange(off, off + b))
            off += b
        c = self.cache.channels
        q = torch.cat(q) if q else torch.zeros((0, c), dtype=torch.uint8)
        gidx = torch.cat(gidx) if gidx else torch.zeros(0, dtype=torch.int64)
        out: dict = self.cache.rays(gidx.to(self.device, non_blocking=True))
        out["rgb"] = self.cache.rgb(q).to(self.device, non_blocking=True)
        # NOTE (issue 18): the image of each ray (per-image appearance) and the pixel's alpha
        # (1 unless the cache holds rgba8), so a model may composite over another background.
        out["image"] = torch.div(gidx, self.cache.H * self.cache.W,
                                 rounding_mode="floor").to(self.device, non_blocking=True)
        out["alpha"] = self.cache.alpha(q).to(self.device, non_blocking=True)
        out["n_global"] = self.rays_per_batch
        out["index"] = torch.cat(where) if where else torch.zeros(0, dtype=torch.int64)
        return out

    def _enter(self, w: int, step: int) -> None:
        """Hold this rank's shards of window w (the read-ahead, or a read now), agree with the
        other ranks that every rank has its shards, then start reading the next window ahead.

        Raises this rank's own error (a ShardReadError naming the shard) when its read failed,
        and RayCacheError naming the failed rank and its error when another rank's did
        (:func:`~nerf_dist.ray_cache.agree.together`).
        NOTE: collective, once per window: the window changes at the same step on every rank.
        """
        owned = self._owned(self.plan.shards(w))
        self._window = None  # NOTE: what is held is dropped below; a failed switch holds nothing

        def hold():
            with self._watch(f"this rank's ray cache shards {list(owned)} to be read"):
                self.store.hold(owned)  # verified against size + sha256

        with self._watch(f"every rank's ray cache shards of window {w} (step {step})"):
            together(hold, *self._agree,
                     f"reading its ray cache shards for step {step} (window {w})")
        self._window = w
        ahead = self._next_window(step)
        if ahead is not None:
            self.store.prefetch(ahead)

    def next(self) -> dict:
        """The local batch of the current step; then advance to the next step."""
        batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def close(self) -> None:
        """Stop the read-ahead thread (waits for a read in flight). Idempotent; a batch after
        it still works, reading synchronously."""
        self.store.close()

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"step": self._step, "seed": self.seed, "rays_per_batch": self.rays_per_batch,
                "n_shards": self.n_shards, "window": self.plan.window}

    def load_state_dict(self, sd: dict) -> None:
        """Continue at sd['step']. Seed, batch size, shard count and window size must match
        (world size may not). A state without 'window' (format-2 runs) had a single window."""
        for k in ("seed", "rays_per_batch", "n_shards"):
            if k in sd and int(sd[k]) != getattr(self, k):
                raise ValueError(f"loader state has {k}={sd[k]}, this run has {getattr(self, k)}: "
                                 f"resuming would not continue the same ray sequence")
        window = int(sd.get("window", sd.get("n_shards", self.n_shards)))
        if window != self.plan.window:
            raise ValueError(
                f"loader state drew rays from windows of {window} shards, but this run's "
                f"data.cache_memory={self.cache_memory} gives windows of {self.plan.window}: "
                f"resuming would not continue the same ray sequence; set data.cache_memory back "
                f"to the value the run started with")
        # NOTE: nothing is read here: the next batch reads its own window (once), so a resume
        # mid-window never reads window 0 first.
        self._step = int(sd["step"])


__all__ = ["BATCH_FIELDS", "RayLoader", "WindowPlan", "plan_window", "shard_batch_sizes",
           "stream_positions", "stream_seed"]
