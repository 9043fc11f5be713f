"""The city demo scene: loads as a Blender scene, exact depth, options, errors, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nerf_dist.config import DataConfig
from nerf_dist.scenes import demo, demo_city, load_scene


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city") / "scene"
    info = demo_city.write_city_scene(str(root), resolution=16, views=5, seed=1, supersample=1)
    return root, info


def test_loads_with_counts_and_resolution(city):
    root, info = city
    assert info["splits"] == {"train": 5, "val": 4, "test": 8} and info["grid"] == 5
    sc = load_scene(DataConfig(root=str(root)), "train")
    assert sc.images.shape == (5, 16, 16, 3)
    assert len(demo_city.layout(5, 1)) == 25


def test_depth_matches_a_ray_cast(city):
    root, info = city
    trace = demo_city.make_trace(5, 1)
    c2w = demo_city.camera_poses(5, 1)["train"][2]
    depth = np.load(root / "train" / "r_2_depth.npy")
    f = info["focal"]
    hits = 0
    for i, j in ((2, 3), (8, 8), (13, 5), (5, 12)):
        d = np.array([(j + 0.5 - 8) / f, -(i + 0.5 - 8) / f, -1.0]) @ c2w[:3, :3].T
        d /= np.linalg.norm(d)
        _, t = trace(c2w[None, :3, 3], d[None])
        want = t[0] if np.isfinite(t[0]) else 0.0
        assert depth[i, j] == pytest.approx(want, rel=1e-5, abs=1e-5)
        hits += want > 0
    assert hits >= 2
    # NOTE: every surface seen lies inside the Blender layout's near/far
    seen = depth[depth > 0]
    assert seen.min() > 2.0 and seen.max() < 6.0
    assert math.isclose(info["near"], 2.0) and math.isclose(info["far"], 6.0)


def test_trace_hits_ground_and_solids_exactly():
    trace = demo_city.make_trace(4, 0)
    s = demo_city.layout(4, 0)[0]
    o = np.array([[s.centre[0], s.centre[1], 3.0], [1.44, 1.44, 3.0], [3.0, 3.0, 3.0]])
    _, t = trace(o, np.array([[0.0, 0.0, -1.0]] * 3))
    assert t[0] == pytest.approx(3.0 - (demo_city.GROUND_Z + s.height), abs=1e-9)
    assert t[1] == pytest.approx(3.0 - demo_city.GROUND_Z, abs=1e-9)  # the ground near its corner
    assert np.isinf(t[2])                                              # off the ground


def test_deterministic_and_seeded(tmp_path):
    a = [demo_city.write_city_scene(str(tmp_path / n), resolution=8, views=2, seed=s,
                                    supersample=1) for n, s in (("a", 0), ("b", 0), ("c", 3))]
    assert a[0]["splits"]["train"] == 2
    img = [(tmp_path / n / "train" / "r_0.png").read_bytes() for n in "abc"]
    assert img[0] == img[1] and img[0] != img[2]
    assert demo_city.layout(5, 0) != demo_city.layout(5, 3)


@pytest.mark.parametrize("kw, needle", [({"grid": 1}, "city grid must be in 2..8"),
                                        ({"views": 0}, "views must be >= 1"),
                                        ({"supersample": 2}, "supersample must be odd")])
def test_bad_options_are_named(tmp_path, kw, needle):
    with pytest.raises(ValueError, match=needle):
        demo_city.write_city_scene(str(tmp_path / "x"), resolution=8, **kw)
    assert not (tmp_path / "x").exists()


def test_cli_variant(tmp_path):
    from nerf_dist.cli import main
    assert main(["demo-scene", str(tmp_path / "c"), "--variant", "city", "--resolution", "8",
                 "--views", "3"]) == 0
    assert len(list((tmp_path / "c" / "train").glob("r_*_depth.npy"))) == 3
    assert demo.CAMERA_ANGLE_X > 0
