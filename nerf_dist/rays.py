"""Moved to :mod:`nerf_dist.render_ops.rays` (a shim until the lead removes it)."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .render_ops.rays import (  # noqa: F401
    pixel_centres, undistort, distort, rays_from_pixels, make_rays, scene_ndc, camera_rays,
    to_ndc, scene_rays)

__all__ = [
    "pixel_centres", "undistort", "distort", "rays_from_pixels", "make_rays", "scene_ndc",
    "camera_rays", "to_ndc", "scene_rays"]
