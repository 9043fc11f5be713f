"""Moved to :mod:`nerf_dist.models.vanilla.field` and :mod:`nerf_dist.models.precision`; this
module stays until the lead removes the shims."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.precision import autocast_context
from .models.vanilla.field import NeRFMLP

__all__ = ["NeRFMLP", "autocast_context"]
