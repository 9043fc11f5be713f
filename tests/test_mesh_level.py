"""The mesh export's automatic level (nerf_dist.export.mesh.ray_level): a synthetic field along
rays with fog in front of the surfaces, thin parts and background rays; the box clipping; and
the frame helpers' reflections (nerf_dist.export.frame, .mesh.write)."""
from __future__ import annotations

import math

import numpy as np
import torch

from nerf_dist.export.frame import move_points, scale_of
from nerf_dist.export.mesh import ray_level as rl
from nerf_dist.export.mesh.level import otsu_log_level
from nerf_dist.export.mesh.stitch import Mesh
from nerf_dist.export.mesh.write import to_frame

S = 192
DELTA = 0.01


def _rays(rng, n_hit=300, n_thin=60, n_miss=600):
    """sigma [r, S]: solid rays (density ramping 0 -> 200 from sample 100), thin rays (a slab
    of density 30 over 4 samples at 90), background rays; every ray crosses faint fog of density
    0.5 over samples 20..60 (the renders see through it: optical depth 0.2)."""
    sig = np.zeros((n_hit + n_thin + n_miss, S))
    ramp = np.clip((np.arange(S) - 100) / 10.0, 0, 1) * 200
    sig[:n_hit] = ramp
    sig[n_hit:n_hit + n_thin, 90:94] = 30.0
    sig[:, 20:60] += 0.5 * rng.random((len(sig), 40))
    return sig, np.full(len(sig), DELTA)


def test_level_skips_fog_keeps_thin_parts_and_lies_at_the_front():
    sig, delta = _rays(np.random.default_rng(0))
    levels = np.exp(np.linspace(math.log(1e-3), math.log(200), rl.CANDIDATES))
    cost, hits = rl.level_costs(sig, delta, levels)
    assert hits == 360                        # solid and thin rays; fog and background do not
    level = rl.pick(cost, levels)
    assert 0.5 < level < 30.0, level          # above the fog, below the thin slab's density
    # the level's first crossing on the solid rays is at the front of the ramp (transmittance
    # 0.9 is at optical depth 0.105: sample 101 or 102 after the fog's ~0.1)
    k = np.argmax(sig[:300] >= level, axis=1)
    assert np.all((k >= 99) & (k <= 104)), np.unique(k)
    # the earlier rule (Otsu on log density) lands in the fog on such a field
    assert otsu_log_level(sig.ravel()) < 0.5
    # integer costs: the sum over two halves is the sum over all (any number of ranks)
    a, ha = rl.level_costs(sig[::2], delta[::2], levels)
    b, hb = rl.level_costs(sig[1::2], delta[1::2], levels)
    assert np.array_equal(a + b, cost) and ha + hb == hits


def test_candidates_of_a_flat_field_and_ties():
    assert rl.candidates(np.zeros(10)) is None
    assert rl.candidates(np.full(10, 3.0)) is None
    c = rl.candidates(np.array([0.0, 1.0, 100.0]))
    assert len(c) == rl.CANDIDATES and 1e-3 < c[0] < c[-1] < 100.0
    assert rl.pick(np.array([5, 1, 1, 1, 7]), np.arange(5.0)) == 2.0


def test_box_segments_and_samples():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [5.0, 5.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t0, t1 = rl.box_segments(o, d, [-1, -1, -1], [1, 1, 1])
    assert torch.allclose(t0[:2], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(t1[:2], torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert t1[2] <= t0[2]                                  # misses the box
    pts, step = rl.ray_samples(o[:1], d[:1], t0[:1], t1[:1], 4)
    assert torch.allclose(pts[0, :, 2], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(step, torch.tensor([0.5], dtype=torch.float64))
    assert rl.view_pixels(64, 64, 1024).shape == (1024, 2)
    assert rl.views_of(5) == [0, 1, 2, 3, 4] and len(rl.views_of(100)) == rl.VIEWS


def test_reflections_keep_normals_and_winding_outward():
    m = np.diag([-2.0, 2.0, 2.0, 1.0])                    # a mirror and a scale of 2
    m[:3, 3] = [1.0, 0.0, 0.0]
    assert math.isclose(scale_of(m), 2.0)
    p, n = move_points(m, np.array([[1.0, 0, 0]]), np.array([[1.0, 0, 0]]))
    assert np.allclose(p, [[-1.0, 0, 0]]) and np.allclose(n, [[-1.0, 0, 0]])
    # a tetrahedron with outward normals and counter-clockwise faces seen from outside
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    nrm = v - v.mean(0)
    out = to_frame(Mesh(v, f, nrm.astype(np.float32), None), m)
    fv = out.verts[out.faces]
    face_n = np.cross(fv[:, 1] - fv[:, 0], fv[:, 2] - fv[:, 0])
    outward = fv.mean(1) - out.verts.mean(0)
    assert np.all((face_n * outward).sum(1) > 0)           # winding still outward
    assert np.all((out.normals * (out.verts - out.verts.mean(0))).sum(1) > 0)
    assert np.allclose(np.linalg.norm(out.normals, axis=1), 1.0, atol=1e-6)
