"""Photos or a video -> a COLMAP model nerf_dist trains on (`nerf-dist prepare`).

>>> prepare("photos/", "data/mine", PrepareOptions(threads=2))

pycolmap (the optional ``sfm`` extra) is imported only when a solve starts; nothing else in
nerf_dist imports this package, and it imports neither torch nor the trainer.
"""
from __future__ import annotations

from .inputs import PrepareError
from .pipeline import PrepareOptions, prepare
from .report import REPORT

__all__ = ["PrepareError", "PrepareOptions", "prepare", "REPORT"]
