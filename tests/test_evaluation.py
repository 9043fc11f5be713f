"""Evaluation: one render path for `nerf-dist eval` and in-training validation, lens distortion
included, and the foreground-only PSNR of report.json.

The scene is written by the test in instant-ngp format (transforms.json with k1 k2 p1 p2) and its
images are rendered from an analytic scene: a soft sphere whose colour varies fast with the
viewing direction, in front of a faint sky. The model under evaluation IS that scene, so a correct
render path reproduces the photos up to 8-bit quantisation; a pinhole path does not.
"""
import json
import math
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_MODEL, free_port
from nerf_dist.config import load_config
from nerf_dist.evaluation import (evaluate_split, foreground_mask, ground_truth, psnr_fg,
                                  render_views, render_with_truth)
from nerf_dist.metrics import psnr
from nerf_dist.renderer.core import RenderSetup
from nerf_dist.renderer.paths import split_path
from nerf_dist.scenes import images as scene_images
from nerf_dist.scenes import lazy, load_scene, open_scene

W, H, FOCAL = 32, 24, 28.0
DIST = (-0.3, 0.05, 0.01, -0.005)          # k1 k2 p1 p2 (top level of transforms.json)
DIST_FRAME2 = (-0.2, 0.05, 0.01, -0.005)   # frame 2 overrides k1
N_FRAMES, HOLD = 8, 2                      # frames 0, 2, 4, 6 held out (val = test)
AWAY = 4                                   # this held-out camera looks away from the sphere
R_IN, R_OUT = 0.40, 0.50                   # the sphere's opaque core and soft edge


def scene_colour(o: torch.Tensor, d: torch.Tensor, background: torch.Tensor) -> dict:
    """The analytic scene, float64: rays o, d [n, 3] (d unit) -> rgb [n, 3], depth, acc [n].

    acc falls smoothly from 1 to 0 as the ray's closest approach to the origin goes from R_IN to
    R_OUT (smooth everywhere: tiny ray differences make tiny colour differences). The sky is
    within 0.01 of the background (not foreground) but not equal to it (finite PSNR).
    """
    o, d, bg = o.double(), d.double(), background.double()
    t = (-(o * d).sum(-1)).clamp(min=0)
    miss = (o + t[:, None] * d).norm(dim=-1)
    acc = ((R_OUT - miss) / (R_OUT - R_IN)).clamp(0, 1)
    acc = acc * acc * (3 - 2 * acc)
    phase = torch.tensor([0.0, 2.1, 4.2], dtype=torch.float64)
    fg = 0.5 + 0.4 * torch.sin(12.0 * d + phase)
    sky = bg - 0.01 * (0.5 + 0.5 * torch.sin(5.0 * d[:, :1]))
    return {"rgb": acc[:, None] * fg + (1 - acc[:, None]) * sky, "depth": acc * t, "acc": acc}


class AnalyticModel(nn.Module):
    """A model (interface of nerf_dist.models.base.NeRFModel) that is the analytic scene."""

    def __init__(self):
        super().__init__()
        self.cfg = load_config(None, TINY_MODEL).model   # only for the renderer's memory estimate
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, rays_o, rays_d, viewdirs, near, far, *, train=False, generator=None,
                background=None):
        bg = background if background is not None else torch.ones(3)
        out = {k: v.float() for k, v in scene_colour(rays_o, viewdirs, bg.cpu()).items()}
        out["samples_per_ray"] = torch.tensor(1.0)
        return out


