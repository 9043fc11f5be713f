"""Tiled rank-parallel renderer: tiling, rays, equality across ranks/tiles, outputs, resume, errors,
and `nerf-dist eval` on 2 ranks.

Stated tolerance (nerf_dist/renderer/core.py): renders with any rank count and tile size agree with
the single-rank render within max |diff| <= 1e-5 (rgb, acc) and 1e-5 * far (depth) in float32.
"""
import json
import os
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, run_cli
from nerf_dist.config import load_config
from nerf_dist.models import build_model
from nerf_dist.render_ops.rays import scene_rays
from nerf_dist.renderer import (RenderSetup, frame_batches, plan_tiles, rank_loads, render_frames,
                                tile_rays)
from nerf_dist.renderer.job import _fingerprint
from nerf_dist.renderer.paths import CameraPath
from nerf_dist.renderer.tiles import Tile

TOL = 1e-5


# ----------------------------------------------------------------------------- tiling (pure)

@pytest.mark.parametrize("n,H,W,tile,ws", [(3, 32, 32, 8, 2), (2, 37, 23, 16, 3), (1, 5, 7, 64, 4),
                                           (4, 17, 9, 4, 1), (2, 8, 8, 1, 5)])
def test_plan_tiles_covers_every_pixel_once(n, H, W, tile, ws):
    plan = plan_tiles(n, H, W, tile, ws)
    assert len(plan) == ws
    count = np.zeros((n, H, W), dtype=np.int64)
    for tiles in plan:
        assert tiles == sorted(tiles)
        for t in tiles:
            assert 1 <= t.h <= tile and 1 <= t.w <= tile
            count[t.frame, t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] += 1
    assert np.all(count == 1)
    loads = rank_loads(plan)
    assert max(loads) - min(loads) <= tile * tile  # at most one tile apart


def test_plan_tiles_balances_by_cost_and_interleaves_frames():
    # frame 0 is 10x as expensive per pixel as frame 1: pixel balancing would be uneven
    cost = lambda t: t.pixels * (10.0 if t.frame == 0 else 1.0)  # noqa: E731
    plan = plan_tiles([0, 1], 32, 32, 8, 2, cost)
    loads = rank_loads(plan, cost)
    assert max(loads) - min(loads) <= 10 * 64
    # equal costs: every rank gets tiles of every frame (round-robin across the frames)
    plan = plan_tiles(4, 16, 16, 4, 4)
    for tiles in plan:
        assert {t.frame for t in tiles} == {0, 1, 2, 3}
    assert plan_tiles(4, 16, 16, 4, 4) == plan  # deterministic


def test_plan_tiles_frame_subset_and_errors():
    plan = plan_tiles([3, 7], 8, 8, 8, 3)
    assert sorted(t.frame for p in plan for t in p) == [3, 7]
    assert plan[2] == []  # more ranks than tiles: some idle, none duplicated
    with pytest.raises(ValueError):
        plan_tiles(1, 0, 8, 8, 1)
    with pytest.raises(ValueError):
        plan_tiles(1, 8, 8, 0, 1)
    with pytest.raises(ValueError):
        plan_tiles(1, 8, 8, 8, 0)


def test_frame_batches():
    assert frame_batches([0, 1, 2, 3, 4], tiles_per_frame=1, world_size=2) == [[0, 1, 2, 3], [4]]
    assert frame_batches([5, 6], tiles_per_frame=16, world_size=2) == [[5], [6]]


# ----------------------------------------------------------------------------- rays + frames

def _tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = load_config(None, TINY_MODEL)
    return build_model(cfg.model).eval()


def test_tile_rays_match_scene_rays(demo_scene):
    from nerf_dist.scenes import load_scene
    scene = load_scene(load_config(None, [f"data.root={demo_scene}"]).data, "test")
    setup = RenderSetup.from_scene(None, scene, 1024, "cpu")
    from nerf_dist.renderer.paths import split_path
    cams = split_path(scene)
    t = Tile(2, 5, 9, 7, 11)
    mine = tile_rays(setup, cams, t)
    full = scene_rays(scene, 2)
    idx = (torch.arange(5, 12)[:, None] * scene.W + torch.arange(9, 20)[None]).reshape(-1)
    for k in ("rays_o", "rays_d", "viewdirs"):
        assert torch.allclose(mine[k], full[k][idx], atol=1e-6), k
    # per-frame lens distortion travels with the split's cameras and bends the rays alike
    scene.distortion = torch.tensor([[-0.3, 0.05, 0.01, -0.005]]).repeat(scene.n, 1)
    scene.distortion[2] *= 0.5
    cams = split_path(scene)
    bent, full = tile_rays(setup, cams, t), scene_rays(scene, 2)
    for k in ("rays_o", "rays_d", "viewdirs"):
        assert torch.allclose(bent[k], full[k][idx], atol=1e-6), k
    assert float((bent["rays_d"] - mine["rays_d"]).abs().max()) > 1e-3
    scene.distortion = None
    # NDC scenes go through the same transform as training rays
    setup.ndc, setup.ndc_focal, setup.ndc_size = True, float(scene.K[0, 0, 0]), (scene.H, scene.W)
    scene.ndc, scene.ndc_focal, scene.ndc_size = True, setup.ndc_focal, setup.ndc_size
    scene.c2w[:, 2, 3] += 10.0  # keep the cameras in front of the NDC near plane
    cams = split_path(scene)
    mine, full = tile_rays(setup, cams, t), scene_rays(scene, 2)
    assert torch.allclose(mine["rays_o"], full["rays_o"][idx], atol=1e-5)
    assert torch.allclose(mine["rays_d"], full["rays_d"][idx], atol=1e-5)


