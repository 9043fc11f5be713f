import math

import torch

from nerf_dist import sampling, volrend


def test_constant_slab_transmittance():
    # density sigma over [2, 2 + d]: T = exp(-sigma * d), whatever the number of samples.
    sigma, d = 0.7, 1.5
    for n in (1, 7, 64):
        edges = torch.linspace(2.0, 2.0 + d, n + 1)[None]
        w, T, _ = volrend.render_weights(torch.full((1, n), sigma), edges[:, 1:] - edges[:, :-1])
        assert math.isclose(float(1 - w.sum()), math.exp(-sigma * d), rel_tol=1e-5)
        assert math.isclose(float(T[0, 0]), 1.0)


def test_opaque_surface_depth_and_colour():
    n = 100
    edges = torch.linspace(2.0, 6.0, n + 1)[None]
    starts, ends = edges[:, :-1], edges[:, 1:]
    sigma = torch.zeros(1, n)
    sigma[0, 40:] = 1e4                      # opaque from t = 2 + 40 * 0.04 = 3.6
    rgb = torch.zeros(1, n, 3)
    rgb[0, 40:] = torch.tensor([0.2, 0.4, 0.6])
    out = volrend.render_rays(sigma, rgb, starts, ends, background=torch.ones(3))
    t40 = float(0.5 * (starts[0, 40] + ends[0, 40]))
    assert math.isclose(float(out["depth"][0]), t40, abs_tol=1e-4)
    assert torch.allclose(out["rgb"][0], torch.tensor([0.2, 0.4, 0.6]), atol=1e-4)
    assert math.isclose(float(out["acc"][0]), 1.0, abs_tol=1e-5)


def test_weights_sum_to_opacity_and_background():
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(5, 32, generator=g) * 3
    deltas = torch.rand(5, 32, generator=g) * 0.1
    w, T, alpha = volrend.render_weights(sigma, deltas)
    acc = w.sum(-1)
    assert torch.allclose(acc, 1 - torch.exp(-(sigma * deltas).sum(-1)), atol=1e-6)
    bg = torch.tensor([1.0, 0.5, 0.0])
    rgb = torch.zeros(5, 32, 3)
    out_rgb, _, acc2 = volrend.composite(w, rgb, torch.zeros(5, 32), bg)
    assert torch.allclose(out_rgb, (1 - acc)[:, None] * bg, atol=1e-6)
    assert torch.allclose(acc2, acc)


def test_stratified_within_bins():
    g = torch.Generator().manual_seed(1)
    t, bins = sampling.stratified(4, 8, 2.0, 6.0, perturb=True, generator=g)
    assert t.shape == (4, 8) and bins.shape == (4, 9)
    assert torch.all(t >= bins[:, :-1]) and torch.all(t <= bins[:, 1:])
    t0, _ = sampling.stratified(4, 8, 2.0, 6.0, perturb=False)
    assert torch.allclose(t0[0], torch.linspace(2.25, 5.75, 8))


def test_importance_samples_concentrate_on_weights():
    bins = torch.linspace(0.0, 10.0, 11)[None]
    w = torch.zeros(1, 10)
    w[0, 3] = 1.0                              # all mass in [3, 4]
    g = torch.Generator().manual_seed(0)
    t = sampling.sample_pdf(bins, w, 256, deterministic=False, generator=g)
    frac = float(((t >= 3) & (t <= 4)).float().mean())
    assert frac > 0.95
    w2 = torch.zeros(1, 10)
    w2[0, 2], w2[0, 7] = 1.0, 3.0             # 1:3 split
    t2 = sampling.sample_pdf(bins, w2, 1000, deterministic=True)
    a = float(((t2 >= 2) & (t2 <= 3)).float().mean())
    b = float(((t2 >= 7) & (t2 <= 8)).float().mean())
    assert abs(a - 0.25) < 0.02 and abs(b - 0.75) < 0.02
    assert torch.all(t2[:, 1:] >= t2[:, :-1])


def test_intervals_cover_near_far():
    t = torch.tensor([[2.5, 3.0, 5.0]])
    s, e = sampling.intervals(t, 2.0, 6.0)
    assert torch.allclose(s, torch.tensor([[2.0, 2.75, 4.0]]))
    assert torch.allclose(e, torch.tensor([[2.75, 4.0, 6.0]]))


def test_row_noise_is_rank_independent():
    idx_all = torch.arange(10)
    a = sampling.RowNoise(5, 10, idx_all).rand(10, 4)
    b = sampling.RowNoise(5, 10, torch.tensor([1, 3, 5])).rand(3, 4)
    assert torch.equal(a[[1, 3, 5]], b)
