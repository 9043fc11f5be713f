"""A random training background per ray (nerf_dist.models.background), shared by the fast kind
(model.random_background) and the unbounded kind (model.random_background)."""
import torch

from nerf_dist.config import ModelConfig
from nerf_dist.models import build_model
from nerf_dist.models.background import random_background
from nerf_dist.render_ops.sampling import RowNoise

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
SMALL = dict(kind="fast", hash_levels=4, hash_features=2, hash_log2_size=12, hash_base_res=4,
             hash_max_res=32, hidden=16, geo_features=7, grid_res=8, march_steps=32, max_samples=32)


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    straight, alpha = torch.rand(n, 3, generator=g), torch.rand(n, generator=g)
    alpha[:8] = 0.0                                   # fully transparent pixels
    alpha[8:16] = 1.0                                 # fully opaque pixels
    bg0 = torch.tensor([1.0, 1.0, 1.0])
    rgb = straight * alpha[:, None] + bg0 * (1 - alpha)[:, None]   # as the loader composites
    return {"rgb": rgb, "alpha": alpha}, straight, bg0


def test_random_colour_per_ray_and_targets_over_it():
    batch, straight, bg0 = _batch()
    n = batch["rgb"].shape[0]
    bg, target = random_background(batch, bg0, RowNoise(7, n, torch.arange(n)))
    assert bg.shape == (n, 3) and float(bg.min()) >= 0 and float(bg.max()) < 1
    assert len({tuple(c) for c in bg.tolist()}) == n                # one colour per ray
    a = batch["alpha"][:, None]
    assert torch.allclose(target, straight * a + bg * (1 - a), atol=1e-6)
    assert torch.allclose(target[:8], bg[:8], atol=1e-6)            # transparent: the colour itself
    assert torch.allclose(target[8:16], batch["rgb"][8:16])          # opaque: unchanged
    # another step draws other colours; 2 ranks draw what 1 rank draws for their rows
    assert not torch.equal(bg, random_background(batch, bg0, RowNoise(8, n, torch.arange(n)))[0])
    half = random_background({k: v[32:] for k, v in batch.items()}, bg0,
                             RowNoise(7, n, torch.arange(32, n)))[0]
    assert torch.equal(half, bg[32:])


def _fast(**over):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **over}), AABB)


def test_fast_kind_trains_over_random_colours_and_evaluates_over_the_configured_one():
    batch, straight, bg0 = _batch()
    n = batch["rgb"].shape[0]
    noise = RowNoise(3, n, torch.arange(n))
    off = _fast()
    extra, target = off.train_inputs(batch, bg0, noise)
    assert target is batch["rgb"] and torch.equal(extra["background"], bg0)
    on = _fast(random_background=True)
    extra, target = on.train_inputs(batch, bg0, noise)
    bg = extra["background"]
    assert bg.shape == (n, 3)
    assert torch.equal(target, random_background(batch, bg0, RowNoise(3, n, torch.arange(n)))[1])
    # rays that miss the box see only the background: the random one per ray in training, the
    # configured one at evaluation
    o = torch.tensor([[0.0, 5.0, 0.0]]).expand(n, 3).contiguous()
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3).contiguous()
    on.before_step(0, torch.Generator().manual_seed(0))
    out = on(o, d, d, 0.1, 6.0, train=True, generator=RowNoise(1, n, torch.arange(n)), **extra)
    assert torch.allclose(out["rgb"], bg)
    with torch.no_grad():
        ev = on(o, d, d, 0.1, 6.0, background=bg0)
    assert torch.allclose(ev["rgb"], bg0.expand(n, 3))
    # rays through the box train the field against the re-composited targets
    o2 = torch.tensor([[0.0, 0.0, 3.0]]).expand(n, 3).contiguous()
    d2 = torch.tensor([[0.0, 0.0, -1.0]]).expand(n, 3).contiguous()
    out2 = on(o2, d2, d2, 0.1, 6.0, train=True, generator=RowNoise(1, n, torch.arange(n)), **extra)
    assert bool((out2["acc"] > 0).all())
    terms = on.losses(out2, target, 1.0 / (n * 3))
    terms["rgb"].backward()
    assert on.field.encoding.table.grad is not None
