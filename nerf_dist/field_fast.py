"""Moved to :mod:`nerf_dist.models.hashgrid.field` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.hashgrid.field import (  # noqa: F401
    trunc_exp, spherical_harmonics, HashField)

__all__ = [
    "trunc_exp", "spherical_harmonics", "HashField"]
