"""Occupancy grid for empty-space skipping (the hash-grid kind), kept up to date from the
density field.

Like nerfacc's OccGridEstimator: a res^3 grid over the scene aabb holds an exponential moving
average (max with decay) of the density seen in each cell, and a binary mask of the cells worth
sampling. Cell (i, j, k) has flat index i * res^2 + j * res + k and covers
aabb_min + ([i, i+1], [j, j+1], [k, k+1]) * (aabb_max - aabb_min) / res.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class OccupancyGrid(nn.Module):
    """Buffers only (aabb, density EMA, occupancy), so it follows .to() and lives in checkpoints.

    aabb: [2, 3] (min, max); res: cells per axis; step_size: ray-marching step (metric) used to turn
    a density into an opacity, alpha = 1 - exp(-sigma * step_size); threshold: a cell is occupied
    when its EMA opacity exceeds min(threshold, mean EMA opacity over the grid).

    NOTE (DDP): every update is a deterministic function of (params, step, generator), so ranks with
    identical parameters and a generator seeded from (seed, step) compute identical grids without
    communication: the trainer tells DDP to ignore the buffers (it never broadcasts them).
    """

    def __init__(self, aabb: torch.Tensor, res: int = 128, step_size: float = 0.005,
                 threshold: float = 0.01, update_every: int = 16, ema_decay: float = 0.95,
                 warmup_steps: int = 256, sample_frac: float = 0.25):
        super().__init__()
        self.res, self.step_size, self.threshold = res, float(step_size), float(threshold)
        self.update_every, self.ema_decay = update_every, ema_decay
        self.warmup_steps, self.sample_frac = warmup_steps, sample_frac
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        self.register_buffer("density", torch.zeros(res ** 3))
        # NOTE: everything is occupied until the first update, so early rays are sampled everywhere.
        # NOTE: uint8, not bool: checkpoints hold it as uint8 (it dates from when DDP broadcast
        # buffers, and gloo cannot send bool tensors).
        self.register_buffer("occupied", torch.ones(res ** 3, dtype=torch.uint8))
        r = torch.arange(res)
        ijk = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("cells", ijk.to(torch.int16 if res < 2 ** 15 else torch.int32),
                             persistent=False)                                  # [res^3, 3]

    @property
    def occupied_frac(self) -> float:
        return float(self.occupied.float().mean())

    def cell_index(self, pts: torch.Tensor):
        """pts: [n, 3] -> (flat cell index [n] int64, inside [n] bool); outside points get cell 0."""
        u = (pts - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(-1)
        ijk = (u * self.res).long().clamp(0, self.res - 1)
        flat = (ijk[:, 0] * self.res + ijk[:, 1]) * self.res + ijk[:, 2]
        return torch.where(inside, flat, torch.zeros_like(flat)), inside

    def query(self, pts: torch.Tensor) -> torch.Tensor:
        """pts: [n, 3] world points -> [n] bool: inside the aabb and in an occupied cell."""
        flat, inside = self.cell_index(pts)
        return self.occupied[flat].bool() & inside

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[torch.Tensor], torch.Tensor],
               generator: torch.Generator | None = None, chunk: int = 1 << 16) -> bool:
        """Refresh the grid when step % update_every == 0; otherwise do nothing and return False.

        density_fn: points [m, 3] -> sigma [m]. Before warmup_steps every cell is evaluated; after
        it, a random sample_frac of the cells plus every currently occupied cell. Each chosen cell is
        evaluated at one uniformly jittered point (from `generator`, a CPU or same-device generator),
        then density = max(density * ema_decay, sigma) on those cells.
        """
        if step % self.update_every != 0:
            return False
        dev = self.density.device
        gdev = generator.device if generator is not None else torch.device("cpu")
        n_cells = self.res ** 3
        if step < self.warmup_steps:
            idx = torch.arange(n_cells, device=dev)
        else:
            n_rand = max(1, int(n_cells * self.sample_frac))
            rand = torch.randint(0, n_cells, (n_rand,), generator=generator, device=gdev).to(dev)
            occ = self.occupied.nonzero().squeeze(-1)
            # NOTE: unique() sorts, so the evaluated set is independent of how it was assembled.
            idx = torch.unique(torch.cat([rand, occ]))
        jitter = torch.rand(idx.shape[0], 3, generator=generator, device=gdev).to(dev)
        size = self.aabb[1] - self.aabb[0]
        pts = self.aabb[0] + (self.cells[idx].float() + jitter) * (size / self.res)
        sigma = torch.cat([density_fn(pts[s:s + chunk]).float().reshape(-1)
                           for s in range(0, pts.shape[0], chunk)])
        self.density[idx] = torch.maximum(self.density[idx] * self.ema_decay, sigma)
        alpha = 1.0 - torch.exp(-self.density * self.step_size)
        thr = min(self.threshold, float(alpha.mean()))
        self.occupied.copy_(alpha > thr)
        return True
