"""`nerf-dist export mesh`: the stages, in order, on every rank.

1. box and grid (--bbox, else the model's surface_box of the scene box), the blocks;
2. memory check (every rank, before any field evaluation; raised on every rank);
3. coarse pass (every rank alike, small): the density range (the level's candidates and the "no
   surface" message); the level when --level is not given, from the training rays
   (:mod:`.ray_level`, views split over the ranks), else Otsu's (:mod:`.level`);
4. blocks: rank r evaluates blocks r, r + N, ...: density, marching cubes, normals, colours;
5. the pieces are gathered on rank 0, which merges them (edge ids), keeps the largest components,
   decimates, moves to the output frame and writes the files. NOTE: no collective follows the
   gather, so the other ranks never wait inside one while rank 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ... import dist, memory
from .grid import Grid, block_of_rank, blocks, make_grid
from .level import otsu_log_level, suggest_level
from .march import march_block
from .ray_level import training_rays_level
from .split_field import SplitField, needs_split
from .stitch import Mesh, keep_largest, merge
from .surface import add_attributes, block_density

FORMATS = ("ply", "obj", "glb")
COARSE_CELLS = 64
"""Cells along the longest side of the coarse pass (level choice, empty-result message)."""
BYTES_PER_SAMPLE = 4 + 12 + 8 + 1
"""A block's per-sample host memory besides the model: density (fp32), points (fp32 x 3), the
float64 copy marching cubes and the edge search make, and the inside mask."""
BYTES_PER_VERTEX = 8 + 24 + 12 + 3 + 2 * 3 * 8
"""A merged vertex: id, position (fp64), normal, colour, and its ~2 faces of 3 int64."""
TRUTH_POINTS = 200_000
"""Points drawn on the mesh's faces for --truth."""


@dataclass(frozen=True)
class MeshOptions:
    """What `nerf-dist export mesh` was asked for (validated by :func:`check_options`)."""
    out: str
    """Output folder (mesh.ply, mesh.obj, mesh.glb, mesh.json)."""
    resolution: int | None = 256
    """Cells along the box's longest side (or None with cell_size)."""
    cell_size: float | None = None
    """Cell size in scene units (instead of resolution)."""
    bbox: tuple[float, ...] | None = None
    """xmin ymin zmin xmax ymax zmax in the scene frame; None: the model's surface box."""
    level: float | None = None
    """Density of the surface; None: chosen from the training rays (:mod:`.ray_level`)."""
    block: int = 64
    """Cells per block side (one block's samples are held at once)."""
    keep_components: int = 0
    """Keep the N largest connected components (0: all)."""
    decimate: int = 0
    """Target face count (0: none; needs fast-simplification)."""
    formats: tuple[str, ...] = ("ply",)
    frame: str = "original"
    """original: the scene's original frame (readers' normalisation undone); scene: as trained."""
    colors: bool = True
    chunk: int = 65536
    """Points per model call."""
    progress: bool = True
    truth: bool = False
    """Measure the mesh against the demo scene's true surface (TRUTH_POINTS points drawn on its
    faces, :mod:`..geometry_metrics`)."""
    tau: float = 0.05
    """The F-score threshold of truth, in the scene files' units."""


