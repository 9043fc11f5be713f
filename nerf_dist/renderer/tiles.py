"""Pure tiling: frames -> tiles -> per-rank work lists, balanced by an estimated cost.

No processes here: ``rank`` and ``world_size`` are arguments, so the plan is unit-testable and
every rank computes the same plan from the same inputs.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Tile(NamedTuple):
    """A rectangle of one frame: rows y0..y0+h-1, columns x0..x0+w-1."""

    frame: int
    y0: int
    x0: int
    h: int
    w: int

    @property
    def pixels(self) -> int:
        return self.h * self.w


def frame_tiles(frame: int, H: int, W: int, tile: int) -> list[Tile]:
    """The tiles of one H x W frame, row-major; edge tiles are smaller."""
    if H < 1 or W < 1:
        raise ValueError(f"image size must be at least 1x1, got {W}x{H}")
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    return [Tile(frame, y, x, min(tile, H - y), min(tile, W - x))
            for y in range(0, H, tile) for x in range(0, W, tile)]


def plan_tiles(frames: int | Sequence[int], H: int, W: int, tile: int, world_size: int,
               cost: Callable[[Tile], float] | None = None) -> list[list[Tile]]:
    """Split the tiles of `frames` among `world_size` ranks -> per-rank lists of Tile.

    frames: a frame count (frames 0..n-1) or the frame indices to render.
    cost: estimated cost of a tile (default: its pixel count). Tiles are handed out largest cost
        first, each to the rank with the least total cost so far (ties: lowest rank), so the
        heaviest rank exceeds the lightest by at most one tile's cost. With equal costs this is a
        round-robin over the tiles in (frame, row, column) order, which interleaves frames and
        frame regions across ranks.
    Every pixel of every frame is in exactly one tile of exactly one rank; each rank's list is
    sorted by (frame, y0, x0). Deterministic.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    frame_list = list(range(frames)) if isinstance(frames, int) else list(frames)
    tiles = [t for f in frame_list for t in frame_tiles(f, H, W, tile)]
    costs = [float(cost(t)) if cost is not None else float(t.pixels) for t in tiles]
    # NOTE: stable sort on -cost keeps (frame, row, column) order among equal costs.
    order = sorted(range(len(tiles)), key=lambda k: -costs[k])
    heap = [(0.0, r) for r in range(world_size)]
    plan: list[list[Tile]] = [[] for _ in range(world_size)]
    for k in order:
        load, r = heapq.heappop(heap)
        plan[r].append(tiles[k])
        heapq.heappush(heap, (load + costs[k], r))
    for p in plan:
        p.sort()
    return plan


def frame_batches(frames: Sequence[int], tiles_per_frame: int, world_size: int,
                  min_tiles_per_rank: int = 2) -> list[list[int]]:
    """Group frames into batches with enough tiles to keep every rank busy.

    A batch is rendered, gathered to rank 0 and written before the next starts, so frames appear
    on disk (and resume works) batch by batch while memory stays bounded by one batch.
    """
    per = max(1, math.ceil(min_tiles_per_rank * world_size / max(1, tiles_per_frame)))
    frames = list(frames)
    return [frames[i:i + per] for i in range(0, len(frames), per)]


def rank_loads(plan: list[list[Tile]], cost: Callable[[Tile], float] | None = None) -> list[float]:
    """Total estimated cost per rank of a plan (default cost: pixels)."""
    return [sum(float(cost(t)) if cost is not None else float(t.pixels) for t in p) for p in plan]
