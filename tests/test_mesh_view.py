"""bench/mesh_view.py's rasteriser: a unit cube seen down -z from distance 3 (hand-computed
silhouette and depth)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import trimesh

_SPEC = importlib.util.spec_from_file_location(
    "mesh_view", Path(__file__).resolve().parent.parent / "bench" / "mesh_view.py")
mesh_view = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mesh_view)

H = W = 64
F = 64.0                                   # focal in pixels: the 1-unit face at 2.5 is 25.6 px
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])
C2W = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]])   # at z = 3, looking down -z


def _cube(color=(255, 0, 0)):
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    colors = np.tile(np.array(color, np.uint8), (len(box.vertices), 1))
    return np.asarray(box.vertices), np.asarray(box.faces), colors, np.asarray(box.vertex_normals)


def test_cube_silhouette_depth_and_colour():
    v, f, c, n = _cube()
    rgb, depth, mask = mesh_view.rasterize(v, f, c, n, K, C2W, H, W)
    side = F * 1.0 / 2.5                   # the front face z = 0.5 lies 2.5 from the camera
    assert abs(mask.sum() - side ** 2) < 0.1 * side ** 2
    ys, xs = np.nonzero(mask)              # the square is centred on the image
    assert abs(xs.mean() + 0.5 - W / 2) < 0.5 and abs(ys.mean() + 0.5 - H / 2) < 0.5
    assert abs(depth[H // 2, W // 2] - 2.5) < 0.02
    assert np.isinf(depth[~mask]).all() and (rgb[~mask] == 1.0).all()
    r, g, b = rgb[H // 2, W // 2]
    assert r > 0.9 and g < 0.05 and b < 0.05   # red, facing the headlight: shade 1


def test_cube_normals_default_and_no_colours():
    v, f, _, _ = _cube()
    rgb, _, mask = mesh_view.rasterize(v, f, None, None, K, C2W, H, W)
    assert np.allclose(rgb[H // 2, W // 2], 0.8, atol=0.01)   # grey, facing the headlight
    assert mask.sum() > 0


def test_camera_convention_up_is_up():
    # NOTE: a camera y up / image rows down check: a box moved up (+y) shows in the top rows.
    v, f, c, n = _cube()
    _, _, mask = mesh_view.rasterize(v * 0.2 + [0.0, 0.5, 0.0], f, c, n, K, C2W, H, W)
    ys, xs = np.nonzero(mask)
    assert ys.mean() < H / 2 - 5 and abs(xs.mean() + 0.5 - W / 2) < 0.5


def test_batches_do_not_change_the_image(monkeypatch):
    v, f, c, n = _cube()
    whole = mesh_view.rasterize(v, f, c, n, K, C2W, H, W)
    monkeypatch.setattr(mesh_view, "BUDGET", 100)   # a few triangles per batch
    parts = mesh_view.rasterize(v, f, c, n, K, C2W, H, W)
    for a, b in zip(whole, parts):
        assert np.array_equal(a, b)
