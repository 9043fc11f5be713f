"""Moved to :mod:`nerf_dist.models.base`; this module stays until the lead removes the shims."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.base import NeRFModel

__all__ = ["NeRFModel"]
