"""Getting the reconstruction out of a trained run: meshes (:mod:`.mesh`), point clouds
(:mod:`.pointcloud`) and cameras (:mod:`.cameras`), in the scene's original frame
(:mod:`.frame`), written as PLY (:mod:`.ply`) and measured against true geometry
(:mod:`.truth`, :mod:`.geometry_metrics`). `nerf-dist export {mesh,pointcloud,cameras}`; see
docs/export.md.

NOTE: importing this package imports nothing heavy: each command imports its own modules.
"""
