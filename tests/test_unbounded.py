"""model.kind=unbounded: proposal losses against direct O(n^2) sums, the model's protocol, the
random background, appearance embeddings through checkpoints, the unbounded demo scene, 2 ranks =
1 rank, exact resume and an end-to-end run reaching a stated PSNR."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import checkpoint_params, run_cli
from test_memory import _MEASURE
from nerf_dist import memory
from nerf_dist.checkpoint import Checkpointer
from nerf_dist.config import load_config
from nerf_dist.dist import DistInfo
from nerf_dist.evaluation import render_views
from nerf_dist.metrics import psnr
from nerf_dist.models import build_model, memory_estimate
from nerf_dist.render_ops.proposal import (anneal, distortion_loss, interlevel_loss,
                                           outer_weights, resample_edges)
from nerf_dist.render_ops.contraction import s_to_t
from nerf_dist.render_ops.sampling import RowNoise
from nerf_dist.renderer.core import RenderSetup
from nerf_dist.run_dir import load_model
from nerf_dist.scenes import load_scene
from nerf_dist.scenes.demo_unbounded import ENV_RADIUS, trace, write_unbounded_scene
from nerf_dist.train import Trainer

SMALL = ["model.kind=unbounded", "model.hash_levels=8", "model.hash_log2_size=12",
         "model.hash_max_res=128", "model.hidden=32", "model.proposal_samples=32,16",
         "model.proposal_max_res=32,64", "model.proposal_log2_size=11", "model.field_samples=12",
         "model.proposal_anneal_steps=20", "model.distortion_weight=0.002"]


def _edges(g, n, k):
    return torch.sort(torch.cat([torch.zeros(n, 1), torch.rand(n, k - 1, generator=g, dtype=torch.float64),
                                 torch.ones(n, 1)], -1), -1).values


# ----------------------------------------------------------------------------- losses

def test_outer_weights_and_interlevel_loss_against_direct_sums():
    g = torch.Generator().manual_seed(0)
    n, k, m = 6, 9, 13
    e, ep = _edges(g, n, k), _edges(g, n, m)
    w = torch.rand(n, k, generator=g, dtype=torch.float64) / k
    wp = torch.rand(n, m, generator=g, dtype=torch.float64) / m
    W = torch.zeros(n, k, dtype=torch.float64)
    for r in range(n):
        for i in range(k):
            for j in range(m):
                if ep[r, j] < e[r, i + 1] and ep[r, j + 1] > e[r, i]:
                    W[r, i] += wp[r, j]
    assert torch.allclose(outer_weights(e, ep, wp), W)
    want = (torch.clamp(w - W, min=0) ** 2 / (w + 1e-7)).sum(-1)
    assert torch.allclose(interlevel_loss(e, w, ep, wp), want)
    # a proposal histogram that bounds the field's costs nothing; gradients reach only wp
    wp2 = wp.clone().requires_grad_(True)
    w2 = w.clone().requires_grad_(True)
    interlevel_loss(e, w2, ep, wp2).sum().backward()
    assert w2.grad is None and wp2.grad is not None
    same = interlevel_loss(e, w, e, w)
    assert float(same.abs().max()) < 1e-12


def test_interlevel_hand_built():
    """Field: one interval [0.4, 0.6] of weight 0.5; proposal: [0, 0.5) weight 0.1, [0.5, 1]
    weight 0.2: overlapped by both, W = 0.3 -> loss (0.5 - 0.3)^2 / 0.5 = 0.08."""
    e = torch.tensor([[0.0, 0.4, 0.6, 1.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    ep = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    wp = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    assert torch.allclose(outer_weights(e, ep, wp), torch.tensor([[0.1, 0.3, 0.2]], dtype=torch.float64))
    assert math.isclose(float(interlevel_loss(e, w, ep, wp)), 0.08, rel_tol=1e-6)


def test_distortion_loss_against_the_double_sum():
    g = torch.Generator().manual_seed(1)
    n, k = 5, 11
    e = _edges(g, n, k)
    w = torch.rand(n, k, generator=g, dtype=torch.float64) / k
    mid = 0.5 * (e[:, 1:] + e[:, :-1])
    want = torch.zeros(n, dtype=torch.float64)
    for r in range(n):
        for i in range(k):
            for j in range(k):
                want[r] += w[r, i] * w[r, j] * abs(mid[r, i] - mid[r, j])
            want[r] += w[r, i] ** 2 * (e[r, i + 1] - e[r, i]) / 3
    assert torch.allclose(distortion_loss(e, w), want)
    # hand-built: all weight in one interval of width 0.1 -> 1/3 * 1 * 0.1
    e1 = torch.tensor([[0.0, 0.5, 0.6, 1.0]])
    assert math.isclose(float(distortion_loss(e1, torch.tensor([[0.0, 1.0, 0.0]]))), 0.1 / 3,
                        rel_tol=1e-6)


def test_anneal_and_resampling():
    assert anneal(0, 100) == 0.0 and anneal(100, 100) == 1.0 and anneal(500, 100) == 1.0
    assert 0.5 < anneal(10, 100) < 1.0          # slope 10: fast at first
    e = torch.linspace(0, 1, 11)[None].repeat(2, 1)
    w = torch.zeros(2, 10)
    w[:, 3] = 1.0
    out = resample_edges(e, w, 16, train=False)
    assert out.shape == (2, 17) and bool((out[:, 1:] >= out[:, :-1]).all())
    assert out[0, 0] == 0 and out[0, -1] == 1
    inner = out[0, 1:-1]
    assert bool(((inner >= 0.3) & (inner <= 0.4)).float().mean() > 0.8)


# ----------------------------------------------------------------------------- the model

def _model(*extra, **kw):
    cfg = load_config(None, [*SMALL, *extra]).model
    torch.manual_seed(0)
    return build_model(cfg, None)


def test_forward_losses_and_random_background():
    m = _model("model.appearance_dim=4", "model.appearance_images=8")
    n = 64
    g = torch.Generator().manual_seed(0)
    o = torch.randn(n, 3, generator=g) * 0.3
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    batch = {"rgb": torch.rand(n, 3, generator=g), "alpha": torch.rand(n, generator=g),
             "image": torch.randint(0, 8, (n,), generator=g)}
    bg0 = torch.ones(3)
    m.before_step(5)
    extra, target = m.train_inputs(batch, bg0, RowNoise(7, n, torch.arange(n)))
    bg = extra["background"]
    assert bg.shape == (n, 3) and torch.equal(extra["image"], batch["image"])
    # the target is the same straight colour composited over the random colour instead of bg0
    straight_times_a = batch["rgb"] - bg0 * (1 - batch["alpha"])[:, None]
    assert torch.allclose(target, straight_times_a + bg * (1 - batch["alpha"])[:, None], atol=1e-6)
    # 2 ranks draw the same colours for their rows as 1 rank
    half = m.train_inputs({k: v[32:] for k, v in batch.items()}, bg0,
                          RowNoise(7, n, torch.arange(32, 64)))[0]["background"]
    assert torch.equal(half, bg[32:])
    out = m(o, d, d, 0.05, 2.0, train=True, generator=RowNoise(3, n, torch.arange(n)), **extra)
    assert out["rgb"].shape == (n, 3) and out["depth"].shape == (n,)
    assert out["edges"].shape == (n, 13) and len(out["proposal"]) == 2
    assert float(out["samples_per_ray"]) == 32 + 16 + 12
    terms = m.losses(out, target, 1.0 / (n * 3))
    assert set(terms) == {"rgb", "interlevel", "distortion"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.parameters())
    assert float(m.appearance.grad[batch["image"]].abs().sum()) > 0
    # the far bound is model.far_bound, not the scene's (far = 2.0 here): the field is queried
    # beyond the scene's far plane, out to (and not past) model.far_bound along every ray
    seen = []
    hook = m.field.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        ev = m(o, d, d, 0.05, 2.0)
    hook.remove()
    assert ev["rgb"].shape == (n, 3) and "edges" not in ev
    k = seen[0].shape[0] // n
    dist = (seen[0].view(n, k, 3) - o[:, None, :]).norm(dim=-1)            # [n, k]
    assert float(dist.max()) <= m.cfg.far_bound * (1 + 1e-4)
    assert float(dist.max(-1).values.min()) > 10 * 2.0, "samples stop near the scene's far plane"
    near_far = m(o, d, d, 0.05, 2.0, train=True, generator=RowNoise(3, n, torch.arange(n)))
    t_last = s_to_t(near_far["edges"][:, -1:], torch.full((n, 1), 0.05),
                    torch.full((n, 1), m.cfg.far_bound))
    torch.testing.assert_close(t_last, torch.full((n, 1), m.cfg.far_bound), rtol=1e-3, atol=0)


def test_no_random_background_keeps_the_batch():
    m = _model("model.random_background=false")
    batch = {"rgb": torch.rand(4, 3), "alpha": torch.zeros(4), "image": torch.zeros(4, dtype=torch.long)}
    extra, target = m.train_inputs(batch, torch.zeros(3), RowNoise(0, 4, torch.arange(4)))
    assert target is batch["rgb"] and torch.equal(extra["background"], torch.zeros(3))


def test_held_out_views_use_the_mean_training_embedding():
    m = _model("model.appearance_dim=3", "model.appearance_images=5")
    with torch.no_grad():
        m.appearance[1] = torch.tensor([1.0, 2.0, 3.0])
        m.appearance[3] = torch.tensor([3.0, 2.0, 1.0])
    mean = m.appearance_of(None, 2, "cpu")
    assert torch.allclose(mean, torch.tensor([[2.0, 2.0, 2.0]] * 2))
    assert torch.equal(m.appearance_of(torch.tensor([3]), 1, "cpu")[0], m.appearance[3])
    with pytest.raises(ValueError, match="appearance_images"):
        m.appearance_of(torch.tensor([5]), 1, "cpu")


def test_memory_estimate_through_the_protocol():
    cfg = load_config(None, SMALL).model
    est = memory_estimate(cfg)
    n = sum(p.numel() for p in build_model(cfg, None).parameters())
    assert est.param_bytes >= 4 * n and est.param_bytes < 4 * n * 1.2
    assert est.train_samples_per_ray == 32 + 16 + 12
    assert est.train_bytes_per_ray > 0 and est.render_bytes_per_ray > 0
    big = memory_estimate(load_config(None, [*SMALL, "model.appearance_dim=32"]).model)
    assert big.param_bytes > est.param_bytes


def test_config_validates_the_lists():
    from nerf_dist.config_check import ConfigError
    with pytest.raises(ConfigError, match="proposal_max_res"):
        load_config(None, ["model.kind=unbounded", "model.proposal_samples=64,32,16"])
    with pytest.raises(ConfigError, match="contraction"):
        load_config(None, ["model.contraction=l1"])


# ----------------------------------------------------------------------------- the scene

def test_unbounded_demo_scene(tmp_path):
    info = write_unbounded_scene(str(tmp_path / "s"), resolution=16, views=6, supersample=1)
    assert info["splits"] == {"train": 6, "val": 4, "test": 8}
    cfg = load_config(None, [f"data.root={tmp_path / 's'}", "data.format=ngp"])
    scene = load_scene(cfg.data, "train")
    assert scene.images.shape == (6, 16, 16, 3)
    heights = sorted({round(float(c), 3) for c in scene.c2w[:, 2, 3]})
    assert len(heights) == 3                                     # three camera heights
    depth = np.load(tmp_path / "s" / "train" / "r_0_depth.npy")
    assert np.isfinite(depth).all() and depth.max() > ENV_RADIUS * 0.9   # the far sphere is seen
    # depth is the distance along the pixel-centre ray: trace agrees with itself
    o = np.zeros((1, 3))
    rgb, t = trace(o, np.array([[1.0, 0.0, 0.0]]))
    assert abs(t[0] - ENV_RADIUS) < 1e-9 and rgb.shape == (1, 3)


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def unbounded_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("unbounded") / "scene"
    write_unbounded_scene(str(root), resolution=32, views=30)
    return root


def _train_args(scene, run, *extra):
    return ["train", f"data.root={scene}", "data.format=ngp", f"run.dir={run}",
            "train.rays_per_batch=256", "log.progress=false", "checkpoint.every=10",
            "train.threads=1", *SMALL, "model.appearance_dim=4", "model.appearance_images=64",
            *extra]


SAMPLERS = {"proposal": [], "occupancy": ["model.sampler=occupancy", "model.occupancy_res=16",
                                         "model.occupancy_steps=64", "model.occupancy_update_every=4"]}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_two_ranks_equal_one_and_resume_is_exact(unbounded_scene, tmp_path, sampler):
    """2 ranks = 1 rank within float rounding; a 2-rank run resumed at step 10 equals an
    uninterrupted one bit for bit; the appearance and pose tables (model.pose_refine) and the
    proposal networks (model.sampler=proposal) or the occupancy grid (model.sampler=occupancy,
    updated every 4 steps) are checkpointed."""
    def train(run, *extra, nproc=2):
        res = run_cli(_train_args(unbounded_scene, run, "model.pose_refine=true",
                                  *SAMPLERS[sampler], *extra), nproc=nproc)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res
    train(tmp_path / "full", "train.steps=20")
    train(tmp_path / "part", "train.steps=10")
    train(tmp_path / "part", "train.steps=20", "train.resume=auto")
    train(tmp_path / "one", "train.steps=20", nproc=1)
    a = checkpoint_params(str(tmp_path / "full" / "checkpoints"))
    b = checkpoint_params(str(tmp_path / "part" / "checkpoints"))
    c = checkpoint_params(str(tmp_path / "one" / "checkpoints"))
    start = checkpoint_params(str(tmp_path / "full" / "checkpoints"), 10)
    assert "appearance" in a
    assert any(k.startswith("proposals.1.") for k in a) == (sampler == "proposal")
    assert float(a["appearance"].abs().sum()) > 0 and float(a["pose.table"].abs().sum()) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if sampler == "occupancy":
        # the grid: updated after step 10 and the same on 1 and 2 ranks up to the parameters'
        # float rounding (20 steps empty no cell yet: the density EMA decays 0.95 an update)
        grid = {k: a.pop(k) for k in ("grid.aabb", "grid.density", "grid.occupied")}
        one = {k: c.pop(k) for k in grid}
        early = {k: start.pop(k) for k in grid}
        assert not torch.equal(grid["grid.density"], early["grid.density"])
        assert torch.allclose(grid["grid.density"], one["grid.density"], rtol=1e-3, atol=1e-4)
        assert float((grid["grid.occupied"] != one["grid.occupied"]).float().mean()) <= 1e-3
    # NOTE: Adam's eps of 1e-15 turns hash-table gradients near zero (float-rounding different on
    # 1 and 2 ranks, opposite signs even) into full steps of the learning rate (1e-2): a few
    # proposal-table entries differ by up to a step or two (measured 3.3e-3 on 1148 of 20480),
    # as the fast path's test allows; every other parameter agrees to float rounding.
    tables = [k for k in a if k.endswith("encoding.table")]
    diff = max(float((a[k] - c[k]).abs().max()) for k in a if k not in tables)
    table_diff = max(float((a[k] - c[k]).abs().max()) for k in tables)
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    # NOTE: 1e-4, not 1e-5: the proposal arm measures 1.62e-5 here (the same on c8f2211 with
    # this venv), float32 rounding of 1- vs 2-rank reductions over 20 Adam steps; the parameters
    # move far more (moved > 100 * diff keeps the comparison meaningful).
    assert diff <= 1e-4 and table_diff <= 2e-2 and moved > 100 * diff, (diff, table_diff, moved)


@pytest.mark.slow
def test_end_to_end_reaches_a_stated_psnr(unbounded_scene, tmp_path):
    """300 steps of 512 rays on the 32 px unbounded scene (learning rate ~1e-2 throughout),
    appearance off: held-out PSNR >= 18.5 dB over the 4 val views (measured 19.9 dB; decaying the
    rate to 1e-3 within the 300 steps gives ~15.5 dB; with model.appearance_dim=4 and the mean
    embedding for the held-out views, 17.9 dB: this scene has no exposure changes to explain)."""
    run = tmp_path / "run"
    cfg = load_config(None, _train_args(unbounded_scene, run, "train.steps=300",
                                        "train.rays_per_batch=512", "checkpoint.every=300",
                                        "eval.every=0", "train.lr_decay_steps=5000",
                                        "train.lr=0.01", "train.lr_final=0.001",
                                        "model.appearance_dim=0")[1:])
    tr = Trainer(cfg, DistInfo())
    try:
        tr.train()
    finally:
        tr.close()
    model = load_model(run_dir=str(run)).model
    val = load_scene(cfg.data, "val")
    setup = RenderSetup.from_scene(model, val, 4096, torch.device("cpu"))
    p = np.mean([psnr(out["rgb"], val.images[i]) for i, out in render_views(setup, val, [0, 1, 2, 3])])
    assert p >= 18.5, f"held-out PSNR {p:.2f} dB"


def test_appearance_embeddings_go_through_checkpoints(unbounded_scene, tmp_path):
    """A short run with appearance: the saved table has one trained row per training image, and
    the model loaded from the run folder holds exactly it."""
    run = tmp_path / "run"
    res = run_cli(_train_args(unbounded_scene, run, "train.steps=4", "checkpoint.every=4"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = Checkpointer(str(run / "checkpoints"), is_main=False).load()[1]["model"]["appearance"]
    assert table.shape == (64, 4)
    used = (table != 0).any(-1)
    assert 0 < int(used.sum()) <= 30 and not bool(used[30:].any())   # 30 training images
    model = load_model(run_dir=str(run)).model
    assert torch.equal(model.appearance.detach(), table)
    assert torch.allclose(model.appearance_of(None, 1, "cpu")[0], table[used].mean(0))


def test_inverse_depth_colours_span_near_and_far():
    from nerf_dist.renderer.images import colourise_depth, colourise_inverse_depth
    depth = torch.tensor([[0.5, 1.0, 10.0, 500.0], [0.0, 2.0, 50.0, 900.0]])
    acc = torch.ones_like(depth)
    img = colourise_inverse_depth(depth, acc)
    assert img.shape == (2, 4, 3) and torch.equal(img[1, 0], torch.zeros(3))   # no surface: black
    bright = img.sum(-1)
    assert bool(bright[0, 0] > bright[0, 1] > bright[0, 2])                     # near is brighter
    # a linear ramp to the far bound paints everything closer than ~50 nearly alike
    lin = colourise_depth(depth, 0.05, 1000.0, acc).sum(-1)
    assert float((lin[0, 0] - lin[0, 2]).abs()) < float((bright[0, 0] - bright[0, 2]).abs())


_MEM = ["model.kind=unbounded", "model.hash_log2_size=14", "model.hash_max_res=512",
        "model.proposal_samples=64,32", "model.proposal_max_res=64,128",
        "model.proposal_log2_size=14", "model.field_samples=24"]


def test_memory_estimate_bounds_the_measured_peaks():
    """As tests/test_memory.py does for the other kinds: peak RSS growth of one model call (1
    thread) <= the estimate (+ the checks' 64 MiB allowance) <= 2.5x it, inference and training.
    Measured: inference 128 MB for 1024 rays, training 53 MB for 256 rays; model.sampler=occupancy
    (64 field samples, 512 march steps): 318 MB and 76 MB."""
    occ = [*_MEM, "model.sampler=occupancy", "model.field_samples=64"]
    cases = [(False, 1024, _MEM), (True, 256, _MEM), (False, 1024, occ), (True, 256, occ)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    results = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert len(results) == len(cases), res.stdout
    for r in results:
        assert r["measured"] > 8 << 20, r
        assert r["measured"] <= r["estimate"] + memory._SLACK, r
        assert r["estimate"] <= 2.5 * r["measured"], r
