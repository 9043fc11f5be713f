"""nerf_dist.render_ops.volrend: weights, transmittance and compositing against hand-computed values.

(Sampling tests live in tests/test_sampling.py.)
"""
import math

import torch

from nerf_dist.render_ops import volrend


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


def test_median_depth_hand_computed():
    from nerf_dist.render_ops.volrend import median_depth
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    w = torch.tensor([[0.1, 0.3, 0.2, 0.0],    # total 0.6: half 0.3 reached at t = 2
                      [0.0, 0.0, 0.0, 0.0],    # empty ray: 0
                      [0.5, 0.0, 0.0, 0.1]])   # a far tail pulls the mean (1.5), not the median
    assert median_depth(w, t).tolist() == [2.0, 0.0, 1.0]
