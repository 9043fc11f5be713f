"""Rank-parallel tiled rendering: tiles -> rays -> chunked model calls -> gathered frames.

Every rank renders its share of each batch of frames (see :func:`..tiles.plan_tiles`) in chunks
of ``chunk`` rays, then rank 0 gathers the tiles (round by round, see :func:`render_frames`) and
pastes them into whole frames. Without a process group (or world_size 1) it is a plain
single-process loop. :func:`check_memory` refuses a render that cannot fit before any work.

Equality across rank counts and tile sizes: a pixel's ray and samples do not depend on its tile,
so outputs differ only by float reassociation inside batched matrix products (BLAS picks kernels by
batch size). Stated tolerance: max |difference| <= 1e-5 for rgb and acc and <= 1e-5 * far for
depth, in float32 before quantisation (see tests/test_renderer.py).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .. import dist, memory
from ..models.chunked import render_chunked
from ..render_ops.rays import make_rays
from .paths import CameraPath
from .tiles import Tile, frame_batches, frame_tiles, plan_tiles


@dataclass
class RenderSetup:
    """Everything besides the cameras that a ray needs to become a pixel.

    background: [3]. ndc: convert rays to NDC with ndc_focal and ndc_size (H, W) of the training
    cameras (forward-facing scenes); depth is then NDC t in [0, 1]. Lens distortion belongs to
    the cameras (:attr:`CameraPath.distortion`), not here.
    """

    model: torch.nn.Module
    near: float
    far: float
    background: torch.Tensor
    chunk: int = 8192
    device: torch.device = torch.device("cpu")
    ndc: bool = False
    ndc_focal: float = 0.0
    ndc_size: tuple[int, int] = (0, 0)
    extra_keys: tuple[str, ...] = ()
    """Per-pixel outputs besides rgb, depth, acc to render, [H, W] each (keys of the model's
    EXTRA_OUTPUTS, e.g. 'depth_median' for the point-cloud export)."""

    @classmethod
    def from_scene(cls, model, scene, chunk: int, device) -> RenderSetup:
        """The scene's near, far, background and NDC settings (a Scene or a LazyScene)."""
        return cls(model, float(scene.near), float(scene.far),
                   torch.as_tensor(scene.background, dtype=torch.float32), chunk,
                   torch.device(device), bool(scene.ndc), float(scene.ndc_focal),
                   tuple(scene.ndc_size))

    @property
    def ndc_args(self) -> tuple[int, int, float] | None:
        """(H, W, focal) for :func:`nerf_dist.render_ops.rays.make_rays`, or None without NDC."""
        if not self.ndc:
            return None
        H, W = self.ndc_size
        return int(H), int(W), float(self.ndc_focal)


def tile_rays(setup: RenderSetup, cams: CameraPath, t: Tile) -> dict:
    """rays_o, rays_d, viewdirs: [t.h * t.w, 3] through the pixel centres of tile t, row-major.

    The same rays as training's (:func:`nerf_dist.render_ops.rays.make_rays`): the frame's lens distortion
    is undone and forward-facing scenes go to NDC.
    """
    j, i = torch.meshgrid(torch.arange(t.y0, t.y0 + t.h, dtype=torch.float32) + 0.5,
                          torch.arange(t.x0, t.x0 + t.w, dtype=torch.float32) + 0.5, indexing="ij")
    uv = torch.stack([i, j], -1).reshape(-1, 2)
    dist_k = cams.distortion[t.frame] if cams.distortion is not None else None
    return make_rays(uv, cams.K[t.frame], cams.c2w[t.frame], dist_k, setup.ndc_args)


@torch.no_grad()
def render_tile(setup: RenderSetup, cams: CameraPath, t: Tile) -> dict:
    """Render one tile in chunks of setup.chunk rays -> rgb [h, w, 3], depth [h, w], acc [h, w]
    and each of setup.extra_keys [h, w] (float32, CPU)."""
    rays = {k: v.to(setup.device) for k, v in tile_rays(setup, cams, t).items()}
    out = render_chunked(setup.model, rays, setup.near, setup.far, setup.chunk,
                         background=setup.background.to(setup.device),
                         keys=("rgb", "depth", "acc", *setup.extra_keys))
    res = {"rgb": out["rgb"].float().reshape(t.h, t.w, 3).cpu()}
    for k in ("depth", "acc", *setup.extra_keys):
        res[k] = out[k].float().reshape(t.h, t.w).cpu()
    return res


