"""The procedural demo scene: exact geometry, determinism, and that it loads as a Blender scene;
the quick start (`nerf-dist demo`) on it, in this process."""
from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import REPO
from nerf_dist.config import DataConfig, load_config
from nerf_dist.scenes import load_scene
from nerf_dist.scenes import demo


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_trace_sphere_exact_depth():
    c, r = demo.SPHERE_A
    o = np.array([[0.0, -4.0, c[2]], [0.0, -4.0, 3.0]])
    d = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # through the centre / straight up: miss
    rgb, t = demo.trace(o, d)
    assert t[0] == pytest.approx(4.0 - r, abs=1e-12)
    assert np.isinf(t[1]) and np.all(rgb[1] == 0)
    assert np.all(rgb[0] > 0) and np.all(rgb[0] <= 1)


def test_look_at_convention():
    m = demo.look_at(0.0, 0.0)  # on +x, looking at the origin
    np.testing.assert_allclose(m[:3, 3], [4, 0, 0], atol=1e-12)
    np.testing.assert_allclose(-m[:3, 2], [-1, 0, 0], atol=1e-12)  # looks down -z
    np.testing.assert_allclose(m[:3, 1], [0, 0, 1], atol=1e-12)  # y up
    np.testing.assert_allclose(m[:3, 0], [0, 1, 0], atol=1e-12)


def test_demo_scene_deterministic_depth_and_loads(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    info = demo.write_demo_scene(a, resolution=24, views=6, seed=3)
    demo.write_demo_scene(b, resolution=24, views=6, seed=3)
    assert info["splits"] == {"train": 6, "val": 4, "test": 8}
    fa, fb = _files(a), _files(b)
    assert [p.relative_to(a) for p in fa] == [p.relative_to(b) for p in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))

    meta = json.loads((a / "transforms_train.json").read_text())
    assert meta["camera_angle_x"] == pytest.approx(0.6911, abs=1e-3)
    fr = meta["frames"][0]
    assert fr["file_path"] == "./train/r_0" and fr["depth_file"] == "./train/r_0_depth.npy"
    elev = [math.degrees(math.asin(f["transform_matrix"][2][3] / 4.0)) for f in meta["frames"]]
    assert min(elev) >= 15 - 1e-6 and max(elev) <= 60 + 1e-6

    for split in ("train", "val", "test"):
        for i in range(info["splits"][split]):
            rgba = iio.imread(a / split / f"r_{i}.png")
            depth = np.load(a / split / f"r_{i}_depth.npy")
            assert rgba.shape == (24, 24, 4) and rgba.dtype == np.uint8
            assert depth.shape == (24, 24) and depth.dtype == np.float32
            alpha = rgba[..., 3]
            assert np.all(depth[alpha == 255] > 0) and np.all(depth[alpha == 0] == 0)
            hit = depth[depth > 0]
            assert hit.size > 20 and hit.min() >= 4 - 1.3 and hit.max() <= 4 + 1.3
            assert (alpha == 0).sum() > 100  # background visible around the objects

    s = load_scene(DataConfig(root=str(a)), "test")
    assert s.n == 8 and (s.H, s.W) == (24, 24) and s.depths is not None
    assert s.depths.shape == (8, 24, 24)
    assert float(s.K[0, 0, 0]) == pytest.approx(info["focal"], rel=1e-6)
    assert float(s.images.std()) > 0.05  # not a blank image
    s2 = load_scene(DataConfig(root=str(a), downscale=2), "train")
    assert s2.depths.shape == (6, 12, 12)

    c = tmp_path / "c"
    demo.write_demo_scene(c, resolution=24, views=6, seed=4)
    assert (c / "train" / "r_0.png").read_bytes() != (a / "train" / "r_0.png").read_bytes()


# ----------------------------------------------------------------------------- the quick start

def _demo_args(scene, run, *extra):
    # configs/demo.yaml as shipped, shrunk to a few steps of small batches on the 32x32 scene
    return ["demo", "--config", REPO / "configs" / "demo.yaml", f"data.root={scene}",
            f"run.dir={run}", "train.rays_per_batch=256", "train.threads=1", "eval.every=0",
            "checkpoint.every=0", "log.progress=false", *extra]


def test_demo_yaml_stops_on_steps_with_a_generous_time_cap():
    cfg = load_config(str(REPO / "configs" / "demo.yaml"))
    # NOTE: the quick start's result must not depend on the machine's load: it stops on a step
    # count; the time cap is a safety net far beyond an idle 2-core machine's few minutes.
    assert cfg.train.steps > 0 and cfg.train.lr_decay_steps == cfg.train.steps
    assert cfg.train.max_seconds >= 1800
    assert cfg.render.frames == 30 and cfg.render.fps == 12


def test_demo_trains_evaluates_and_renders_then_resumes(cli, demo_scene, tmp_path):
    run = tmp_path / "demo_run"
    res = cli(*_demo_args(demo_scene, run, "train.steps=4", "--video-frames", "2"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "test: PSNR" in out and "(foreground" in out and "SSIM" in out, out
    assert "stopped on the time cap" not in out
    report = json.loads((run / "eval_test" / "report.json").read_text())
    assert report["step"] == 4 and "psnr_fg" in report
    video = run / "render_orbit_step4"
    assert sorted(p.name for p in (video / "rgb").iterdir()) == ["00000.png", "00001.png"]
    assert (video / "video.gif").exists()
    assert json.loads((video / "render.json").read_text())["fps"] == 12  # configs/demo.yaml
    # the run's saved config carries the render section (so `render --run-dir` repeats it)
    saved = load_config(str(run / "config.yaml"))
    assert (saved.render.frames, saved.render.fps) == (2, 12.0)
    # a second run resumes a finished run: no training, the same evaluation and video
    res = cli(*_demo_args(demo_scene, run, "train.steps=4", "--video-frames", "2"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 already there" in res.stdout


def test_demo_says_when_the_time_cap_stopped_it(cli, demo_scene, tmp_path):
    run = tmp_path / "capped"
    res = cli(*_demo_args(demo_scene, run, "train.steps=1000", "train.max_seconds=0.001",
                          "--no-video"))
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if "below what the quick start promises" in ln)
    assert line.startswith("stopped on the time cap train.max_seconds=0.001 at step ")
    assert " of 1000" in line
    assert not any(p.name.startswith("render_") for p in run.iterdir())  # --no-video