def _undistort_newton(xd: float, yd: float, k1, k2, p1, p2) -> tuple[float, float]:
    """Invert the OpenCV model by Newton's method in float64 (independent of nerf_dist.render_ops.rays)."""
    x, y = xd, yd
    for _ in range(50):
        r2 = x * x + y * y
        rad = 1 + k1 * r2 + k2 * r2 * r2
        fx = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        drad = 2 * k1 + 4 * k2 * r2          # d rad / d r2, times 1/2 d r2/dx = x
        J = np.array([[rad + x * drad * x + 2 * p1 * y + 6 * p2 * x, x * drad * y + 2 * p1 * x + 2 * p2 * y],
                      [y * drad * x + 2 * p1 * x + 2 * p2 * y, rad + y * drad * y + 6 * p1 * y + 2 * p2 * x]])
        step = np.linalg.solve(J, [fx, fy])
        x, y = x - step[0], y - step[1]
        if abs(step).max() < 1e-15:
            break
    return x, y


def _look_at(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = pos - target
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.concatenate([np.stack([x, np.cross(z, x), z, pos], 1), [[0, 0, 0, 1]]])


def _c2w(i: int) -> np.ndarray:
    a = 2 * math.pi * i / N_FRAMES
    pos = np.array([math.cos(a), 0.0, math.sin(a)])   # a ring of radius 1 about the origin
    return _look_at(pos, 2 * pos if i == AWAY else np.zeros(3))


def _photo(c2w: np.ndarray, dist) -> np.ndarray:
    """[H, W, 3] uint8: what a camera with this lens sees of the analytic scene."""
    dirs = []
    for v in range(H):
        for u in range(W):
            x, y = _undistort_newton((u + 0.5 - W / 2) / FOCAL, (v + 0.5 - H / 2) / FOCAL, *dist)
            dirs.append(c2w[:3, :3] @ np.array([x, -y, -1.0]))
    d = torch.from_numpy(np.array(dirs))
    d = d / d.norm(dim=-1, keepdim=True)
    o = torch.from_numpy(c2w[:3, 3]).expand_as(d)
    rgb = scene_colour(o, d, torch.ones(3))["rgb"].reshape(H, W, 3).numpy()
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def distorted_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("distorted")
    (root / "images").mkdir()
    frames = []
    for i in range(N_FRAMES):
        c2w = _c2w(i)
        dist = DIST_FRAME2 if i == 2 else DIST
        iio.imwrite(root / "images" / f"{i:02d}.png", _photo(c2w, dist))
        fr = {"file_path": f"images/{i:02d}.png", "transform_matrix": c2w.tolist()}
        if i == 2:
            fr["k1"] = DIST_FRAME2[0]
        frames.append(fr)
    (root / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV", "w": W, "h": H, "fl_x": FOCAL, "fl_y": FOCAL,
        "k1": DIST[0], "k2": DIST[1], "p1": DIST[2], "p2": DIST[3], "frames": frames}))
    return root


def _data(root):
    return load_config(None, [f"data.root={root}", f"data.llff_hold={HOLD}"]).data


def test_psnr_fg_by_hand():
    bg = torch.ones(3)
    gt = torch.ones(2, 2, 3)
    gt[0, 0] = 0.5
    gt[1, 1] = 1.0 - 0.01                      # below the threshold: background
    pred = gt.clone()
    pred[0, 0] = 0.4
    assert foreground_mask(gt, bg).tolist() == [[True, False], [False, False]]
    assert psnr_fg(pred, gt, bg) == pytest.approx(20.0)           # mse 0.01 over the one pixel
    assert psnr(pred, gt) == pytest.approx(20.0 + 10 * math.log10(4))
    assert psnr_fg(pred, torch.ones(2, 2, 3), bg) is None          # no foreground


