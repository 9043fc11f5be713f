"""Rank-parallel tiled novel-view renderer and camera paths.

- :mod:`.tiles`   pure tiling and per-rank balancing (plan_tiles)
- :mod:`.paths`   camera paths: orbit, spiral, dataset split, JSON files (format documented there)
- :mod:`.core`    tiles -> rays -> chunked model calls -> frames gathered on rank 0
- :mod:`.outputs` atomic per-frame files, depth encodings, MP4/GIF
- :mod:`.images`  drawing: colourised depth, side-by-side and contact-sheet images

The one way from a model to an image: `nerf-dist render`, `nerf-dist eval`, in-training
validation and the benchmarks all render through :func:`.core.render_frames`.
- :mod:`.job`     the `render` command: load checkpoint, build path, render a folder with resume
"""
from .core import RenderSetup, check_memory, render_frames, render_tile, tile_rays
from .paths import (CameraPath, CameraPathError, in_scene_frame, load_camera_path, orbit_params,
                    orbit_path, parse_resolution, spiral_path, split_path, write_camera_path)
from .tiles import Tile, frame_batches, frame_tiles, plan_tiles, rank_loads

__all__ = ["RenderSetup", "check_memory", "render_frames", "render_tile", "tile_rays", "CameraPath",
           "CameraPathError", "in_scene_frame", "load_camera_path", "orbit_params", "orbit_path",
           "parse_resolution", "spiral_path", "split_path", "write_camera_path", "Tile",
           "frame_batches", "frame_tiles", "plan_tiles", "rank_loads"]
