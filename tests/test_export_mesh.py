"""Mesh export (nerf_dist.export.mesh): blocks, seamless stitching, 1 rank == 2 ranks (real gloo
processes), components, level choice, errors, and every kind's field_at."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from nerf_dist.export.mesh.grid import blocks, make_grid
from nerf_dist.export.mesh.job import MeshOptions, extract
from nerf_dist.export.mesh.level import otsu_log_level, suggest_level
from nerf_dist.export.mesh.stitch import keep_largest, merge

from conftest import free_port

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")


class Blobs(torch.nn.Module):
    """Analytic field: two balls of density 10 falling linearly to 0 at their radius; colour =
    (d + 1) / 2."""
    centres = torch.tensor([[0.1, 0.0, 0.05], [-0.6, -0.6, 0.6]])
    radii = torch.tensor([0.6, 0.2])

    def field_at(self, x, viewdirs=None):
        d = (x[:, None, :] - self.centres).norm(dim=-1) / self.radii
        sigma = (10 * torch.relu(1 - d)).amax(-1)
        return sigma, None if viewdirs is None else (viewdirs + 1) / 2


def mesh_of(block: int, rank: int = 0, world_size: int = 1, res: int = 40):
    grid = make_grid([-1] * 3, [1] * 3, resolution=res)
    o = MeshOptions(out="unused", block=block, chunk=4096)
    pieces = extract(Blobs(), grid, 5.0, o, rank, world_size, "cpu")
    return None if pieces is None else (grid, merge([p for _, p in pieces]))


def test_blocks_share_planes_and_cover_every_cell_once():
    grid = make_grid([0, 0, 0], [1, 0.5, 0.3], resolution=10)
    assert grid.shape == (11, 6, 4)
    cells = np.zeros([n - 1 for n in grid.shape], int)
    for start, stop in blocks(grid, 4):
        cells[tuple(slice(a, b - 1) for a, b in zip(start, stop))] += 1
    assert (cells == 1).all()


def test_blocks_stitch_without_seams():
    grid, whole = mesh_of(block=64)           # one block
    _, cut = mesh_of(block=7)                 # 6^3 blocks, borders through both balls
    assert len(whole.verts) == len(cut.verts) and len(whole.faces) == len(cut.faces)
    np.testing.assert_array_equal(whole.verts, cut.verts)   # the same vertex per grid edge
    np.testing.assert_array_equal(np.sort(np.sort(whole.faces, 1), 0), np.sort(np.sort(cut.faces, 1), 0))
    tm = trimesh.Trimesh(grid.to_scene(torch.from_numpy(cut.verts)).numpy(), cut.faces,
                         process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0                                        # faces wind outward
    vol = 4 / 3 * np.pi * ((0.6 / 2) ** 3 + (0.2 / 2) ** 3)     # level 5 of 10: half radius
    assert abs(tm.volume - vol) / vol < 0.1
    # normals point out of the big ball; colours are the radiance seen along -normal
    x = grid.to_scene(torch.from_numpy(cut.verts)).numpy()
    big = np.linalg.norm(x - [0.1, 0, 0.05], axis=1) < 0.45
    out = ((x[big] - [0.1, 0, 0.05]) * cut.normals[big]).sum(1)
    assert (out > 0).mean() > 0.99
    np.testing.assert_allclose(cut.colors / 255, (1 - cut.normals) / 2, atol=1 / 255 + 1e-6)


def _rank_main(rank: int, port: int, path: str) -> None:
    import os

    import torch.distributed as tdist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        res = mesh_of(block=9, rank=rank, world_size=2)
        if rank == 0:
            _, m = res
            np.savez(path, verts=m.verts, faces=m.faces, normals=m.normals, colors=m.colors)
        else:
            assert res is None
    finally:
        tdist.destroy_process_group()


def test_two_ranks_write_the_same_mesh_as_one(tmp_path):
    path = str(tmp_path / "two.npz")
    mp.start_processes(_rank_main, args=(free_port(), path), nprocs=2, start_method="spawn")
    two = np.load(path)
    _, one = mesh_of(block=9)
    np.testing.assert_array_equal(two["verts"], one.verts)
    np.testing.assert_array_equal(two["faces"], one.faces)
    np.testing.assert_array_equal(two["normals"], one.normals)
    np.testing.assert_array_equal(two["colors"], one.colors)


def test_keep_largest_component():
    _, m = mesh_of(block=16)
    kept, total = keep_largest(m, 1)
    assert total == 2
    assert 0 < len(kept.faces) < len(m.faces)
    assert kept.verts[:, 0].min() > -0.5 * 40 / 2 + 20 - 1   # grid coords: only the big ball
    assert keep_largest(m, 0)[0] is m


def test_otsu_level_separates_empty_from_solid():
    rng = np.random.default_rng(0)
    sigma = np.concatenate([np.exp(rng.normal(-6, 1, 5000)), np.exp(rng.normal(5, 0.5, 1000))])
    level = otsu_log_level(sigma)
    assert np.exp(-3) < level < np.exp(4)
    assert otsu_log_level(np.zeros(100)) is None
    assert "--level" in suggest_level(sigma)
    assert "everywhere" in suggest_level(np.zeros(10))


def test_bad_boxes_and_sizes_are_refused():
    with pytest.raises(ValueError, match="below max"):
        make_grid([0, 0, 0], [1, -1, 1], resolution=8)
    with pytest.raises(ValueError, match="exactly one"):
        make_grid([0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="beyond"):
        make_grid([0, 0, 0], [1, 1, 1], cell=1e-5)


@pytest.mark.parametrize("kind,extra", [
    ("vanilla", dict(width=32, depth=2, skip=0, n_samples=8, n_importance=8)),
    ("fast", dict(hash_levels=4, hash_log2_size=10, hidden=16, grid_res=8)),
    ("unbounded", dict(hash_levels=4, hash_log2_size=10, hidden=16)),
    ("partitioned", dict(partitions=2, hash_levels=4, hash_log2_size=10, hidden=16)),
])
def test_every_kind_answers_field_at(kind, extra):
    from dataclasses import replace

    from nerf_dist.config import Config, with_overrides
    from nerf_dist.models import build_model
    cfg = with_overrides(Config(), [f"model.kind={kind}"] + [f"model.{k}={v}" for k, v in extra.items()])
    model = build_model(replace(cfg.model), torch.tensor([[-1.0] * 3, [1.0] * 3])).eval()
    x = torch.rand(50, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    with torch.no_grad():
        s0, none = model.field_at(x)
        s1, rgb = model.field_at(x, d)
    assert none is None and s0.shape == (50,) and rgb.shape == (50, 3)
    torch.testing.assert_close(s0, s1)
    assert (s0 >= 0).all() and ((rgb >= 0) & (rgb <= 1)).all()
    box = model.surface_box(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert box.shape == (2, 3) and (box[1] > box[0]).all()
