"""Partitions of unbounded scenes (model.far_bound > 0): boxes that tile all of space,
each box's map of its infinite sides onto its grid, the disparity-spaced samples of a segment,
and segments that cover a ray from near to the far bound without gaps."""
from __future__ import annotations

import pytest
import torch

from nerf_dist.models import ModelConfig, build_model
from nerf_dist.models.partitioned.kdtree import kd_partition
from nerf_dist.models.partitioned.segments import ray_box_segments, segment_samples
from nerf_dist.models.partitioned.unbounded import (TAIL, box_unit, open_outer_faces,
                                                    spaced_samples)
from nerf_dist.render_ops import contraction

AABB = torch.tensor([[-1.0, -1.0, -0.5], [1.0, 1.0, 0.5]], dtype=torch.float64)


def _boxes(P: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2000, 3, generator=g, dtype=torch.float64) ** 2 * 2 - 1
    return open_outer_faces(kd_partition(pts, AABB, P), AABB)


def test_open_boxes_tile_all_of_space():
    bounds = _boxes(4)
    inner = kd_partition(torch.rand(2000, 3, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64) ** 2 * 2 - 1, AABB, 4)
    finite = torch.isfinite(bounds)
    assert torch.equal(bounds[finite], inner[finite])          # split planes are kept
    on_box = (inner[:, 0] == AABB[0]).sum() + (inner[:, 1] == AABB[1]).sum()
    assert (~finite).sum() == on_box > 0                        # every outer face is opened
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 3, generator=g, dtype=torch.float64) * \
        10 ** torch.empty(5000, 1, dtype=torch.float64).uniform_(-1, 4, generator=g)
    inside = ((x[:, None, :] >= bounds[None, :, 0]) & (x[:, None, :] < bounds[None, :, 1])).all(-1)
    assert (inside.sum(1) == 1).all()                            # exactly one box each


def test_box_unit_maps_boxes_onto_the_unit_cube_continuously():
    bounds = _boxes(4)
    g = torch.Generator().manual_seed(2)
    for k in range(4):
        lo, hi = bounds[k]
        # points of box k, from its inner part out to 1e4 scene units
        x = torch.randn(3000, 3, generator=g, dtype=torch.float64) * \
            10 ** torch.empty(3000, 1, dtype=torch.float64).uniform_(-1, 4, generator=g)
        x = x[((x >= lo) & (x < hi)).all(-1)]
        u = box_unit(x, lo, hi, AABB)
        assert ((u >= 0) & (u <= 1)).all()
        for axis in range(3):
            order = torch.argsort(x[:, axis])
            assert (u[order, axis].diff() >= 0).all()                      # monotone per axis
        # C1 at the scene box's faces: one-sided slopes agree
        for axis in range(3):
            for face, side in ((1, 1.0), (0, -1.0)):
                if not torch.isinf(bounds[k, face, axis]):
                    continue
                c = AABB[face, axis]
                p = ((torch.where(torch.isinf(lo), AABB[0], lo) +
                      torch.where(torch.isinf(hi), AABB[1], hi)) / 2).repeat(3, 1)
                h = 1e-6
                p[0, axis], p[1, axis], p[2, axis] = c - h, c, c + h
                v = box_unit(p, lo, hi, AABB)[:, axis]
                assert abs(float((v[2] - v[1]) - (v[1] - v[0]))) < 1e-9 * 1e3
                assert abs(float(v[1] - (1 - TAIL if side > 0 else TAIL))) < 1e-12
    # a bounded box maps linearly, as the bounded partitions do
    lo, hi = AABB
    x = torch.rand(100, 3, generator=g, dtype=torch.float64) * (hi - lo) + lo
    assert torch.allclose(box_unit(x, lo, hi, AABB), (x - lo) / (hi - lo), atol=1e-15)


def test_spaced_samples_linear_near_and_in_disparity_far():
    t0 = torch.tensor([0.1, 0.2, 2.0], dtype=torch.float64)
    t1 = torch.tensor([0.9, 500.0, 1000.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    u = torch.rand(3, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts, te, tp = spaced_samples(t0, t1, 8, u, scale, 1.0)
    assert torch.equal(ts[:, 0], t0) and torch.equal(te[:, -1], t1)
    assert torch.equal(te[:, :-1], ts[:, 1:])                                    # no gaps
    assert ((tp >= ts) & (tp <= te)).all() and (te > ts).all()
    # within one unit of the camera: the bounded spacing (uniform in t)
    want = segment_samples(t0[:1], t1[:1], 8, u[:1])
    for a, b in zip((ts[:1], te[:1], tp[:1]), want):
        assert torch.allclose(a, b, atol=1e-12)
    # far: uniform in disparity (bin edges of equal 1/t steps)
    inv = 1.0 / torch.cat([ts[2], te[2, -1:]])
    assert torch.allclose(inv.diff(), inv.diff()[0].expand(8), rtol=1e-9)
    # the spacing is in scene units: a ray with |d| = 2 switches at t = 0.5
    g = contraction.spacing(torch.cat([ts[1], te[1, -1:]]) * 2.0)
    assert torch.allclose(g.diff(), g.diff()[0].expand(8), atol=1e-12)


def test_segments_of_open_boxes_cover_the_ray_to_the_far_bound():
    bounds = _boxes(4)
    g = torch.Generator().manual_seed(4)
    ro = torch.rand(200, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    rd = torch.randn(200, 3, generator=g, dtype=torch.float64)
    far = 1000.0 / rd.norm(dim=-1)
    t0, t1 = ray_box_segments(ro, rd, bounds, 0.05, far)
    length = (t1 - t0).sum(1)
    assert torch.allclose(length, far - 0.05, rtol=1e-12)                  # no gaps, no overlaps
    hit = t1 > t0
    assert (hit.sum(1) >= 1).all()


def test_model_reaches_the_far_field_and_checks_its_key():
    cfg = dict(kind="partitioned", partitions=2, hash_levels=2, hash_features=2,
               hash_log2_size=10, hash_base_res=4, hash_max_res=8, hidden=8, geo_features=3,
               box_samples=128)
    model = build_model(ModelConfig(**cfg, far_bound=100.0), AABB.float())
    assert torch.isinf(model.bounds).sum() == 2 * 5              # two boxes, five open faces each
    ro = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    rd = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        for b in model.boxes.values():
            b.density_mlp[-1].weight.zero_()
            b.density_mlp[-1].bias.fill_(-20.0)                   # empty, except ...
        model.boxes["1"].density_mlp[-1].bias[0] = -3.0           # ... box 1: sigma = 0.05
    out = model(ro, rd, rd, 0.05, 2.0)
    # the scene's far plane (2) is replaced by 100: box 1's far field is reached along +x
    # (mean depth of an exponential of rate 0.05: 20; opacity 1 - exp(-5))
    assert 10.0 < float(out["depth"][0]) < 30.0 and float(out["acc"][0]) > 0.98
    pts = torch.rand(500, 3, generator=torch.Generator().manual_seed(5)) * 0.5
    model.set_partition(pts, "rays")                              # a re-cut keeps them open
    assert torch.isinf(model.bounds).sum() == 2 * 5 and model.bounds[0, 1, 0] > 0.2
    bounded = build_model(ModelConfig(**cfg), AABB.float())
    assert torch.isfinite(bounded.bounds).all()
    with pytest.raises(ValueError, match="model.far_bound"):
        ModelConfig(**cfg, far_bound=0.5)
