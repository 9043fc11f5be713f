"""Moved to :mod:`nerf_dist.render_ops.sampling` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .render_ops.sampling import (  # noqa: F401
    stratified, sample_pdf, intervals, RowNoise, uniform, normal)

__all__ = [
    "stratified", "sample_pdf", "intervals", "RowNoise", "uniform", "normal"]