def test_eval_undoes_lens_distortion_and_equals_validation(distorted_scene, tmp_path):
    from nerf_dist.dist import DistInfo
    from nerf_dist.train import Trainer
    scene = load_scene(_data(distorted_scene), "test")
    assert scene.n == 4 and scene.meta["scale"] == pytest.approx(1.0)
    assert scene.distortion[1].tolist() == pytest.approx(list(DIST_FRAME2))
    model = AnalyticModel()

    # `nerf-dist eval`'s code path
    rep = evaluate_split(model, scene, str(tmp_path / "eval"), 1000, "cpu", tile=16,
                         log=lambda *_: None)
    on_disk = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert on_disk["psnr"] == pytest.approx(rep["psnr"]) and "psnr_fg" in on_disk

    # the old path: the same cameras as pinholes
    setup = RenderSetup.from_scene(model, scene, 1000, "cpu")
    cams = split_path(scene)
    cams.distortion = None
    from nerf_dist.renderer.core import render_frames
    pinhole = [psnr(out["rgb"].clamp(0, 1), scene.images[i])
               for i, out in render_frames(setup, cams, range(scene.n))]
    view_psnr = [e["psnr"] for e in rep["per_image"]]
    print(f"distorted scene, {scene.n} test views {W}x{H}: eval PSNR {rep['psnr']:.2f} dB "
          f"(per view {[round(p, 2) for p in view_psnr]}), foreground {rep['psnr_fg']:.2f} dB; "
          f"pinhole render PSNR {np.mean(pinhole):.2f} dB (per view "
          f"{[round(p, 2) for p in pinhole]})")
    for i, e in enumerate(rep["per_image"]):
        if i != AWAY // HOLD:   # the view of the sky alone is the same either way
            assert e["psnr"] > 40.0 and e["psnr_fg"] > 40.0, e
            assert pinhole[i] < 25.0, (i, pinhole[i])

    # foreground PSNR: the sky-only view has no foreground and is left out of the mean
    away = rep["per_image"][AWAY // HOLD]
    assert away["psnr_fg"] is None and rep["psnr_fg_views"] == 3
    fgs = [e["psnr_fg"] for e in rep["per_image"] if e["psnr_fg"] is not None]
    assert rep["psnr_fg"] == pytest.approx(float(np.mean(fgs)))

    # in-training validation (one process here) gives the same numbers on the same views
    cfg = load_config(None, [f"data.root={distorted_scene}", f"data.llff_hold={HOLD}",
                             f"run.dir={tmp_path / 'run'}", "eval.split=test",
                             f"eval.n_images={scene.n}", "log.progress=false",
                             "checkpoint.every=0", *TINY_MODEL])
    trainer = Trainer(cfg, DistInfo(device=torch.device("cpu")))
    try:
        trainer.model = model
        logged = {}
        trainer.log.scalars = lambda step, values: logged.update(values)
        val = trainer.evaluate_val()
    finally:
        trainer.close()
    print(f"validation PSNR {val:.6f} dB vs eval {rep['psnr']:.6f} dB: "
          f"difference {abs(val - rep['psnr']):.2e} dB")
    assert val == pytest.approx(rep["psnr"], abs=1e-4)
    assert logged["eval/psnr"] == val
    assert logged["eval/psnr_fg"] == pytest.approx(rep["psnr_fg"], abs=1e-4)
    assert model.training   # validation hands the model back in training mode


def test_render_views_equal_across_tiles(distorted_scene):
    scene = load_scene(_data(distorted_scene), "val")
    setup = RenderSetup.from_scene(AnalyticModel(), scene, 64, "cpu")
    a = dict(render_views(setup, scene, [0, 1], tile=7))
    b = dict(render_views(setup, scene, [0, 1], tile=64))
    for i in (0, 1):
        assert float((a[i]["rgb"] - b[i]["rgb"]).abs().max()) <= 1e-6
        assert float(a[i]["rgb"].min()) >= 0 and float(a[i]["rgb"].max()) <= 1
    assert os.path.basename(scene.files[0]) == "00.png"


# ----------------------------------------------------------------------------- decoding only what is scored

def _count_decodes(monkeypatch) -> list[str]:
    """Every image decode of this process, through either decoder entry point, in a list."""
    decoded: list[str] = []
    for mod in (lazy, scene_images):
        real = mod.read_image
        monkeypatch.setattr(mod, "read_image", lambda p, real=real: decoded.append(p) or real(p))
    return decoded


def test_eval_of_a_lazy_scene_decodes_each_view_once_and_equals_the_loaded_scene(
        distorted_scene, tmp_path, monkeypatch):
    data = _data(distorted_scene)
    full = load_scene(data, "test")
    ref = evaluate_split(AnalyticModel(), full, str(tmp_path / "a"), 1000, "cpu", tile=16,
                         log=lambda *_: None)
    decoded = _count_decodes(monkeypatch)
    scene = open_scene(data, "test")
    assert decoded == []                       # the cameras and the size come without decoding
    rep = evaluate_split(AnalyticModel(), scene, str(tmp_path / "b"), 1000, "cpu", tile=16,
                         log=lambda *_: None)
    print(f"lazy eval of {scene.n} views: {len(decoded)} decodes")
    assert sorted(decoded) == sorted(scene.files)          # each view once, when it is scored
    assert [e["psnr"] for e in rep["per_image"]] == [e["psnr"] for e in ref["per_image"]]
    assert rep["psnr_fg"] == ref["psnr_fg"] and rep["ssim"] == ref["ssim"]


def test_ground_truth_of_a_lazy_scene_equals_the_loaded_one(demo_scene):
    data = load_config(None, [f"data.root={demo_scene}", "data.downscale=2"]).data
    full, scene = load_scene(data, "val"), open_scene(data, "val")
    for i in (0, scene.n - 1):
        rgb, depth = ground_truth(scene, i)
        assert torch.equal(rgb, full.images[i]) and torch.equal(depth, full.depths[i])
        assert ground_truth(full, i)[0] is not None
    setup = RenderSetup.from_scene(AnalyticModel(), scene, 256, "cpu")
    assert torch.equal(setup.background, full.background)
    got = [(i, gt.shape) for i, _, gt, _ in render_with_truth(setup, scene, [1, 0], tile=16)]
    assert got == [(1, (scene.H, scene.W, 3)), (0, (scene.H, scene.W, 3))]


def _decode_worker(rank, world_size, port, run, out):
    """One rank of `nerf-dist eval` (commands.eval_run): count its decodes."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from nerf_dist import commands
    from nerf_dist.run_dir import load_model
    decoded = _count_decodes(pytest.MonkeyPatch())
    loaded = load_model(run_dir=run, overrides=[f"run.dir={run}", "render.tile=8",
                                                "dist.timeout_s=60"])
    rep = commands.eval_run(loaded, run, out=f"{out}/eval")
    with open(f"{out}/counts.{rank}.json", "w") as f:
        json.dump({"decoded": len(decoded), "n_eval": (rep or {}).get("n_images")}, f)


@pytest.mark.slow
def test_two_rank_eval_decodes_only_on_the_rank_that_scores(tiny_run, tmp_path):
    """`eval` on 2 ranks: rank 0 decodes each test view once, as it scores it; rank 1 none."""
    import shutil

    import torch.multiprocessing as mp
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    mp.spawn(_decode_worker, args=(2, free_port(), str(run), str(tmp_path)), nprocs=2)
    res = [json.loads((tmp_path / f"counts.{r}.json").read_text()) for r in range(2)]
    n = res[0]["n_eval"]
    print(f"2-rank eval of {n} test views: decodes per rank {[r['decoded'] for r in res]}")
    assert n == 8 and [r["decoded"] for r in res] == [n, 0]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["world_size"] == 2


def test_render_of_a_split_or_orbit_decodes_no_image(tiny_run, monkeypatch):
    """`nerf-dist render`'s camera paths come from the scene's cameras, never its pixels."""
    from nerf_dist.renderer import job
    loaded = job.load_model(run_dir=str(tiny_run))
    decoded = _count_decodes(monkeypatch)
    for path in ("test", "orbit"):
        cams, setup = job.build_path(loaded, path, 2, None)
        assert cams.n == 2 and setup.background.shape == (3,)
    assert decoded == []
