"""Models (nerf_dist.models): the common output contract of every kind, VanillaNeRF's coarse/fine
outputs, chunked rendering, and the fast path's view-direction encoding (real spherical
harmonics, orthonormal on the sphere). FastNeRF's own behaviour: tests/test_model_fast.py."""
import math

import numpy as np
import pytest
import torch

from nerf_dist.config import ModelConfig
from nerf_dist.models import build_model
from nerf_dist.models.chunked import render_chunked
from nerf_dist.models.hashgrid.field import spherical_harmonics
from nerf_dist.models.hashgrid.model import FastNeRF
from nerf_dist.models.vanilla.model import VanillaNeRF

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
TINY = dict(depth=2, width=32, skip=0, pos_freqs=4, dir_freqs=2, n_samples=16, n_importance=16)
TINY_FAST = dict(kind="fast", hash_levels=4, hash_log2_size=12, hash_max_res=64, hidden=16,
                 grid_res=16, march_steps=64, max_samples=32)


def _rays(n, seed=0):
    """Rays from a sphere of radius 3 towards the unit box; unit directions."""
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = 3.0 * o / o.norm(dim=-1, keepdim=True)
    d = (torch.rand(n, 3, generator=g) - 0.5) - o
    return o, d / d.norm(dim=-1, keepdim=True)


def _model(**cfg):
    torch.manual_seed(0)
    return build_model(ModelConfig(**cfg), AABB)


# ----------------------------------------------------------------------------- every kind

@pytest.mark.parametrize("cfg", [TINY, {**TINY, "n_importance": 0}, TINY_FAST],
                         ids=["vanilla", "vanilla-coarse-only", "fast"])
@pytest.mark.parametrize("train", [True, False])
def test_every_model_returns_the_common_outputs(cfg, train):
    model = _model(**cfg)
    o, d = _rays(24)
    g = torch.Generator().manual_seed(0)
    out = model(o, d, d, 2.0, 4.5, train=train, generator=g, background=torch.ones(3))
    assert out["rgb"].shape == (24, 3) and out["depth"].shape == (24,)
    assert out["acc"].shape == (24,) and out["samples_per_ray"].ndim == 0
    assert all(out[k].dtype == torch.float32 for k in ("rgb", "depth", "acc"))
    assert bool(((out["acc"] >= 0) & (out["acc"] <= 1 + 1e-5)).all())
    assert bool(((out["rgb"] >= 0) & (out["rgb"] <= 1 + 1e-5)).all())


def test_build_model_picks_the_kind():
    assert isinstance(_model(**TINY), VanillaNeRF)
    assert isinstance(_model(**TINY_FAST), FastNeRF)
    with pytest.raises(ValueError, match="aabb"):
        build_model(ModelConfig(**TINY_FAST), None)


# ----------------------------------------------------------------------------- VanillaNeRF

def test_vanilla_coarse_and_fine_outputs():
    model = _model(**TINY)
    o, d = _rays(10)
    out = model(o, d, d, 2.0, 4.5, train=False, background=torch.ones(3))
    assert set(out) >= {"rgb", "depth", "acc", "rgb_coarse", "depth_coarse", "acc_coarse",
                        "samples_per_ray"}
    assert out["rgb_coarse"].shape == (10, 3) and out["depth_coarse"].shape == (10,)
    # coarse samples are evaluated twice (by the coarse and the fine network) plus the importance
    assert float(out["samples_per_ray"]) == 16 * 2 + 16
    # depth is a weighted mean of sample distances in [near, far], scaled by the opacity
    assert bool(((out["depth"] >= 0) & (out["depth"] <= 4.5 * out["acc"] + 1e-4)).all())
    coarse = _model(**{**TINY, "n_importance": 0})
    assert coarse.fine is None
    out = coarse(o, d, d, 2.0, 4.5, train=False)
    assert "rgb_coarse" not in out and float(out["samples_per_ray"]) == 16


def test_vanilla_training_forward_is_reproducible_from_its_generator():
    model = _model(**TINY, raw_noise_std=1.0)
    o, d = _rays(12)
    run = lambda seed: model(o, d, d, 2.0, 4.5, train=True,  # noqa: E731
                             generator=torch.Generator().manual_seed(seed))["rgb"]
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    ev = lambda: model(o, d, d, 2.0, 4.5, train=False)["rgb"]  # noqa: E731
    assert torch.equal(ev(), ev())              # no jitter, no noise at inference


def test_render_chunked_equals_one_pass():
    model = _model(**TINY)
    o, d = _rays(37)
    rays = {"rays_o": o, "rays_d": d, "viewdirs": d}
    whole = render_chunked(model, rays, 2.0, 4.5, chunk=1000, background=torch.ones(3))
    parts = render_chunked(model, rays, 2.0, 4.5, chunk=8, background=torch.ones(3))
    assert set(whole) == {"rgb", "depth", "acc"} and whole["rgb"].shape == (37, 3)
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- SH encoding

def _sphere_quadrature(n_z=8, n_phi=16):
    """Nodes [n, 3] and weights [n] integrating polynomials of degree <= 7 over the unit sphere
    exactly: Gauss-Legendre in z = cos(theta) times the uniform rule in phi."""
    z, wz = np.polynomial.legendre.leggauss(n_z)
    phi = np.arange(n_phi) * 2 * np.pi / n_phi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz ** 2)
    pts = np.stack([r * np.cos(pp), r * np.sin(pp), zz], -1).reshape(-1, 3)
    w = (wz[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).reshape(-1)
    return torch.tensor(pts), torch.tensor(w)


def test_spherical_harmonics_are_orthonormal():
    pts, w = _sphere_quadrature()
    assert float(w.sum()) == pytest.approx(4 * math.pi)
    Y = spherical_harmonics(pts)                            # [n, 16] (float64 in, float64 out)
    assert Y.shape == (pts.shape[0], 16)
    gram = Y.T @ (w[:, None] * Y)
    torch.testing.assert_close(gram, torch.eye(16, dtype=gram.dtype), atol=1e-10, rtol=0)


def test_spherical_harmonics_addition_theorem_per_degree():
    # sum over m of Y_lm(d)^2 = (2l + 1) / (4 pi) at every direction: each degree is complete
    # and normalised (the orthonormality test alone could not see a rotated basis within l).
    d = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = spherical_harmonics(d / d.norm(dim=-1, keepdim=True))
    for deg, (a, b) in enumerate([(0, 1), (1, 4), (4, 9), (9, 16)]):
        s = (Y[:, a:b] ** 2).sum(-1)
        torch.testing.assert_close(s, torch.full_like(s, (2 * deg + 1) / (4 * math.pi)))


def test_spherical_harmonics_low_degrees_at_the_pole():
    Y = spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))[0]
    assert float(Y[0]) == pytest.approx(1 / (2 * math.sqrt(math.pi)))       # Y_00
    assert float(Y[2]) == pytest.approx(math.sqrt(3 / (4 * math.pi)))      # Y_10 = c z
    assert float(Y[6]) == pytest.approx(math.sqrt(5 / (4 * math.pi)))      # Y_20 at z = 1
    assert float(Y[12]) == pytest.approx(math.sqrt(7 / (4 * math.pi)))     # Y_30 at z = 1
    others = [i for i in range(16) if i not in (0, 2, 6, 12)]
    assert float(Y[others].abs().max()) < 1e-12                            # m != 0 vanish