def check_options(o: MeshOptions) -> None:
    """ValueError naming the flag of the first bad option."""
    bad = [f for f in o.formats if f not in FORMATS]
    if bad or not o.formats:
        raise ValueError(f"--format {','.join(o.formats)}: choose from {', '.join(FORMATS)}")
    if o.frame not in ("original", "scene"):
        raise ValueError(f"--frame must be original or scene, got {o.frame!r}")
    if o.bbox is not None and len(o.bbox) != 6:
        raise ValueError(f"--bbox takes 6 numbers (xmin ymin zmin xmax ymax zmax), got {o.bbox}")
    if o.level is not None and not (math.isfinite(o.level) and o.level > 0):
        raise ValueError(f"--level must be a density > 0, got {o.level}")
    for name, v in (("--block", o.block), ("--chunk", o.chunk)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not (math.isfinite(o.tau) and o.tau > 0):
        raise ValueError(f"--tau must be > 0, got {o.tau}")
    if o.keep_components < 0 or o.decimate < 0:
        raise ValueError("--keep-components and --decimate must be >= 0")


def resolve_grid(model, scene: dict, o: MeshOptions) -> tuple[Grid, str]:
    """The grid and a word on where its box came from."""
    if o.bbox is not None:
        lo, hi, src = o.bbox[:3], o.bbox[3:], "--bbox"
    else:
        aabb = torch.as_tensor(scene["aabb"], dtype=torch.float32).reshape(2, 3)
        box = model.surface_box(aabb)
        lo, hi = box[0].tolist(), box[1].tolist()
        src = "the model's surface box" if not torch.equal(box, aabb) else "the scene box"
    try:
        return make_grid(lo, hi, o.resolution, o.cell_size), src
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from e


def estimate(grid: Grid, o: MeshOptions, model_cfg, world_size: int) -> dict[str, int]:
    """This rank's peak host memory, {part: bytes} (rank 0's, the largest)."""
    b = o.block + 1
    per = memory.bytes_per_ray(model_cfg, False) // max(1, memory.samples_per_ray(model_cfg, False))
    nx, ny, nz = grid.shape
    # NOTE: a surface a few times the box's own area: an estimate, stated as one in the message.
    surface = 4 * 2 * (nx * ny + ny * nz + nx * nz)
    return {f"one block of {b}^3 samples": b ** 3 * BYTES_PER_SAMPLE,
            f"--chunk {o.chunk} field activations": 6 * o.chunk * max(per, 64),
            "model weights": memory.param_bytes(model_cfg),
            f"the merged mesh (about {surface} vertices, estimated)": 3 * surface * BYTES_PER_VERTEX}


def coarse_density(model, grid: Grid, o: MeshOptions, device) -> np.ndarray:
    """Density on a COARSE_CELLS grid over the same box -> [n] float32."""
    c = make_grid(grid.lo, grid.hi, resolution=min(COARSE_CELLS, max(grid.shape) - 1))
    return block_density(model, c, (0, 0, 0), c.shape, o.chunk, device).ravel()


def choose_level(model, cfg, grid: Grid, coarse: np.ndarray, o: MeshOptions, rank: int,
                 world_size: int, device, progress: bool = False) -> tuple[float | None, str]:
    """--level, else the training rays' level (:mod:`.ray_level`), else Otsu on the coarse
    grid's log density (:mod:`.level`) -> (level or None when no rule finds one, how)."""
    if o.level is not None:
        return o.level, "--level"
    level, how = training_rays_level(model, cfg.data, grid, coarse, o.chunk, device, rank,
                                     world_size, progress)
    if level is not None:
        return level, how
    otsu = otsu_log_level(coarse)
    return otsu, f"Otsu on the log density, because {how}: give --level if the mesh is poor"


def _bar(total: int, desc: str, on: bool):
    from tqdm import tqdm  # NOTE: lazy, with the command that draws bars
    return tqdm(total=total, desc=desc, unit="block", disable=not on, dynamic_ncols=True)


def extract(model, grid: Grid, level: float, o: MeshOptions, rank: int, world_size: int,
            device, progress: bool = False, rss: list | None = None,
            split: bool = False) -> list | None:
    """Stage 4 and the gather: this rank's blocks -> [(block index, Piece)] of every rank, in
    block order, on rank 0 (None elsewhere). Errors on any rank are raised on every rank.
    rss: a list that receives every rank's peak resident bytes (rank 0, when given).
    split: model is a :class:`.split_field.SplitField` (its field_at is collective): every rank
    goes through every block, the ranks sharing each block's field by box, and rank 0 keeps
    the pieces (the others' equal ones are dropped)."""
    cut = blocks(grid, o.block)
    mine = list(range(len(cut))) if split else block_of_rank(len(cut), rank, world_size)
    out, err = [], None
    bar = _bar(len(mine), f"blocks (rank 0's {len(mine)} of {len(cut)})", progress)
    try:
        for b in mine:
            start, stop = cut[b]
            values = block_density(model, grid, start, stop, o.chunk, device)
            piece = march_block(values, level, start, grid)
            piece = add_attributes(model, piece, grid, o.chunk, device, o.colors)
            if rank == 0 or not split:
                out.append((b, piece))
            bar.update()
    except (ValueError, MemoryError) as e:
        err = f"rank {rank}: {type(e).__name__}: {e}"
    except RuntimeError as e:
        if split:
            raise  # NOTE: a failed exchange: the peers wait in theirs until dist.timeout_s
        err = f"rank {rank}: {type(e).__name__}: {e}"
    finally:
        bar.close()
    dist.raise_together(err, rank, world_size, RuntimeError)
    gathered = (dist.gather_object((out, peak_rss()), rank, world_size) if world_size > 1
                else [(out, peak_rss())])
    if gathered is None:
        return None
    if rss is not None:
        rss.extend(r for _, r in gathered)
    return sorted((bp for part, _ in gathered for bp in part), key=lambda bp: bp[0])


def export_mesh(loaded, o: MeshOptions, rank: int = 0, world_size: int = 1, device="cpu",
                log=print) -> dict | None:
    """Every stage (module doc); returns the summary on rank 0 (also written as mesh.json), None
    elsewhere. log: rank 0's printer (a no-op on other ranks)."""
    from .write import finish  # NOTE: lazy: trimesh, only for rank 0's writing
    check_options(o)
    t0 = time.perf_counter()
    model = loaded.model.to(device).eval()
    grid, src = resolve_grid(model, loaded.scene, o)
    n_blocks = len(blocks(grid, o.block))
    split = world_size > 1 and needs_split(model)
    how_split = (f"every block's field split by box ({len(model.layout.owned)} of "
                 f"{model.cfg.partitions} box(es) on each rank)" if split else "blocks split")
    log(f"export mesh: step {loaded.step}, box {fmt3(grid.lo)} .. {fmt3(grid.hi)} ({src}), "
        f"{'x'.join(map(str, grid.shape))} samples (cell {grid.cell:.4g}), {n_blocks} block(s) "
        f"of {o.block} cells on {world_size} rank(s)"
        + (f", {how_split}" if world_size > 1 else ""))
    if split:
        model = SplitField(model)
    memory.on_all_ranks(lambda: memory.check_parts(
        estimate(grid, o, loaded.cfg.model, world_size), "the mesh export",
        {"block": "lower --block", "chunk": "lower --chunk", "mesh": "lower --resolution",
         "weights": "use a machine with more memory"}), rank, world_size)
    coarse = coarse_density(model, grid, o, device)
    # NOTE: a split field is collective: every rank takes every view of the level pass too.
    level, how = choose_level(model, loaded.cfg, grid, coarse, o, 0 if split else rank,
                              1 if split else world_size, device, o.progress and rank == 0)
    dist.raise_together(None if level is not None else
                        f"no surface to find: {suggest_level(coarse)}", rank, world_size,
                        ValueError)
    level = float(dist.broadcast_object(level))
    log(f"level {level:.4g} ({how})")
    rss: list[int] = []
    pieces = extract(model, grid, level, o, rank, world_size, device, o.progress and rank == 0,
                     rss, split)
    if pieces is None:
        return None
    t_field = time.perf_counter() - t0
    mesh = merge([p for _, p in pieces])
    if not len(mesh.faces):
        raise ValueError(f"no surface at --level {level:.4g} in the box "
                         f"{fmt3(grid.lo)} .. {fmt3(grid.hi)}: {suggest_level(coarse)}")
    n_raw = (len(mesh.verts), len(mesh.faces))
    mesh, n_comp = keep_largest(mesh, o.keep_components)
    mesh = Mesh(grid.to_scene(torch.from_numpy(mesh.verts)).numpy(), mesh.faces, mesh.normals,
                mesh.colors)
    from ..frame import scene_meta  # NOTE: lazy: the scene readers
    meta = scene_meta(loaded.cfg) if o.frame == "original" or o.truth else {}
    summary, written = finish(mesh, meta, o)
    if o.truth:
        from ..geometry_metrics import against_truth, surface_points  # NOTE: lazy: scipy
        summary["truth"] = against_truth(surface_points(written.verts, written.faces,
                                                        TRUTH_POINTS), str(meta.get("root", "")),
                                         meta, o.frame, o.tau,
                                         box=np.array([grid.lo, grid.hi]))
    summary.update(step=loaded.step, level=level, level_source=how,
                   box=[list(grid.lo), list(grid.hi)], box_source=src,
                   samples=list(grid.shape), cell=grid.cell, blocks=n_blocks,
                   world_size=world_size, split_by_box=split, components=n_comp, kept_components=o.keep_components,
                   raw_vertices=n_raw[0], raw_faces=n_raw[1], field_seconds=t_field,
                   seconds=time.perf_counter() - t0, source=loaded.source,
                   peak_rss_bytes=peak_rss(), peak_rss_bytes_per_rank=rss)
    with open(os.path.join(o.out, "mesh.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux: ru_maxrss is in KiB)."""
    import resource  # NOTE: lazy: Unix only (the exporter itself runs anywhere)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def fmt3(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


__all__ = ["FORMATS", "MeshOptions", "check_options", "estimate", "export_mesh", "extract",
           "resolve_grid"]