@pytest.mark.slow
def test_render_frames_independent_of_tile_and_chunk(demo_scene):
    from nerf_dist.models.chunked import render_chunked
    from nerf_dist.renderer.paths import split_path
    from nerf_dist.scenes import load_scene
    scene = load_scene(load_config(None, [f"data.root={demo_scene}"]).data, "val")
    model = _tiny_model()
    cams = split_path(scene)
    # reference: the whole frame's training rays in one model call, no tiles
    whole = render_chunked(model, scene_rays(scene, 1), scene.near, scene.far, 1 << 20,
                           background=scene.background)
    ref = {"rgb": whole["rgb"].reshape(scene.H, scene.W, 3),
           "depth": whole["depth"].reshape(scene.H, scene.W),
           "acc": whole["acc"].reshape(scene.H, scene.W)}
    for tile, chunk in ((32, 4096), (7, 50), (13, 37)):
        setup = RenderSetup.from_scene(model, scene, chunk, "cpu")
        out = dict(render_frames(setup, cams, [1, 3], tile=tile, balance="pixels"))
        assert sorted(out) == [1, 3]
        for k in ("rgb", "depth", "acc"):
            diff = float((out[1][k] - ref[k]).abs().max())
            assert diff <= TOL * (scene.far if k == "depth" else 1.0), (tile, chunk, k, diff)


def test_split_rounds_keeps_order_and_balances_pixels():
    from nerf_dist.renderer.core import _split_rounds
    from nerf_dist.renderer.tiles import frame_tiles
    tiles = frame_tiles(0, 37, 23, 8) + frame_tiles(1, 37, 23, 8)
    total = sum(t.pixels for t in tiles)
    for n in (1, 2, 3, 7, len(tiles), 100):
        rounds = _split_rounds(tiles, n)
        assert len(rounds) == n and [t for r in rounds for t in r] == tiles
        for r in rounds:  # each round within one tile of an equal share
            assert abs(sum(t.pixels for t in r) - total / n) <= 64
    assert _split_rounds([], 3) == [[], [], []]


