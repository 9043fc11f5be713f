"""Multiresolution hash encoding: shapes, resolutions, exact trilinear interpolation, gradients."""
import math

import torch

from nerf_dist.models.hashgrid.encoding import HashGridEncoding


def test_output_shape_and_dtype():
    enc = HashGridEncoding(n_levels=4, n_features=2, log2_size=12, base_res=4, max_res=64)
    y = enc(torch.rand(100, 3))
    assert y.shape == (100, 8) and y.dtype == torch.float32
    assert enc.table.shape == (4, 4096, 2)
    assert enc.table.abs().max() <= 1e-4


def test_resolutions_grow_geometrically():
    enc = HashGridEncoding(n_levels=16, n_features=2, log2_size=14, base_res=16, max_res=2048)
    b = math.exp((math.log(2048) - math.log(16)) / 15)
    assert enc.resolutions == [int(math.floor(16 * b ** lv + 1e-6)) for lv in range(16)]
    assert enc.resolutions[0] == 16 and enc.resolutions[-1] == 2048
    # dense levels are those whose (N + 1)^3 vertices fit in the table; the rest are hashed
    assert enc.dense == [(r + 1) ** 3 <= 2 ** 14 for r in enc.resolutions]
    assert 0 < enc.n_dense < 16


def _dense_enc_with_linear_table():
    """One dense level of resolution 4 whose vertex features are f(i,j,k) = (i + 2j + 3k, ijk)."""
    enc = HashGridEncoding(n_levels=1, n_features=2, log2_size=10, base_res=4, max_res=4)
    assert enc.n_dense == 1 and enc.resolutions == [4]
    r = torch.arange(5)
    ijk = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    rows = enc.vertex_index(ijk[:, None, :])[:, 0]
    assert rows.unique().numel() == 125                       # dense: no collisions
    with torch.no_grad():
        enc.table.zero_()
        f = ijk.float()
        enc.table[0, rows, 0] = f[:, 0] + 2 * f[:, 1] + 3 * f[:, 2]
        enc.table[0, rows, 1] = f[:, 0] * f[:, 1] * f[:, 2]
    return enc


def test_exact_at_vertices():
    enc = _dense_enc_with_linear_table()
    ijk = torch.tensor([[0, 0, 0], [1, 2, 3], [4, 4, 4], [3, 0, 2], [4, 1, 0]])
    y = enc(ijk.float() / 4)
    f = ijk.float()
    torch.testing.assert_close(y[:, 0], f[:, 0] + 2 * f[:, 1] + 3 * f[:, 2])
    torch.testing.assert_close(y[:, 1], f.prod(-1))


def test_trilinear_inside_cells():
    enc = _dense_enc_with_linear_table()
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    y = enc(x)
    p = x * 4
    # a linear function is reproduced exactly; along an edge (two coordinates on the grid) the
    # trilinear product i*j*k is linear in the third
    torch.testing.assert_close(y[:, 0], p[:, 0] + 2 * p[:, 1] + 3 * p[:, 2], atol=1e-5, rtol=1e-5)
    t = torch.linspace(0, 1, 11)
    edge = torch.stack([torch.full_like(t, 2 / 4), torch.full_like(t, 3 / 4), (1 + t) / 4], -1)
    torch.testing.assert_close(enc(edge)[:, 1], 2 * 3 * (1 + t), atol=1e-5, rtol=1e-5)


def test_hashed_levels_and_gradients_reach_table():
    enc = HashGridEncoding(n_levels=4, n_features=2, log2_size=10, base_res=8, max_res=128)
    assert enc.n_dense < 4                                    # exercise the hashed path
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(1))
    w = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    (enc(x) * w).sum().backward()
    g = enc.table.grad
    assert g is not None and g.shape == enc.table.shape and bool((g != 0).any())
    # matches autograd of a reference gather with the same indices (float64 check of the scatter)
    for lv in range(4):
        assert bool((g[lv] != 0).any())
    ref = enc.table.detach().clone().requires_grad_(True)
    enc2 = HashGridEncoding(n_levels=4, n_features=2, log2_size=10, base_res=8, max_res=128)
    enc2.table = torch.nn.Parameter(ref.detach().clone())
    eps = 1e-3
    with torch.no_grad():
        # finite difference on one touched entry: the encoding is linear in the table
        lv, row = 3, int(g[3].abs().sum(-1).argmax())
        base = (enc2(x) * w).sum()
        enc2.table[lv, row, 0] += eps
        bumped = (enc2(x) * w).sum()
    torch.testing.assert_close((bumped - base) / eps, g[lv, row, 0], atol=1e-3, rtol=1e-2)


def test_bf16_autocast_keeps_fp32_interpolation():
    enc = _dense_enc_with_linear_table()
    x = torch.rand(50, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = enc(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, enc(x))


def test_position_gradient_only_when_asked_and_it_matches_finite_differences():
    """Sample positions get a gradient (through the corner weights) when they require one, as
    camera pose refinement needs; it matches central differences inside the cells."""
    enc = HashGridEncoding(n_levels=3, n_features=2, log2_size=10, base_res=4, max_res=32)
    with torch.no_grad():
        enc.table.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    x = (torch.rand(16, 3, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.1)
    w = torch.randn(16, 6, generator=torch.Generator().manual_seed(5))
    (enc(x) * w).sum().backward()                       # x does not require grad: no work for it
    xg = x.clone().requires_grad_(True)
    (enc(xg) * w).sum().backward()
    eps = 1e-4
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(3):
            step = torch.zeros_like(x)
            step[:, i] = eps
            fd[:, i] = ((enc(x + step) * w).sum(-1) - (enc(x - step) * w).sum(-1)) / (2 * eps)
    torch.testing.assert_close(xg.grad, fd, atol=2e-2, rtol=2e-2)
    assert float(xg.grad.abs().max()) > 0.1
