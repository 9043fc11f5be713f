"""The sample grid of a mesh export: a box, its lattice of samples, and the blocks it is cut into.

Samples sit at ``lo + i * cell`` (i = 0 .. n - 1 on each axis), so the box's faces are sample
planes. A block is a range of samples [start, stop) per axis; neighbouring blocks share one plane
of samples (block b's last plane is block b + 1's first), so every cell of the grid lies in exactly
one block and the faces marching cubes makes in a cell belong to that block alone: the seam
between blocks is only shared vertices, merged by their grid-edge id (:mod:`.march`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

MAX_SAMPLES_PER_AXIS = 8193
"""Beyond this the int64 edge ids would still fit, but no export of that size is sensible here."""


@dataclass(frozen=True)
class Grid:
    """lo [3] the box's min corner (scene frame), cell: the spacing, shape (nx, ny, nz) samples."""
    lo: tuple[float, float, float]
    cell: float
    shape: tuple[int, int, int]

    @property
    def hi(self) -> tuple[float, ...]:
        return tuple(self.lo[a] + (self.shape[a] - 1) * self.cell for a in range(3))

    @property
    def n_samples(self) -> int:
        return math.prod(self.shape)

    def points(self, start: tuple[int, ...], stop: tuple[int, ...]) -> torch.Tensor:
        """Samples of the block [start, stop) -> [nx * ny * nz, 3] float32, x slowest (C order).

        NOTE: each coordinate is computed from its global index alone, so a sample shared by two
        blocks gets the same float bits in both."""
        axes = [torch.tensor([self.lo[a] + i * self.cell for i in range(start[a], stop[a])],
                             dtype=torch.float64) for a in range(3)]
        g = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        return g.reshape(-1, 3).float()

    def to_scene(self, index_coords: torch.Tensor) -> torch.Tensor:
        """[n, 3] float64 grid index coordinates -> [n, 3] float64 scene points."""
        return torch.as_tensor(self.lo, dtype=torch.float64) + index_coords * self.cell


def make_grid(lo, hi, resolution: int | None = None, cell: float | None = None) -> Grid:
    """The grid over box [lo, hi] (scene frame): `resolution` cells along its longest side, or
    cells of size `cell` (exactly one of them). The box grows to a whole number of cells on each
    axis (at most one cell). ValueError on an empty or inverted box or an absurd size."""
    lo = [float(v) for v in lo]
    hi = [float(v) for v in hi]
    if len(lo) != 3 or len(hi) != 3 or not all(math.isfinite(v) for v in lo + hi):
        raise ValueError(f"bad box {lo} .. {hi}: give 3 finite numbers for each corner")
    if any(h <= low for low, h in zip(lo, hi)):
        raise ValueError(f"bad box: min {lo} must be below max {hi} on every axis")
    if (resolution is None) == (cell is None):
        raise ValueError("give exactly one of --resolution N or --cell-size S")
    if resolution is not None:
        if resolution < 2:
            raise ValueError(f"--resolution must be >= 2, got {resolution}")
        cell = max(h - low for low, h in zip(lo, hi)) / resolution
    if not cell > 0:
        raise ValueError(f"--cell-size must be > 0, got {cell}")
    shape = tuple(max(2, math.ceil((h - low) / cell - 1e-9) + 1) for low, h in zip(lo, hi))
    if max(shape) > MAX_SAMPLES_PER_AXIS:
        raise ValueError(f"{max(shape)} samples along an axis (cell {cell:g}) is beyond "
                         f"{MAX_SAMPLES_PER_AXIS}: use a coarser --resolution or --cell-size")
    return Grid(tuple(lo), float(cell), shape)


def blocks(grid: Grid, block: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The grid cut into blocks of at most `block` cells per axis: [(start, stop)] sample ranges
    (stop exclusive), x slowest; consecutive blocks on an axis share one sample plane."""
    if block < 1:
        raise ValueError(f"block must be >= 1 cell, got {block}")
    per_axis = []
    for n in grid.shape:
        cuts = list(range(0, n - 1, block)) + [n - 1]
        per_axis.append([(a, b + 1) for a, b in zip(cuts[:-1], cuts[1:])])
    return [tuple(zip(*r)) for r in itertools.product(*per_axis)]


def block_of_rank(n_blocks: int, rank: int, world_size: int) -> list[int]:
    """The blocks rank `rank` evaluates: b, b + world_size, ... (near-equal shares; a block's
    result does not depend on which rank made it)."""
    return list(range(rank, n_blocks, world_size))


__all__ = ["Grid", "MAX_SAMPLES_PER_AXIS", "block_of_rank", "blocks", "make_grid"]
