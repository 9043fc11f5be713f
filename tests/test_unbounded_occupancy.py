"""model.sampler=occupancy (the unbounded kind): the contracted-space march against direct sums,
the model's losses and grid updates, a bad sampler's error, and a short run through the CLI whose
checkpoint holds the grid. 2 ranks = 1 rank: tests/test_unbounded.py (parametrised by sampler)."""
import pytest
import torch

from conftest import checkpoint_params, run_cli
from test_unbounded import SMALL, _train_args
from nerf_dist.config import load_config
from nerf_dist.config_check import ConfigError
from nerf_dist.models import build_model, memory_estimate
from nerf_dist.models.unbounded.occupancy import contracted_grid, density_per_s, march
from nerf_dist.render_ops.contraction import contract, s_to_t, t_to_s
from nerf_dist.render_ops.proposal import distortion_loss, distortion_loss_mw
from nerf_dist.render_ops.sampling import RowNoise
from nerf_dist.run_dir import load_model

OCC = ["model.sampler=occupancy", "model.occupancy_res=16", "model.occupancy_steps=64",
       "model.occupancy_update_every=4"]


def _rays(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.3
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return o, d


@pytest.mark.parametrize("order", ["inf", "2"])
def test_march_samples_only_occupied_cells_sorted_within_near_far(order):
    res, steps, k, n = 16, 256, 24, 200
    grid = contracted_grid(res, k, 16)
    g = torch.Generator().manual_seed(1)
    # a random third of the cells, and none in the far half of the cube along +x
    occ = torch.rand(res ** 3, generator=g) < 0.33
    occ.view(res, res, res)[res // 2:] = False
    grid.occupied.copy_(occ)
    o, d = _rays(n)
    near, far = torch.full((n, 1), 0.05), torch.full((n, 1), 1000.0)
    for train in (False, True):
        smp = march(grid, order, o, d, near, far, steps, k, train, RowNoise(5, n, torch.arange(n)))
        s, t, delta, width = smp["s"], smp["t"], smp["delta"], smp["width"]
        assert s.shape == t.shape == delta.shape == width.shape == (n, k)
        assert bool((s[:, 1:] >= s[:, :-1]).all()) and bool((t[:, 1:] >= t[:, :-1]).all())
        assert bool((t >= near).all()) and bool((t <= far).all()) and bool((delta >= 0).all())
        live = delta > 0
        inside = grid.query(contract(o[:, None] + d[:, None] * t[..., None], order).reshape(-1, 3))
        assert bool(inside.view(n, k)[live].all())                 # every live sample: occupied
        # the deltas add up to the occupied scene length of the march (a direct sum)
        if not train:
            edges = torch.linspace(0, 1, steps + 1).expand(n, -1)
            te = s_to_t(edges, near, far)
            tm = s_to_t(0.5 * (edges[:, 1:] + edges[:, :-1]), near, far)
            q = grid.query(contract(o[:, None] + d[:, None] * tm[..., None], order).reshape(-1, 3))
            direct = ((te[:, 1:] - te[:, :-1]) * q.view(n, steps)).sum(-1)
            assert torch.allclose(delta.sum(-1), direct, rtol=1e-4, atol=1e-4)
            assert bool((direct == 0).any()) and bool((direct > 0).any())
            # the widths (s) add up to the occupied s-length, k equal parts
            occ_s = (q.view(n, steps).float() / steps).sum(-1, keepdim=True)
            assert torch.allclose(width, (occ_s / k).expand(n, k), atol=1e-6)
    # every cell occupied: the samples are the uniform s-space march, the deltas tile [near, far]
    grid.occupied.fill_(1)
    smp = march(grid, order, o, d, near, far, steps, k, False)
    assert torch.allclose(smp["delta"].sum(-1), (far - near)[:, 0], rtol=1e-4)
    # no cell occupied: zero lengths (the rays show the background)
    grid.occupied.zero_()
    assert float(march(grid, order, o, d, near, far, steps, k, False)["delta"].abs().sum()) == 0


@pytest.mark.parametrize("far_bound", [2.0, 1000.0])
def test_density_per_s_is_sigma_times_dt_ds(far_bound):
    # Rays from the scene centre (near = 0): the density per unit of s is sigma * dt/ds, dt/ds
    # taken here by finite differences of s_to_t (the march's own mapping). far_bound = 2 tells a
    # product from a quotient by (g(far) - g(0)) = 0.75.
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.3, -0.2]], dtype=torch.float64), dim=-1)
    t = torch.tensor([0.3, 0.8, 1.5, 1.9], dtype=torch.float64)[:, None]
    near, far = torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), far_bound,
                                                                   dtype=torch.float64)
    s = t_to_s(t.T, near, far).T
    h = 1e-6
    dt_ds = (s_to_t(s.T + h, near, far) - s_to_t(s.T - h, near, far)).T / (2 * h)
    y = contract((t * d).float(), "2")
    got = density_per_s(lambda u: torch.full(u.shape[:1], 3.0), y, "2", far_bound)
    torch.testing.assert_close(got.double(), 3.0 * dt_ds[:, 0], rtol=1e-3, atol=1e-4)


