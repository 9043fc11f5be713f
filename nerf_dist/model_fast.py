"""Moved to :mod:`nerf_dist.models.hashgrid.model` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.hashgrid.model import (  # noqa: F401
    FastNeRF)

__all__ = [
    "FastNeRF"]
