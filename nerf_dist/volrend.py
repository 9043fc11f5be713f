"""Moved to :mod:`nerf_dist.render_ops.volrend`; this module stays until the lead removes the shims."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .render_ops.volrend import (  # noqa: F401
    render_weights, composite, render_rays)

__all__ = [
    "render_weights", "composite", "render_rays"]
