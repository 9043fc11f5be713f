"""The vanilla kind's own model.* keys (the NeRF paper's MLPs and their sampling)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config_check import check


@dataclass(frozen=True)
class VanillaConfig:
    depth: int = 8
    """Number of 'trunk' layers."""
    width: int = 256
    """Trunk width."""
    skip: int = 4
    """0-based layer whose output is joined with the encoded input (4 = the 5th, as in the paper)."""
    pos_freqs: int = 10
    """Frequency bands for xyz (the input itself is included)."""
    dir_freqs: int = 4
    """Frequency bands for view directions."""
    n_samples: int = 64
    """Stratified coarse samples per ray."""
    n_importance: int = 128
    """Importance samples per ray for the fine network (0 = coarse only)."""
    perturb: bool = True
    """Jitter coarse samples during training."""
    raw_noise_std: float = 0.0
    """Std of noise added to density during training (paper: 1.0 for LLFF)."""

    def __post_init__(self) -> None:
        for k in ("depth", "width", "n_samples"):
            check(getattr(self, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(0 <= self.skip < self.depth, "model.skip", "must be in [0, depth)")
        check(self.n_importance >= 0, "model.n_importance", "must be >= 0")
        check(self.pos_freqs >= 0 and self.dir_freqs >= 0, "model.pos_freqs", "must be >= 0")


__all__ = ["VanillaConfig"]
