"""Scene contraction and s-space spacing (render_ops/contraction.py) against their formulas."""
import pytest
import torch

from nerf_dist.render_ops.contraction import (contract, s_to_t, spacing, spacing_inv, t_to_s,
                                              uncontract)


@pytest.mark.parametrize("order", ["2", "inf"])
def test_contract_formula(order):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) * 5
    n = x.norm(dim=-1, keepdim=True) if order == "2" else x.abs().amax(-1, keepdim=True)
    want = torch.where(n <= 1, x, (2 - 1 / n) * x / n)
    y = contract(x, order)
    assert torch.allclose(y, want)
    ny = y.norm(dim=-1) if order == "2" else y.abs().amax(-1)
    assert bool((ny < 2).all())
    inside = x / (n * 1.5)                       # |x| < 1: the identity
    assert torch.equal(contract(inside, order), inside)
    far = torch.tensor([[1e6, 0.0, 0.0]], dtype=torch.float64)
    assert abs(float(contract(far, order)[0, 0]) - 2.0) < 1e-5


@pytest.mark.parametrize("order", ["2", "inf"])
def test_contract_is_continuous_at_the_boundary_and_inverts(order):
    d = torch.nn.functional.normalize(torch.randn(100, 3, dtype=torch.float64), dim=-1)
    if order == "inf":
        d = d / d.abs().amax(-1, keepdim=True)    # unit L-inf norm
    for eps in (1e-6, 1e-9):
        a, b = contract(d * (1 - eps), order), contract(d * (1 + eps), order)
        assert float((a - b).abs().max()) < 10 * eps
        # the slope along the ray is 1 on both sides: C1 through the boundary
        sa = (contract(d * (1 - eps), order) - contract(d * (1 - 2 * eps), order)) / eps
        sb = (contract(d * (1 + 2 * eps), order) - contract(d * (1 + eps), order)) / eps
        assert torch.allclose(sa, sb, atol=1e-3)
    x = torch.randn(300, 3, dtype=torch.float64) * 20
    assert torch.allclose(uncontract(contract(x, order), order), x, rtol=1e-6, atol=1e-8)


def test_contract_has_finite_gradients_everywhere():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.2, 0.1], [3.0, -4.0, 1.0]], requires_grad=True)
    contract(x, "inf").sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_spacing_is_linear_near_and_disparity_far():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 1000.0], dtype=torch.float64)
    g = spacing(t)
    assert torch.allclose(g[:3], t[:3] / 2)
    assert torch.allclose(g[3:], 1 - 1 / (2 * t[3:]))
    assert torch.allclose(spacing_inv(g), t)
    near, far = torch.tensor([[0.05]]), torch.tensor([[1000.0]])
    s = torch.linspace(0, 1, 65)[None]
    tt = s_to_t(s, near, far)
    assert abs(float(tt[0, 0]) - 0.05) < 1e-6 and abs(float(tt[0, -1]) - 1000.0) < 1e-1
    assert torch.allclose(t_to_s(tt, near, far), s, atol=1e-5)
    steps = tt[0, 1:] - tt[0, :-1]
    near_steps = steps[tt[0, 1:] <= 1.0]
    assert torch.allclose(near_steps, near_steps[0].expand_as(near_steps), rtol=1e-3)  # linear
    far_t = tt[0][tt[0] > 1.0][:-1]                       # disparity: equal steps in 1/t
    dd = (1 / far_t[:-1] - 1 / far_t[1:])
    assert torch.allclose(dd, dd[0].expand_as(dd), rtol=1e-2)
