"""The hash-grid kind's own model.* keys (model.kind=fast): encoding, MLPs, occupancy grid,
ray marching."""
from __future__ import annotations

from dataclasses import dataclass

from ...config_check import check


@dataclass(frozen=True)
class HashEncodingConfig:
    """The hash-grid encoding's and small MLPs' keys, shared by every kind built on them (fast,
    unbounded): one declaration, one meaning."""
    hash_levels: int = 16
    """Hash-grid levels L."""
    hash_features: int = 2
    """Features per level F."""
    hash_log2_size: int = 19
    """log2 of the hash table size per level T."""
    hash_base_res: int = 16
    """Coarsest grid resolution."""
    hash_max_res: int = 2048
    """Finest grid resolution."""
    hidden: int = 64
    """Width of the small density and colour MLPs."""
    geo_features: int = 15
    """Geometry feature size passed from the density MLP to the colour MLP."""

    def __post_init__(self) -> None:
        for k in ("hidden", "hash_levels", "hash_features"):
            check(getattr(self, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(10 <= self.hash_log2_size <= 24, "model.hash_log2_size", "must be in [10, 24]")


@dataclass(frozen=True)
class HashGridConfig(HashEncodingConfig):
    """The fast kind's keys: the hash encoding's, and the occupancy grid's and marching's."""
    grid_res: int = 128
    """Occupancy grid resolution per axis."""
    grid_update_every: int = 16
    """Steps between occupancy-grid updates."""
    grid_ema_decay: float = 0.95
    """Occupancy-grid density EMA decay per update (lower = empty space is found sooner)."""
    grid_threshold: float = 0.01
    """Occupancy threshold on opacity (1 - exp(-sigma * step))."""
    march_steps: int = 1024
    """Ray-marching steps across the scene diagonal (step size = diagonal / march_steps)."""
    max_samples: int = 256
    """Maximum samples kept per ray after skipping."""
    early_stop_eps: float = 1e-4
    """Stop marching a ray when its transmittance falls below this."""
    density_bias_init: float = 0.0
    """Added to the density MLP's initial output bias of a fresh model (sigma = trunc_exp of
    it, so -2 starts every density about e^-2 times lower and the occupancy grid's first
    update already clears cells: lego's first minute 16.8 -> 23.0 dB with -2, but a small
    sphere fit 25.6 -> 16.3 dB after 100 steps; docs/models.md). A checkpoint's weights are
    loaded as they are; 0 (the default) = the initialisation before this key."""
    random_background: bool = False
    """Train against a random colour per ray behind the scene (RGBA targets are composited
    over the same colour; :mod:`nerf_dist.models.background`); evaluation and rendering use the
    scene's configured background. Default per kind: off for fast, on for unbounded.
    (model.fast_random_background: its deprecated spelling for the fast kind.)
    NOTE: off by default: lego's CPU sizes (data.downscale=8) cache composited rgb16 colours
    without alpha, where it trains background pixels as opaque (measured worse, docs/models.md);
    it needs a cache that keeps alpha (rgba8: 8-bit RGBA images at data.downscale=1)."""

    def __post_init__(self) -> None:
        HashEncodingConfig.__post_init__(self)
        for k in ("grid_res", "march_steps", "max_samples", "grid_update_every"):
            check(getattr(self, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(0.0 <= self.grid_ema_decay < 1.0, "model.grid_ema_decay", "must be in [0, 1)")


__all__ = ["HashEncodingConfig", "HashGridConfig"]
