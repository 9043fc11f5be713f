"""Moved to :mod:`nerf_dist.models.vanilla.model` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.vanilla.model import (  # noqa: F401
    VanillaNeRF)

__all__ = [
    "VanillaNeRF"]
