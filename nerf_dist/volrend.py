"""Moved to :mod:`nerf_dist.render_ops.volrend` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .render_ops.volrend import (  # noqa: F401
    render_weights, composite, render_rays)

__all__ = [
    "render_weights", "composite", "render_rays"]
