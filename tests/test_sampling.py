"""nerf_dist.render_ops.sampling: stratified samples, inverse-CDF (importance) samples, intervals, RowNoise."""
import numpy as np
import pytest
import torch

from nerf_dist.render_ops import sampling


# ----------------------------------------------------------------------------- stratified

def test_stratified_bins_cover_near_far_in_equal_steps():
    near = torch.tensor([2.0, 0.5, 1.0])
    far = torch.tensor([6.0, 1.5, 9.0])
    t, bins = sampling.stratified(3, 8, near, far, perturb=False)
    assert t.shape == (3, 8) and bins.shape == (3, 9)
    torch.testing.assert_close(bins[:, 0], near)
    torch.testing.assert_close(bins[:, -1], far)
    widths = bins[:, 1:] - bins[:, :-1]
    torch.testing.assert_close(widths, ((far - near) / 8)[:, None].expand(3, 8))
    # without perturbation each sample sits at its bin's centre
    torch.testing.assert_close(t, 0.5 * (bins[:, :-1] + bins[:, 1:]))
    torch.testing.assert_close(t[0], torch.linspace(2.25, 5.75, 8))


def test_stratified_scalar_bounds_broadcast_to_every_ray():
    t, bins = sampling.stratified(5, 4, 2.0, 6.0, perturb=False)
    assert bins.shape == (5, 5) and bool((bins == torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0])).all())


def test_stratified_perturbed_samples_stay_inside_their_bins():
    g = torch.Generator().manual_seed(1)
    t, bins = sampling.stratified(64, 8, 2.0, 6.0, perturb=True, generator=g)
    assert t.shape == (64, 8) and bins.shape == (64, 9)
    assert torch.all(t >= bins[:, :-1]) and torch.all(t <= bins[:, 1:])
    centres = 0.5 * (bins[:, :-1] + bins[:, 1:])
    assert not torch.allclose(t, centres)             # really jittered ...
    frac = (t - bins[:, :-1]) / (bins[:, 1:] - bins[:, :-1])
    assert 0.4 < float(frac.mean()) < 0.6             # ... uniformly within the bin (512 draws)
    assert float(frac.min()) < 0.1 and float(frac.max()) > 0.9


def test_stratified_is_deterministic_given_a_generator():
    a, _ = sampling.stratified(16, 8, 2.0, 6.0, True, generator=torch.Generator().manual_seed(3))
    b, _ = sampling.stratified(16, 8, 2.0, 6.0, True, generator=torch.Generator().manual_seed(3))
    c, _ = sampling.stratified(16, 8, 2.0, 6.0, True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generator_draws_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(0)
    sampling.stratified(8, 8, 2.0, 6.0, True, generator=g)
    sampling.sample_pdf(torch.linspace(0, 1, 9)[None].expand(8, 9), torch.rand(8, 8, generator=g),
                        16, deterministic=False, generator=g)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- sample_pdf

def test_sample_pdf_deterministic_matches_hand_computed_inverse_cdf():
    # bins [0, 1, 2, 3, 4], weights 1 : 0 : 2 : 0 -> cdf at the edges [0, 1/3, 1/3, 1, 1].
    # deterministic u = [0, 1/4, 1/2, 3/4, 1]; t = bin start + (u - cdf start) / bin mass:
    #   u=0    -> 0
    #   u=1/4  -> 0 + (1/4) / (1/3)             = 0.75
    #   u=1/2  -> 2 + (1/2 - 1/3) / (2/3)       = 2.25
    #   u=3/4  -> 2 + (3/4 - 1/3) / (2/3)       = 2.625
    #   u=1    -> the last edge, 4 (the eps-weighted empty bin [3, 4] ends there)
    bins = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    t = sampling.sample_pdf(bins, w, 5, deterministic=True)
    torch.testing.assert_close(t, torch.tensor([[0.0, 0.75, 2.25, 2.625, 4.0]]),
                               atol=1e-3, rtol=0)   # eps=1e-5 per bin shifts these by ~1e-5


def test_sample_pdf_random_equals_reference_inverse_cdf():
    """With a generator, t = F^-1(u) for the generator's u: the inverse of a piecewise-constant
    pdf's CDF is the piecewise-linear interpolation of (cdf, bin edges)."""
    g = torch.Generator().manual_seed(7)
    bins = torch.sort(torch.rand(3, 9, generator=g) * 4 + 2, -1).values
    w = torch.rand(3, 8, generator=g) * (torch.rand(3, 8, generator=g) > 0.3)
    t = sampling.sample_pdf(bins, w, 32, deterministic=False,
                            generator=torch.Generator().manual_seed(11))
    u = torch.rand(3, 32, generator=torch.Generator().manual_seed(11)).numpy()  # the same draw
    we = w.numpy().astype(np.float64) + 1e-5                      # sample_pdf's eps
    cdf = np.concatenate([np.zeros((3, 1)), np.cumsum(we / we.sum(-1, keepdims=True), -1)], -1)
    ref = np.sort(np.stack([np.interp(u[i], cdf[i], bins[i].numpy()) for i in range(3)]), -1)
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-4)


def test_sample_pdf_is_deterministic_given_a_generator_and_ignores_it_when_deterministic():
    bins = torch.linspace(2.0, 6.0, 17)[None].expand(4, 17)
    w = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    run = lambda det, seed: sampling.sample_pdf(  # noqa: E731
        bins, w, 24, deterministic=det, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(False, 1), run(False, 1))
    assert not torch.equal(run(False, 1), run(False, 2))
    assert torch.equal(run(True, 1), run(True, 2))
    assert torch.equal(run(True, 1), sampling.sample_pdf(bins, w, 24, deterministic=True))


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


@pytest.mark.parametrize("deterministic", [True, False])
def test_sample_pdf_sorted_inside_bins_and_no_gradient_to_weights(deterministic):
    bins = torch.linspace(2.0, 6.0, 9)[None].expand(5, 9)
    w = torch.rand(5, 8, generator=torch.Generator().manual_seed(2)).requires_grad_()
    t = sampling.sample_pdf(bins, w, 33, deterministic=deterministic,
                            generator=torch.Generator().manual_seed(5))
    assert t.shape == (5, 33) and not t.requires_grad   # the coarse weights are detached
    assert torch.all(t[:, 1:] >= t[:, :-1])
    assert torch.all(t >= 2.0) and torch.all(t <= 6.0)


# ----------------------------------------------------------------------------- intervals

def test_intervals_cover_near_far():
    t = torch.tensor([[2.5, 3.0, 5.0]])
    s, e = sampling.intervals(t, 2.0, 6.0)
    assert torch.allclose(s, torch.tensor([[2.0, 2.75, 4.0]]))
    assert torch.allclose(e, torch.tensor([[2.75, 4.0, 6.0]]))


# ----------------------------------------------------------------------------- RowNoise

def test_row_noise_is_rank_independent():
    idx_all = torch.arange(10)
    a = sampling.RowNoise(5, 10, idx_all).rand(10, 4)
    b = sampling.RowNoise(5, 10, torch.tensor([1, 3, 5])).rand(3, 4)
    assert torch.equal(a[[1, 3, 5]], b)


def test_stratified_with_row_noise_jitters_each_ray_as_on_one_rank():
    one_rank, _ = sampling.stratified(10, 8, 2.0, 6.0, True,
                                      generator=sampling.RowNoise(9, 10, torch.arange(10)))
    mine = torch.tensor([0, 4, 7])
    rank, _ = sampling.stratified(3, 8, 2.0, 6.0, True, generator=sampling.RowNoise(9, 10, mine))
    assert torch.equal(one_rank[mine], rank)
