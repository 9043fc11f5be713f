"""nerf_dist: distributed NeRF training and rendering."""
__version__ = "0.1.0"