def test_distortion_loss_mw_matches_the_edges_form():
    g = torch.Generator().manual_seed(0)
    e = torch.sort(torch.rand(5, 9, generator=g, dtype=torch.float64), -1).values
    w = torch.rand(5, 8, generator=g, dtype=torch.float64)
    mid = 0.5 * (e[:, 1:] + e[:, :-1])
    assert torch.allclose(distortion_loss(e, w), distortion_loss_mw(mid, e[:, 1:] - e[:, :-1], w))


def test_model_losses_grid_updates_and_memory():
    cfg = load_config(None, [*SMALL, *OCC]).model
    torch.manual_seed(0)
    m = build_model(cfg, None)
    assert len(m.proposals) == 0 and m.grid is not None
    assert not any("proposal" in k for k in m.state_dict())
    assert {"grid.density", "grid.occupied"} <= set(m.state_dict())
    # updates on update steps only, deterministic in (params, step, generator)
    assert not m.before_step(3, torch.Generator().manual_seed(1))
    assert float(m.grid.density.abs().sum()) == 0
    assert m.before_step(4, torch.Generator().manual_seed(1))
    twin = build_model(cfg, None)
    twin.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("grid.")},
                         strict=False)
    twin.before_step(4, torch.Generator().manual_seed(1))
    assert torch.equal(twin.grid.density, m.grid.density)
    assert float(m.grid.density.min()) > 0 and "occupied_frac" in m.log_scalars()
    # a fresh field keeps the near field (contracted |y| < 1, where the objects are) occupied
    centre = (m.grid.cells.float() + 0.5) * (4.0 / 16) - 2.0
    near = centre.abs().amax(-1) < 1.0
    assert bool(m.grid.occupied[near].bool().all())
    n = 64
    o, d = _rays(n)
    out = m(o, d, d, 0.05, 2.0, train=True, generator=RowNoise(3, n, torch.arange(n)),
            background=torch.rand(n, 3))
    assert out["weights"].shape == (n, 12) and float(out["samples_per_ray"]) == 12
    terms = m.losses(out, torch.rand(n, 3), 1.0 / (n * 3))
    assert set(terms) == {"rgb", "distortion"}                    # no interlevel loss
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.parameters())
    est = memory_estimate(cfg)
    prop = memory_estimate(load_config(None, SMALL).model)
    assert est.train_samples_per_ray == 12 and est.train_bytes_per_ray > 128 * 64
    assert est.param_bytes < prop.param_bytes                       # no proposal networks


def test_bad_sampler_is_a_clear_error():
    with pytest.raises(ConfigError, match="model.sampler.*proposal\\|occupancy.*'nerfacc'"):
        load_config(None, ["model.kind=unbounded", "model.sampler=nerfacc"])
    with pytest.raises(ConfigError, match="model.occupancy_steps"):
        load_config(None, ["model.kind=unbounded", "model.occupancy_steps=0"])


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    from nerf_dist.scenes.demo_unbounded import write_unbounded_scene
    root = tmp_path_factory.mktemp("unbounded_occ") / "scene"
    write_unbounded_scene(str(root), resolution=16, views=8, supersample=1)
    return root


def test_a_short_run_checkpoints_the_grid(tiny_scene, tmp_path):
    run = tmp_path / "run"
    res = run_cli(_train_args(tiny_scene, run, *OCC, "train.steps=6", "checkpoint.every=6",
                              "train.rays_per_batch=128", "eval.every=0"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    saved = checkpoint_params(str(run / "checkpoints"))
    assert not any(k.startswith("proposals.") for k in saved)
    assert float(saved["grid.density"].abs().sum()) > 0            # updated at steps 0 and 4
    model = load_model(run_dir=str(run)).model
    assert torch.equal(model.grid.density, saved["grid.density"])
    assert torch.equal(model.grid.occupied, saved["grid.occupied"])
