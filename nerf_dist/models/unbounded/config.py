"""The unbounded kind's own model.* keys (model.kind=unbounded): contraction, proposal sampling,
regularisers, appearance, background.

The hash-grid keys it shares with the fast kind (hash_levels ... geo_features) come from
:class:`HashEncodingConfig`, declared once for both.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config_check import check
from ..hashgrid.config import HashEncodingConfig

CONTRACTIONS = ("inf", "2")
SAMPLERS = ("proposal", "occupancy")


@dataclass(frozen=True)
class UnboundedConfig(HashEncodingConfig):
    far_bound: float = 1000.0
    """Far bound of every ray, in scene units (the scene's own far plane is not used:
    the contracted field covers all of space). Default per kind: 1000 for unbounded, 0
    (bounded) for partitioned, where > 0 makes the outer boxes reach infinity."""
    contraction: str = "inf"
    """Norm of the scene contraction: inf (a cube, for hash grids) | 2 (mip-NeRF 360's
    ball)."""
    sampler: str = "proposal"
    """How the field's samples are placed along a ray: proposal (nerfacto's proposal networks,
    resampled; the proposal_* and interlevel_weight keys) | occupancy (nerfacc-style: a binary
    occupancy grid over the contracted cube skips empty space, and model.field_samples samples
    are spread evenly over each ray's occupied stretch; the occupancy_* keys). Measured on the
    unbounded demo scene in docs/benchmarks.md."""
    occupancy_res: int = 64
    """sampler=occupancy: cells per axis of the occupancy grid over the contracted cube
    [-2, 2]^3 (the far field gets ever coarser cells in scene units, as the hash grid does)."""
    occupancy_steps: int = 512
    """sampler=occupancy: march steps per ray, uniform in s-space, whose midpoints are looked up
    in the grid (the resolution of empty-space skipping; only model.field_samples reach the
    field)."""
    occupancy_update_every: int = 16
    """sampler=occupancy: steps between occupancy-grid updates (from the field's density)."""
    proposal_samples: str = "256,96"
    """Samples per ray of each proposal level, comma-separated (one proposal network
    per level; the first level samples uniformly in s-space)."""
    field_samples: int = 48
    """Samples per ray of the radiance field (resampled from the last proposal; with
    sampler=occupancy, spread evenly over the ray's occupied stretch)."""
    proposal_levels: int = 5
    """Hash-grid levels of each proposal network."""
    proposal_log2_size: int = 17
    """log2 of the hash table size per level of each proposal network."""
    proposal_max_res: str = "128,256"
    """Finest grid resolution of each proposal network, comma-separated (one per
    proposal level)."""
    proposal_hidden: int = 16
    """Width of each proposal network's density MLP."""
    proposal_anneal_steps: int = 1000
    """Steps over which the proposal weights' exponent anneals from 0 to 1 (nerfacto's
    schedule, slope 10): early on, resampling is near uniform."""
    interlevel_weight: float = 1.0
    """Weight of the interlevel (proposal) loss."""
    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (0 = off; configs/capture*.yaml use 0.002), on
    normalised ray distance s in [0, 1] (near -> 0, far -> 1; spaced linearly near the cameras
    and in disparity far away, as the samples are): the same loss for the same weight in every
    kind that has the key (unbounded, partitioned), whatever the scene's units."""
    appearance_dim: int = 0
    """Per-image appearance embedding size (0 = off, e.g. synthetic scenes); held-out
    views use the mean of the training images' embeddings."""
    appearance_images: int = 1024
    """Rows of the per-image tables (appearance embeddings, pose corrections): at least the
    number of training images."""
    pose_refine: bool = False
    """Learn a small rotation + translation correction per training image (for poses from
    structure from motion that are slightly off). Held-out views keep their given poses,
    so a drift of all training poses together shows up as a held-out error: off by
    default; see docs/models.md."""
    random_background: bool = True
    """Train against a random colour per ray behind the scene (RGBA targets are
    composited over the same colour), so transparency cannot hide behind a fixed colour;
    evaluation and rendering use the scene's configured background. Default per kind: on for
    unbounded, off for fast."""

    def __post_init__(self) -> None:
        HashEncodingConfig.__post_init__(self)
        check(self.contraction in CONTRACTIONS, "model.contraction",
              f"must be {'|'.join(CONTRACTIONS)}, got {self.contraction!r}")
        check(self.sampler in SAMPLERS, "model.sampler",
              f"must be {'|'.join(SAMPLERS)}, got {self.sampler!r}")
        check(self.far_bound > 1.0, "model.far_bound", f"must be > 1, got {self.far_bound}")
        for k in ("field_samples", "proposal_levels", "proposal_hidden", "proposal_anneal_steps",
                  "appearance_images", "occupancy_res", "occupancy_steps", "occupancy_update_every"):
            check(getattr(self, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(10 <= self.proposal_log2_size <= 24, "model.proposal_log2_size", "must be in [10, 24]")
        for k in ("interlevel_weight", "distortion_weight"):
            check(getattr(self, k) >= 0, f"model.{k}", f"must be >= 0, got {getattr(self, k)}")
        check(self.appearance_dim >= 0, "model.appearance_dim",
              f"must be >= 0, got {self.appearance_dim}")
        try:
            n, r = int_list(self.proposal_samples), int_list(self.proposal_max_res)
        except ValueError:
            n, r = [], []
        check(len(n) >= 1 and min(n) >= 2, "model.proposal_samples",
              f"must be comma-separated integers >= 2, got {self.proposal_samples!r}")
        check(len(r) == len(n) and min(r) >= 2, "model.proposal_max_res",
              f"must be one integer >= 2 per proposal level ({len(n)}), got "
              f"{self.proposal_max_res!r}")


def int_list(text) -> list[int]:
    """'256,96' (or an int, as YAML may give one) -> [256, 96]; ValueError otherwise."""
    if isinstance(text, int):
        return [text]
    return [int(x) for x in str(text).split(",") if x.strip()]


__all__ = ["CONTRACTIONS", "SAMPLERS", "UnboundedConfig", "int_list"]
