"""Mesh export: marching cubes on a trained model's density, block by block over the ranks.

Stages, one module each: :mod:`.grid` (box, samples, blocks), :mod:`.surface` (the field at
samples: density, normals, colours), :mod:`.march` (one block's surface, vertices named by grid
edge), :mod:`.stitch` (pieces -> one mesh, components), :mod:`.level` (the level when none is
given), :mod:`.write` (decimation, frame, files), :mod:`.job` (the stages in order, on every rank).
"""
from .job import FORMATS, MeshOptions, export_mesh

__all__ = ["FORMATS", "MeshOptions", "export_mesh"]