def _gather_to_main(obj, rank: int, world_size: int) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere (identity when single)."""
    if world_size == 1:
        return [obj]
    if not (tdist.is_available() and tdist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} but no torch.distributed process group")
    box = [None] * world_size if rank == 0 else None
    with dist.collective("the gather of rendered tiles to rank 0"):
        tdist.gather_object(obj, box, dst=0)
    return box


def check_memory(setup: RenderSetup, W: int, H: int, tile: int, rank: int = 0,
                 world_size: int = 1, evaluate: bool = False) -> None:
    """:func:`nerf_dist.memory.check_render` for this render on every rank, before any work.

    Every rank checks its own memory; with a process group the verdicts are all-gathered, so
    every rank raises the same MemoryBudgetError (naming the rank that does not fit) and none is
    left waiting in a collective.
    """
    model = setup.model
    cfg = getattr(model, "cfg", None) or getattr(getattr(model, "module", None), "cfg", None)
    memory.on_all_ranks(lambda: memory.check_render(W, H, tile, setup.chunk, cfg, world_size,
                                                    setup.device, evaluate=evaluate),
                        rank, world_size)


def _split_rounds(tiles: list[Tile], n_rounds: int) -> list[list[Tile]]:
    """Consecutive groups of `tiles` of about equal pixel count; exactly n_rounds (some empty)."""
    rounds: list[list[Tile]] = [[] for _ in range(n_rounds)]
    total = sum(t.pixels for t in tiles)
    done = 0
    for t in tiles:
        k = min(n_rounds - 1, int((done + t.pixels / 2) * n_rounds / max(total, 1)))
        rounds[k].append(t)
        done += t.pixels
    return rounds


def render_frames(setup: RenderSetup, cams: CameraPath, frames: list[int], rank: int = 0,
                  world_size: int = 1, tile: int = 64, balance: str = "time",
                  stats: dict | None = None,
                  watch: Callable[[str], AbstractContextManager] | None = None
                  ) -> Iterator[tuple[int, dict]]:
    """Render `frames` of `cams` across ranks; yields (frame, {rgb, depth, acc}) on rank 0.

    Every rank must iterate to the end (the loop holds collectives); ranks other than 0 yield
    nothing. With world_size 1 there is no collective, so one rank may render alone while a
    process group exists. Frames come in batches (:func:`frame_batches`), in order. balance: 'pixels' plans
    each batch by pixel count; 'time' weights tiles by the seconds per pixel measured at the same
    tile position in the previous batch (neighbouring frames cost alike), so cheap empty regions
    and expensive detailed ones even out across ranks.
    watch: ``watch(what)`` is a context manager around each collective wait (e.g. a
    :class:`~nerf_dist.lifecycle.StallWatchdog`'s ``waiting``), so a frozen peer is named.
    stats: if given, accumulates 'rays' and 'render_s' of this rank and 'rank_s' per rank (rank 0).

    A model placed across ranks (the partitioned kind, in training, eval and render) says which
    share of the tiles a rank renders (``render_split``: its replica's; every rank of a box group
    renders the same tiles, the same chunks, so its forward's exchanges line up) and which rank
    of a share sends them to rank 0 (one per share).

    Memory: tiles are pasted into the frames being assembled as they arrive, never all held at
    once. A single process pastes each tile straight away; with several ranks each rank's tiles
    are cut into the same number of rounds (about equal pixels, so the time-balanced plan stays
    balanced round by round), and each round is gathered to rank 0 and pasted, so rank 0
    receives at most about memory.ROUND_BYTES of tile results at a time.
    """
    watch = watch or (lambda what: nullcontext())
    if balance not in ("time", "pixels"):
        raise ValueError(f"balance must be 'time' or 'pixels', got {balance!r}")
    setup.model.eval()
    split = getattr(setup.model, "render_split", None)
    part, n_parts, sends = split(rank, world_size) if split else (rank, world_size, True)
    H, W = cams.H, cams.W
    per_frame = len(frame_tiles(0, H, W, tile))
    cost_map: dict[tuple[int, int], float] = {}
    for batch in frame_batches(frames, per_frame, n_parts):
        cost = None
        if balance == "time" and cost_map:
            mean = sum(cost_map.values()) / len(cost_map)
            cost = lambda t: t.pixels * cost_map.get((t.y0, t.x0), mean)  # noqa: E731
        plan = plan_tiles(batch, H, W, tile, n_parts, cost)
        assembled = {f: {"rgb": torch.zeros(H, W, 3),
                         **{k: torch.zeros(H, W) for k in ("depth", "acc", *setup.extra_keys)}}
                     for f in batch} if rank == 0 else {}
        new_cost: dict[tuple[int, int], list[float]] = {}
        rank_s = stats.setdefault("rank_s", [0.0] * world_size) if stats is not None else None

        def paste(t: Tile, out: dict, dt: float, r: int) -> None:
            for k, v in out.items():
                assembled[t.frame][k][t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] = v
            new_cost.setdefault((t.y0, t.x0), []).append(dt / max(t.pixels, 1))
            if rank_s is not None:
                rank_s[r] += dt

        if world_size == 1:
            rounds = [plan[0]]
        else:
            total = sum(t.pixels for p in plan for t in p) * memory.FRAME_BYTES_PER_PIXEL
            rounds = _split_rounds(plan[part], max(1, math.ceil(total / memory.ROUND_BYTES)))
        t_rank = 0.0
        for group in rounds:
            sent = []
            for t in group:
                t0 = time.perf_counter()
                out = render_tile(setup, cams, t)
                dt = time.perf_counter() - t0
                t_rank += dt
                if rank == 0:
                    paste(t, out, dt, 0)
                elif sends:
                    sent.append((tuple(t), out, dt))
            if world_size > 1:
                with watch(f"the other ranks' tiles of frame(s) {batch}"):
                    parts = _gather_to_main(sent, rank, world_size)
                del sent
                if rank == 0:
                    for r, received in enumerate(parts):
                        for tt, out, dt in received:
                            paste(Tile(*tt), out, dt, r)
                del parts
        if stats is not None:
            stats["rays"] = stats.get("rays", 0) + sum(t.pixels for t in plan[part])
            stats["render_s"] = stats.get("render_s", 0.0) + t_rank
        if rank == 0:
            cost_map = {k: sum(v) / len(v) for k, v in new_cost.items()}
        if balance == "time" and world_size > 1:
            # NOTE: not when world_size is 1: a caller may render alone while a process group
            # exists (world_size 1 promises no collective), and a broadcast would wait there.
            with watch("rank 0's tile timings"):
                cost_map = dist.broadcast_object(cost_map)
        if rank == 0:
            for f in batch:
                yield f, assembled.pop(f)
