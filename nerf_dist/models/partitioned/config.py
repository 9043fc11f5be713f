"""The partitioned kind's own model.* keys (model.kind=partitioned): P boxes of space, each with
its own hash grid and density network, one shared colour network. The hash-grid keys
(hash_levels, hidden, ...) size every box's field.

NOTE: the config extends the hash encoding's (as the fast and unbounded kinds' do), not the fast
kind's: the occupancy-grid and marching keys (grid_*, march_steps, max_samples, early_stop_eps,
density_bias_init, random_background) are the fast kind's alone (a box samples its segment at
box_samples stratified points), so setting one with model.kind=partitioned is refused as any key
of another kind is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config_check import check
from ..hashgrid.config import HashEncodingConfig


@dataclass(frozen=True)
class PartitionedConfig(HashEncodingConfig):
    partitions: int = 1
    """Boxes P the scene is cut into (a kd-tree); a job of N ranks runs N/P replicas of the P-box
    model (N a multiple of P), or one rank holds every box (N=1). 1 = one box, one field."""
    box_samples: int = 64
    """Stratified samples per ray in each box it crosses (independent of the other boxes, so
    every layout samples the same points)."""
    distortion_weight: float = 0.0
    """Weight of the distortion loss (mip-NeRF 360), composited across boxes exactly; 0 = off.
    On normalised ray distance s in [0, 1] as the unbounded kind's (near -> 0, far -> 1: linear
    in t when bounded; linear near the cameras, in disparity far away when model.far_bound > 0),
    so one weight means the same loss in both kinds."""
    far_bound: float = 0.0
    """0: bounded (space outside the scene box is empty). > 0: unbounded scenes: the outer boxes
    reach infinity (each contracts its far side into its grid, partitioned/unbounded.py), rays
    run this many scene units, a box's samples are spaced linearly near the cameras and in
    disparity far away (as the unbounded kind's model.far_bound; default 0 here, 1000 there).
    (model.far_bound: its deprecated spelling.)"""

    def __post_init__(self) -> None:
        HashEncodingConfig.__post_init__(self)
        check(self.partitions >= 1, "model.partitions", f"must be >= 1, got {self.partitions}")
        check(self.box_samples >= 1, "model.box_samples", f"must be >= 1, got {self.box_samples}")
        check(self.distortion_weight >= 0, "model.distortion_weight", "must be >= 0")
        far = self.far_bound
        check(far == 0 or far > 1, "model.far_bound",
              f"must be 0 (bounded) or > 1 scene unit, got {far}")


__all__ = ["PartitionedConfig"]
