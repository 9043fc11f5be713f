"""Radiance fields (nerf_dist.models.vanilla.field, nerf_dist.models.hashgrid.field): shapes, the
skip connection, and a density that does not depend on the view direction."""
import pytest
import torch

from nerf_dist.models.vanilla.field import NeRFMLP
from nerf_dist.models.hashgrid.field import HashField

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _points(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 1.8 - 0.9
    d = torch.randn(n, 3, generator=g)
    return x, d / d.norm(dim=-1, keepdim=True)


def _small_hash_field(**over):
    torch.manual_seed(0)
    kw = dict(n_levels=4, n_features=2, log2_size=10, base_res=4, max_res=32, hidden=16,
              geo_features=7)
    return HashField(AABB, **{**kw, **over})


# ----------------------------------------------------------------------------- NeRFMLP

def test_nerf_mlp_paper_layout():
    """8 layers of 256 on gamma(x) (63 = 3 + 3*2*10), gamma(x) joined again after layer 4
    (the 6th linear layer takes 256 + 63), 27-dim gamma(d) joined to the feature."""
    m = NeRFMLP()
    ins = [layer.in_features for layer in m.trunk]
    assert ins == [63, 256, 256, 256, 256, 256 + 63, 256, 256]
    assert all(layer.out_features == 256 for layer in m.trunk)
    assert m.sigma_head.in_features == 256 and m.sigma_head.out_features == 1
    assert m.view.in_features == 256 + 27 and m.view.out_features == 128
    assert m.rgb_head.in_features == 128 and m.rgb_head.out_features == 3


@pytest.mark.parametrize("depth,skip,width", [(8, 4, 32), (2, 0, 16), (3, 5, 16)])
def test_nerf_mlp_shapes(depth, skip, width):
    torch.manual_seed(0)
    m = NeRFMLP(depth, width, skip, pos_freqs=4, dir_freqs=2)
    x, d = _points(17)
    rgb, sigma = m(x, d)
    assert rgb.shape == (17, 3) and sigma.shape == (17,)
    assert bool(((rgb > 0) & (rgb < 1)).all())
    # NOTE: sigma is the raw head output: the model adds noise, then applies the ReLU.
    assert rgb.dtype == sigma.dtype == torch.float32
    skipped = [i for i, layer in enumerate(m.trunk) if layer.in_features == width + 3 * 9]
    assert skipped == ([skip + 1] if skip + 1 < depth else [])


def test_skip_connection_feeds_the_encoded_input_to_layer_skip_plus_one():
    torch.manual_seed(0)
    m = NeRFMLP(depth=4, width=16, skip=1, pos_freqs=3, dir_freqs=1)
    x, d = _points(8)
    seen = {}
    m.trunk[2].register_forward_pre_hook(lambda mod, args: seen.setdefault("in", args[0]))
    m(x, d)
    assert seen["in"].shape == (8, 16 + 21)
    torch.testing.assert_close(seen["in"][:, 16:], m.pos_enc(x))


def test_skip_connection_carries_the_position_when_the_trunk_is_cut():
    """Zero layer `skip` (its output is then 0 for every input): x still reaches the density
    through the skip, and only through it (zeroing the skip columns makes sigma constant)."""
    torch.manual_seed(0)
    width = 16
    m = NeRFMLP(depth=4, width=width, skip=1, pos_freqs=3, dir_freqs=1)
    with torch.no_grad():
        m.trunk[1].weight.zero_()
        m.trunk[1].bias.zero_()
    x, d = _points(32)
    with torch.no_grad():
        _, sigma = m(x, d)
        assert float(sigma.std()) > 1e-4        # x got through: by the skip
        m.trunk[2].weight[:, width:] = 0.0      # the gamma(x) columns of layer skip + 1
        _, sigma = m(x, d)
        assert float(sigma.std()) < 1e-7


# ----------------------------------------------------------------------------- HashField

def test_hash_field_shapes_and_ranges():
    f = _small_hash_field()
    x, d = _points(50)
    rgb, sigma = f(x, d)
    assert rgb.shape == (50, 3) and sigma.shape == (50,)
    assert bool(((rgb > 0) & (rgb < 1)).all()) and bool((sigma >= 0).all())
    assert f.encoding.out_dim == 4 * 2
    feats, idx, wc, inside = f.encode_detached(x)
    assert feats.shape == (50, 8) and idx.shape == wc.shape == (50, 4, 8)
    assert inside.shape == (50,) and bool(inside.all())
    torch.testing.assert_close(wc.sum(-1), torch.ones(50, 4))   # trilinear weights
    torch.testing.assert_close(f.density(x), sigma)


def _nerf_mlp():
    torch.manual_seed(0)
    return NeRFMLP(depth=4, width=32, skip=1, pos_freqs=4, dir_freqs=2)


def _hash_field():
    f = _small_hash_field()
    with torch.no_grad():                       # make the colour depend visibly on d
        f.color_mlp[-1].weight.normal_()
    return f


@pytest.mark.parametrize("make", [_nerf_mlp, _hash_field], ids=["nerf_mlp", "hash_field"])
def test_density_ignores_the_view_direction_and_colour_does_not(make):
    field = make()
    x, d1 = _points(64, seed=1)
    _, d2 = _points(64, seed=2)
    rgb1, s1 = field(x, d1)
    rgb2, s2 = field(x, d2)
    assert torch.equal(s1, s2)
    assert not torch.allclose(rgb1, rgb2)
    # and through autograd: the density has no gradient with respect to d
    dd = d1.clone().requires_grad_()
    _, s = field(x, dd)
    (g,) = torch.autograd.grad(s.sum(), dd, allow_unused=True)
    assert g is None or float(g.abs().max()) == 0.0


def test_hash_field_is_empty_outside_its_box():
    f = _small_hash_field()
    x = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, -1.01, 0.0], [0.99, 0.99, -0.99]])
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    _, sigma = f(x, d)
    assert bool((sigma[[0, 3]] > 0).all()) and bool((sigma[[1, 2]] == 0).all())
