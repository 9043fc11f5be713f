"""Moved to :mod:`nerf_dist.models.hashgrid.model`; this module stays until the lead removes the shims."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.hashgrid.model import (  # noqa: F401
    FastNeRF)

__all__ = [
    "FastNeRF"]
