"""Moved to :mod:`nerf_dist.models.hashgrid.occupancy` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.hashgrid.occupancy import (  # noqa: F401
    OccupancyGrid)

__all__ = [
    "OccupancyGrid"]