def _rounds_worker(rank, world_size, init_file, root, out):
    import torch.distributed as tdist

    from nerf_dist import memory
    from nerf_dist.renderer import core
    from nerf_dist.renderer.paths import split_path
    from nerf_dist.scenes import load_scene
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size)
    try:
        scene = load_scene(load_config(None, [f"data.root={root}"]).data, "val")
        setup = RenderSetup.from_scene(_tiny_model(), scene, 4096, "cpu")
        # NOTE: a tiny round budget: every batch is gathered in many rounds of a few tiles
        memory.ROUND_BYTES = 2000
        gathers = []
        real = core._gather_to_main
        core._gather_to_main = lambda obj, r, w: gathers.append(len(obj)) or real(obj, r, w)
        frames = dict(render_frames(setup, split_path(scene), [0, 1, 2], rank, world_size,
                                    tile=8, balance="time"))
        core._gather_to_main = real
        # one rank short of memory: every rank raises, naming it, and none waits for the other
        if rank == 1:
            memory.host_available = lambda: (1 << 20, "1.0 MiB available (MemAvailable)")
        try:
            core.check_memory(setup, 32, 32, 8, rank, world_size)
            err = ""
        except memory.MemoryBudgetError as e:
            err = str(e)
        torch.save({"frames": frames, "gathers": gathers, "err": err}, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_gather_in_bounded_rounds_and_agree_on_memory(demo_scene, tmp_path):
    import torch.multiprocessing as mp
    from nerf_dist.renderer.paths import split_path
    from nerf_dist.scenes import load_scene
    out = str(tmp_path / "out")
    mp.spawn(_rounds_worker, args=(2, str(tmp_path / "init"), str(demo_scene), out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    # 3 batches of one 32x32 frame: 32*32*20 B of tiles per batch over 2000-byte rounds
    assert len(res[0]["gathers"]) == len(res[1]["gathers"]) == 3 * 11
    assert max(res[1]["gathers"]) <= 2 and sum(res[1]["gathers"]) > 0
    assert res[1]["frames"] == {}
    scene = load_scene(load_config(None, [f"data.root={demo_scene}"]).data, "val")
    setup = RenderSetup.from_scene(_tiny_model(), scene, 4096, "cpu")
    ref = dict(render_frames(setup, split_path(scene), [0, 1, 2], tile=32))
    for f in (0, 1, 2):
        for k in ("rgb", "depth", "acc"):
            diff = float((res[0]["frames"][f][k] - ref[f][k]).abs().max())
            assert diff <= TOL * (scene.far if k == "depth" else 1.0), (f, k, diff)
    assert res[0]["err"].startswith("rank 1: ") and "1.0 MiB available (MemAvailable)" in res[0]["err"]
    assert res[1]["err"] == res[0]["err"][len("rank 1: "):]


# ----------------------------------------------------------------------------- CLI end to end

@pytest.fixture(scope="module")
def trained_run(demo_scene, tmp_path_factory):
    run = tmp_path_factory.mktemp("render") / "run"
    res = run_cli(["train", f"data.root={demo_scene}", f"run.dir={run}", "train.steps=10",
                   "train.rays_per_batch=256", "log.progress=false", "checkpoint.every=10",
                   "train.threads=1", *TINY_MODEL])
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def _render(run, out, *extra, nproc=1):
    flag = "--run-dir" if nproc > 1 else "--run"
    return run_cli(["render", flag, str(run), "--out", str(out), "--no-progress", *extra],
                   nproc=nproc)


@pytest.mark.slow
def test_render_two_ranks_equals_one_rank(trained_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    res = _render(trained_run, one, "--frames", "4", "--tile", "32", "--save-float")
    assert res.returncode == 0, res.stderr[-3000:]
    res = _render(trained_run, two, "--frames", "4", "--tile", "8", "--save-float", nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 rank(s)" in res.stdout
    meta = json.loads((one / "render.json").read_text())
    assert meta["complete"] is True and meta["settings"]["n_frames"] == 4
    for i in range(4):
        a, b = np.load(one / "float" / f"{i:05d}.npz"), np.load(two / "float" / f"{i:05d}.npz")
        assert a["rgb"].shape == (32, 32, 3)
        for k in ("rgb", "acc"):
            assert np.abs(a[k] - b[k]).max() <= TOL, (i, k)
        assert np.abs(a["depth"] - b["depth"]).max() <= TOL * meta["far"]
        for kind in ("rgb", "depth16", "acc"):
            pa, pb = (iio.imread(d / kind / f"{i:05d}.png").astype(np.int64) for d in (one, two))
            assert np.abs(pa - pb).max() <= 1, (i, kind)
        # the 16-bit depth decodes to the float depth within one step of its documented scale
        d16 = iio.imread(one / "depth16" / f"{i:05d}.png")
        assert d16.dtype == np.uint16
        assert np.abs(d16 * meta["depth16_scale"] - a["depth"]).max() <= meta["depth16_scale"]
    for d in (one, two):
        assert (d / "video.mp4").stat().st_size > 0 and (d / "video.gif").stat().st_size > 0
    assert len(iio.imread(one / "video.gif", index=None)) == 4


def test_render_resumes_after_kill(trained_run, tmp_path, monkeypatch):
    """A render interrupted after two frames continues with the rest; written frames are kept."""
    from nerf_dist.renderer import job, outputs
    out = tmp_path / "r"
    loaded = job.load_model(run_dir=str(trained_run))
    cams, setup = job.build_path(loaded, "orbit", 5, None)
    real_write, calls = outputs.FrameWriter.write, []

    def dying_write(self, frame, o):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(frame)
        real_write(self, frame, o)
    monkeypatch.setattr(outputs.FrameWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        job.render_to_dir(loaded, cams, setup, str(out), progress=False, tile=16)
    assert json.loads((out / "render.json").read_text())["complete"] is False
    assert not (out / "video.mp4").exists() and not (out / "video.gif").exists()
    assert sorted(os.listdir(out / "rgb")) == ["00000.png", "00001.png"]
    mtimes = {f: (out / "rgb" / f).stat().st_mtime_ns for f in os.listdir(out / "rgb")}
    calls.clear()
    monkeypatch.setattr(outputs.FrameWriter, "write", lambda self, f, o: (calls.append(f),
                                                                            real_write(self, f, o)))
    summary = job.render_to_dir(loaded, cams, setup, str(out), progress=False, tile=16)
    assert calls == [2, 3, 4] and summary["skipped"] == 2 and summary["rendered"] == 3
    assert {f: (out / "rgb" / f).stat().st_mtime_ns for f in mtimes} == mtimes
    assert json.loads((out / "render.json").read_text())["complete"] is True
    assert (out / "video.mp4").exists() and (out / "video.gif").exists()
    # a third run has nothing to do
    calls.clear()
    assert job.render_to_dir(loaded, cams, setup, str(out), progress=False)["rendered"] == 0
    assert calls == []


def test_render_cli_resume_and_settings_mismatch(trained_run, tmp_path):
    out = tmp_path / "o"
    assert _render(trained_run, out, "--frames", "3", "--path", "orbit").returncode == 0
    os.remove(out / "acc" / "00001.png")      # frame 1 is no longer complete
    res = _render(trained_run, out, "--frames", "3", "--path", "orbit")
    assert res.returncode == 0, res.stderr
    assert "1 frame(s) rendered, 2 already there" in res.stdout
    res = _render(trained_run, out, "--frames", "5", "--path", "orbit")
    assert res.returncode != 0 and "other settings" in res.stderr and "n_frames" in res.stderr
    assert "Traceback" not in res.stderr


def test_render_split_and_json_path_at_resolution(trained_run, demo_scene, tmp_path):
    res = _render(trained_run, tmp_path / "t", "--path", "test", "--frames", "2",
                  "--resolution", "24x16", "--no-video")
    assert res.returncode == 0, res.stderr
    assert iio.imread(tmp_path / "t" / "rgb" / "00001.png").shape == (16, 24, 3)
    assert not (tmp_path / "t" / "rgb" / "00002.png").exists()
    assert not (tmp_path / "t" / "video.mp4").exists()
    path = tmp_path / "cam.json"
    path.write_text(json.dumps({"width": 12, "height": 10, "fl_x": 20.0,
                                "frames": [{"transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0],
                                                                 [0, 0, 1, 4], [0, 0, 0, 1]]}]}))
    res = _render(trained_run, tmp_path / "j", "--path", str(path))
    assert res.returncode == 0, res.stderr
    assert iio.imread(tmp_path / "j" / "rgb" / "00000.png").shape == (10, 12, 3)


def test_render_from_checkpoint_url(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "step-00000010"
    res = run_cli(["render", "--checkpoint", str(ckpt), "--frames", "2", "--out",
                   str(tmp_path / "c"), "--no-progress", f"data.root={_data_root(trained_run)}"])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "c" / "rgb" / "00001.png").exists()


def _data_root(run):
    import yaml
    return yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]


@pytest.mark.slow
def test_eval_two_ranks_matches_one(trained_run, tmp_path):
    a, b = tmp_path / "e1", tmp_path / "e2"
    res = run_cli(["eval", "--run", str(trained_run), "--out", str(a), "--tile", "32"])
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(["eval", "--run-dir", str(trained_run), "--out", str(b), "--tile", "8"], nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("report:") == 1
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert rb["world_size"] == 2 and rb["n_images"] == len(rb["per_image"]) == 8
    for key in ("psnr", "ssim", "depth_abs_err"):
        assert rb[key] == pytest.approx(ra[key], abs=1e-4), key
    for ea, eb in zip(ra["per_image"], rb["per_image"]):
        assert eb["psnr"] == pytest.approx(ea["psnr"], abs=1e-3)
    # TensorBoard images once per eval run (rank 0 only): one event per view per run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(trained_run / "tb"), size_guidance={"images": 0})
    ea.Reload()
    assert len(ea.Images("eval_test/view_000")) == 2
    sheet = iio.imread(b / "contact_sheet.png")
    assert sheet.shape == (8 * 32, 4 * 32, 3)
    assert (b / "rgb_007.png").exists() and not list(b.glob(".*tmp*"))


def test_resume_fingerprint_sees_distortion():
    """A partial render is not resumed after the cameras' distortion alone changed."""
    K = torch.tensor([[[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]]])
    c2w = torch.eye(4)[None, :3]
    loaded = SimpleNamespace(source="/x/run", step=3)
    setup = SimpleNamespace(ndc=False)
    pinhole = _fingerprint(loaded, CameraPath(K, c2w, 24, 32, "p"), setup)
    zeros = _fingerprint(loaded, CameraPath(K, c2w, 24, 32, "p", distortion=torch.zeros(1, 4)),
                         setup)
    bent = _fingerprint(loaded, CameraPath(K, c2w, 24, 32, "p",
                                           distortion=torch.tensor([[-0.3, 0.05, 0.01, 0.0]])),
                        setup)
    assert pinhole["cameras_sha"] == zeros["cameras_sha"]  # old pinhole renders still resume
    assert bent["cameras_sha"] != pinhole["cameras_sha"]
