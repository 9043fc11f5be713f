"""The partitioned kind (issue 19): kd-tree partition, exact compositing of box segments, and a
P-box model on P ranks (and on R replicas x P boxes) equal to the same model in one process, in
float64 with real gloo processes."""
from __future__ import annotations

import datetime
import time

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from nerf_dist import memory
from nerf_dist.dist import CollectiveError, ReplicaMismatchError, check_replicas
from nerf_dist.lifecycle import StallWatchdog
from nerf_dist.models import ModelConfig, build_model
from nerf_dist.models.partitioned.kdtree import kd_partition, ray_points
from nerf_dist.models.partitioned.unbounded import open_outer_faces
from nerf_dist.models.partitioned.segments import (composite_segments, distortion,
                                                    ray_box_segments, reduce_segment,
                                                    segment_samples)
from nerf_dist.render_ops import volrend
from nerf_dist.render_ops.sampling import RowNoise

AABB = torch.tensor([[-1.0, -0.5, -0.5], [1.0, 0.5, 0.5]])
SPLIT = 0.125        # exactly representable, so rays can lie in the split plane


def small_cfg(partitions: int = 2, **kw) -> ModelConfig:
    base = dict(kind="partitioned", partitions=partitions, hash_levels=2, hash_features=2,
                hash_log2_size=10, hash_base_res=4, hash_max_res=8, hidden=8, geo_features=3,
                box_samples=6, distortion_weight=0.1)
    base.update(kw)
    return ModelConfig(**base)


def make_model(partitions: int = 2, far_bound: float = 0.0):
    """The same float64 model in every process: seeded init, tables made non-trivial, the scene
    box split at x = SPLIT (far_bound > 0: the outer faces at infinity)."""
    torch.manual_seed(0)
    model = build_model(small_cfg(partitions, far_bound=far_bound), AABB).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
        if partitions == 2:
            model.bounds.copy_(torch.stack([AABB, AABB]).double())
            model.bounds[0, 1, 0] = SPLIT
            model.bounds[1, 0, 0] = SPLIT
            if far_bound > 0:
                model.bounds.copy_(open_outer_faces(model.bounds, AABB.double()))
    return model


def make_rays():
    """rays_o, rays_d, viewdirs [n, 3] float64: crossing the split both ways, inside one box,
    missing everything, in the split plane, grazing it, and a random bunch."""
    o = [[-2.0, 0.1, 0.0], [2.0, -0.1, 0.05],           # crossing -x -> +x and +x -> -x
         [-0.5, 0.0, 0.0], [0.6, 0.2, -0.2],            # starting inside box 0 / box 1
         [0.0, 3.0, 0.0], [-3.0, 2.0, 2.0],             # missing everything
         [SPLIT, 0.0, -2.0], [SPLIT, 0.1, -2.0],        # lying in the split plane
         [SPLIT - 1e-3, 0.0, -1.0]]                     # grazing it
    d = [[1.0, 0.0, 0.0], [-1.0, 0.05, 0.0],
         [0.0, 0.3, 1.0], [0.5, -1.0, 0.2],
         [1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
         [0.0, 0.0, 1.0], [0.0, 0.2, 1.0],
         [1e-3, 0.0, 1.0]]
    g = torch.Generator().manual_seed(5)
    ro = torch.cat([torch.tensor(o, dtype=torch.float64),
                    torch.rand(7, 3, generator=g, dtype=torch.float64) * 4 - 2])
    rd = torch.cat([torch.tensor(d, dtype=torch.float64),
                    torch.randn(7, 3, generator=g, dtype=torch.float64)])
    return ro, rd, rd / rd.norm(dim=-1, keepdim=True)


def train_steps(model, rays, idx, n_global, scale, steps: int, sync) -> list[dict]:
    """`steps` Adam steps on rays[idx]; per step the outputs, loss and gradients (after sync)."""
    ro, rd, vd = rays
    target = torch.linspace(0, 1, n_global * 3, dtype=torch.float64).view(n_global, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-15)
    bg = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    rec = []
    for step in range(steps):
        noise = RowNoise(100 + step, n_global, idx)
        out = model(ro[idx], rd[idx], vd[idx], 0.05, 6.0, train=True, generator=noise,
                    background=bg)
        terms = model.losses(out, target[idx], scale)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        sync()
        rec.append({"out": {k: out[k].detach().clone() for k in ("rgb", "depth", "acc",
                                                                  "distortion")},
                    "loss": loss.detach().clone(),
                    "grads": {n: p.grad.clone() for n, p in model.named_parameters()}})
        opt.step()
    rec.append({"state": {k: v.clone() for k, v in model.state_dict().items()}})
    return rec


def _worker(rank, world, init, out, partitions, steps, far_bound=0.0):
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        model = make_model(partitions, far_bound)
        replica, n_replicas = model.distribute(rank, world)
        rays = make_rays()
        n = rays[0].shape[0]
        idx = torch.arange(n)[replica::n_replicas]
        rec = train_steps(model, rays, idx, n, n_replicas / (n * 3), steps, model.sync_gradients)
        torch.save({"rec": rec, "idx": idx, "owned": model.layout.owned}, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def reference(steps: int, partitions: int = 2, far_bound: float = 0.0):
    model = make_model(partitions, far_bound)
    rays = make_rays()
    n = rays[0].shape[0]
    return train_steps(model, rays, torch.arange(n), n, 1.0 / (n * 3), steps, lambda: None)


def run_layout(tmp_path, world: int, steps: int, partitions: int = 2,
               far_bound: float = 0.0) -> list[dict]:
    out = str(tmp_path / "rec")
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), out, partitions, steps, far_bound),
             nprocs=world)
    return [torch.load(f"{out}.{r}") for r in range(world)]


def max_diffs(ref: list[dict], got: list[dict], steps: int) -> dict[str, float]:
    """Largest |difference| per quantity between the one-process run and every rank's."""
    d: dict[str, float] = {}

    def note(key, a, b):
        d[key] = max(d.get(key, 0.0), float((a - b).abs().max()) if a.numel() else 0.0)

    for res in got:
        rec, idx = res["rec"], res["idx"]
        for s in range(steps):
            for k, v in rec[s]["out"].items():
                note(k, ref[s]["out"][k][idx], v)
            # every rank of a box group has the same loss; R replicas' losses average to it
            same = [r["rec"][s]["loss"] for r in got if r["owned"] == res["owned"]]
            note("loss", ref[s]["loss"], sum(same) / len(same))
            for name, g in rec[s]["grads"].items():
                note("grad_box" if name.startswith("boxes.") else "grad_shared",
                     ref[s]["grads"][name], g)
        for name, v in rec[steps]["state"].items():
            if v.is_floating_point():
                note("params_after", ref[steps]["state"][name], v)
    return d


# ----------------------------------------------------------------------------- kd-tree
def test_kd_partition_tiles_the_box_and_splits_at_medians():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(4000, 3, generator=g, dtype=torch.float64) ** 2 * 2 - 1   # dense near -1
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    for P in (1, 2, 3, 4, 8):
        b = kd_partition(pts, aabb, P)
        assert b.shape == (P, 2, 3)
        vol = (b[:, 1] - b[:, 0]).prod(-1)
        assert torch.isclose(vol.sum(), torch.tensor(8.0, dtype=torch.float64))
        # no overlap: a grid of probe points lies in exactly one box (half-open boxes)
        probe = torch.rand(2000, 3, generator=g, dtype=torch.float64) * 2 - 1
        inside = ((probe[:, None] >= b[None, :, 0]) & (probe[:, None] < b[None, :, 1])).all(-1)
        assert (inside.sum(1) == 1).all()
        # balanced: each box holds ~1/P of the points
        counts = ((pts[:, None] >= b[None, :, 0]) & (pts[:, None] < b[None, :, 1])).all(-1).sum(0)
        assert (counts - 4000 / P).abs().max() <= 2 + 4000 * 0.002 * P
    # a long box is cut across its length (children closest to cubes)
    long = torch.tensor([[0.0, 0.0, 0.0], [4.0, 1.0, 1.0]])
    b = kd_partition(None, long, 4)
    assert torch.allclose(b[:, 1, 0] - b[:, 0, 0], torch.ones(4, dtype=torch.float64))
    assert torch.equal(kd_partition(pts, aabb, 4), kd_partition(pts, aabb, 4))


def test_ray_points_lie_on_rays_inside_the_box():
    ro, rd, _ = make_rays()
    pts = ray_points(ro, rd, 0.05, 6.0, AABB, 5, torch.Generator().manual_seed(0))
    assert pts.shape[1] == 3 and pts.shape[0] % 5 == 0 and pts.shape[0] > 0
    assert ((pts >= AABB.double()[0] - 1e-9) & (pts <= AABB.double()[1] + 1e-9)).all()


def test_partition_is_model_state():
    model = build_model(small_cfg(4), AABB)
    pts = torch.rand(500, 3) * (AABB[1] - AABB[0]) + AABB[0]
    model.set_partition(pts, "sparse")
    other = build_model(small_cfg(4), AABB)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.bounds, model.bounds) and int(other.partition_source) == 2
    assert int(other.partition_points) == 500


# ----------------------------------------------------------------------------- compositing
def test_segments_composite_equals_direct_rendering():
    """Three boxes along x crossed in both orders: compositing the per-box reductions equals
    volume rendering (and the distortion) of all samples of the ray in order."""
    torch.manual_seed(0)
    bounds = torch.tensor([[[-3.0, -1, -1], [-1, 1, 1]], [[-1, -1, -1], [0.5, 1, 1]],
                           [[0.5, -1, -1], [3, 1, 1]]], dtype=torch.float64)
    ro = torch.tensor([[-4.0, 0.1, 0.2], [4.0, -0.3, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]],
                      dtype=torch.float64)
    rd = torch.tensor([[2.0, 0.1, 0.0], [-1.0, 0.0, 0.1], [0.3, 0.0, 1.0], [1.0, 0.0, 0.0]],
                      dtype=torch.float64)
    t0, t1 = ray_box_segments(ro, rd, bounds, 0.1, 10.0)
    n, P, S = 4, 3, 5
    sig = torch.rand(n, P, S, dtype=torch.float64) * 3
    rgb = torch.rand(n, P, S, 3, dtype=torch.float64)
    u = torch.rand(n, P, S, dtype=torch.float64)
    scale = rd.norm(dim=-1)
    segs, parts = [], []
    for k in range(P):
        ts, te, tp = segment_samples(t0[:, k], t1[:, k], S, u[:, k])
        segs.append(reduce_segment(sig[:, k], rgb[:, k], ts, te, tp, scale))
        parts.append((ts, te, tp))
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    got = composite_segments(torch.stack(segs, 1), t0, bg)
    order = torch.argsort(t0, dim=1)                                 # ray order of the boxes
    cat = lambda xs: torch.cat(xs, 1)                                 # noqa: E731
    ts, te, tp = (cat([p[i] for p in parts]) for i in range(3))
    sg, cl = cat(list(sig.unbind(1))), torch.cat(list(rgb.unbind(1)), 1)
    # sort all samples of each ray by position (empty segments' zero-length bins anywhere)
    key = tp + (te == ts) * 1e6
    o = torch.argsort(key, dim=1)
    take = lambda x: torch.gather(x, 1, o)                            # noqa: E731
    ts, te, tp, sg = take(ts), take(te), take(tp), take(sg)
    cl = torch.gather(cl, 1, o[..., None].expand(-1, -1, 3))
    w, _, _ = volrend.render_weights(sg, (te - ts) * scale[:, None])
    want_rgb, _, want_acc = volrend.composite(w, cl, tp, bg)
    assert order[0].tolist() == [0, 1, 2] and order[1].tolist() == [2, 1, 0]
    assert torch.allclose(got["rgb"], want_rgb, atol=1e-12)
    assert torch.allclose(got["acc"], want_acc, atol=1e-12)
    assert torch.allclose(got["depth"], (w * tp).sum(1), atol=1e-12)
    assert torch.allclose(got["distortion"], distortion(w, tp, ts, te), atol=1e-12)
    assert got["acc"][3] == 0 and torch.allclose(got["rgb"][3], bg)      # misses every box


def test_one_process_model_renders_and_learns():
    model = make_model(2)
    ro, rd, vd = make_rays()
    out = model(ro, rd, vd, 0.05, 6.0)
    assert out["rgb"].shape == (16, 3) and torch.isfinite(out["rgb"]).all()
    assert out["acc"][4] == 0 and out["acc"][5] == 0                       # the misses
    assert float(out["samples_per_ray"]) > 0
    rec = reference(1)
    assert all(torch.isfinite(g).all() for g in rec[0]["grads"].values())
    assert rec[0]["grads"]["boxes.1.encoding.table"].abs().sum() > 0


# ----------------------------------------------------------------------------- equivalence
STEPS = 3


def test_two_boxes_on_two_ranks_equal_one_process(tmp_path):
    got = run_layout(tmp_path, 2, STEPS)
    assert [r["owned"] for r in got] == [(0,), (1,)]
    d = max_diffs(reference(STEPS), got, STEPS)
    print("partition 1x2 vs one process, max abs diff:", d)
    assert set(d) >= {"rgb", "depth", "acc", "distortion", "loss", "grad_box", "grad_shared",
                      "params_after"}
    assert max(d.values()) < 1e-12, d


@pytest.mark.slow   # 4 processes
def test_two_replicas_of_two_boxes_equal_one_process(tmp_path):
    got = run_layout(tmp_path, 4, STEPS)
    assert [r["owned"] for r in got] == [(0,), (1,), (0,), (1,)]
    d = max_diffs(reference(STEPS), got, STEPS)
    print("partition 2x2 vs one process, max abs diff:", d)
    assert max(d.values()) < 1e-12, d


def test_four_boxes_on_two_ranks_equal_one_process(tmp_path):
    """Fewer ranks than boxes: each rank holds two of the four boxes."""
    got = run_layout(tmp_path, 2, 2, partitions=4)
    assert [r["owned"] for r in got] == [(0, 2), (1, 3)]
    d = max_diffs(reference(2, partitions=4), got, 2)
    print("partition 4 boxes on 2 ranks vs one process, max abs diff:", d)
    assert max(d.values()) < 1e-12, d


def test_unbounded_boxes_on_two_ranks_equal_one_process(tmp_path):
    """model.far_bound > 0: the outer boxes reach infinity, the rays run to far_bound; still
    exact across ranks."""
    got = run_layout(tmp_path, 2, 2, far_bound=50.0)
    ref = reference(2, far_bound=50.0)
    d = max_diffs(ref, got, 2)
    print("unbounded partition 1x2 vs one process, max abs diff:", d)
    assert max(d.values()) < 1e-12, d
    # the rays that miss the scene box now reach the outer boxes
    assert (ref[0]["out"]["acc"][4:6] > 0).all()


def test_rays_in_the_split_plane_belong_to_the_upper_box():
    model = make_model(2)
    ro, rd, _ = make_rays()
    t0, t1 = ray_box_segments(ro, rd, model.bounds, 0.05, 6.0)
    hit = t1 > t0
    assert hit[0].tolist() == [True, True] and hit[1].tolist() == [True, True]
    assert t1[0, 0] == t0[0, 1] and t1[1, 1] == t0[1, 0]          # segments meet exactly
    assert hit[2].tolist() == [True, False] and hit[3].tolist() == [False, True]
    assert not hit[4].any() and not hit[5].any()
    assert hit[6].tolist() == [False, True] and hit[7].tolist() == [False, True]
    assert hit[8].tolist() == [True, True]                        # grazing: crosses the plane


def _digest_worker(rank, world, init, out):
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        res = {}
        torch.manual_seed(rank)               # every rank a different model
        m = torch.nn.Linear(2, 2)
        for name, key in (("keyed", rank), ("plain", 0)):
            try:
                res[name] = check_replicas(m, rank, world, "test", key=key)
            except ReplicaMismatchError as e:
                res[name] = str(e)
        # two boxes on two ranks (one replica): the same shared head and partition, each rank
        # its own box -> they agree; then a perturbed colour head, then a perturbed partition
        model = make_model(2)
        model.distribute(rank, world)
        res["boxes"] = check_replicas(model, rank, world, "test", key=model.replica_key())
        for name, tensor in (("colour", next(model.colour.parameters())),
                             ("bounds", model.bounds)):
            with torch.no_grad():
                tensor.view(-1)[0] += 1e-3 * rank
            try:
                res[name] = check_replicas(model, rank, world, "test", key=model.replica_key())
            except ReplicaMismatchError as e:
                res[name] = str(e)
            with torch.no_grad():
                tensor.view(-1)[0] -= 1e-3 * rank
        torch.save(res, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def test_replica_digest_compares_every_tensor_between_the_ranks_holding_it(tmp_path):
    """Issue 24: two different models fail whatever their keys; a partitioned model on its box
    group compares the shared colour head and the partition (each box is held once: nothing
    to compare it with)."""
    out = str(tmp_path / "d")
    mp.spawn(_digest_worker, args=(2, str(tmp_path / "init"), out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    for name in ("keyed", "plain"):
        assert "rank(s) 1 differ from rank 0" in res[0][name] == res[1][name], res[0][name]
    assert len(res[0]["boxes"]) == 16 and res[0]["boxes"] == res[1]["boxes"]
    assert "rank(s) 1 differ from rank 0" in res[0]["colour"] == res[1]["colour"]
    assert "'colour." in res[0]["colour"]
    assert "'bounds'" in res[0]["bounds"] == res[1]["bounds"], res[0]["bounds"]


def _frozen_worker(rank, world, init, out):
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                             timeout=datetime.timedelta(seconds=2))
    try:
        model = make_model(2)
        model.distribute(rank, world)
        with open(f"{out}.{rank}.log", "w") as log:
            dog = StallWatchdog(rank, 0.5, 2.0, stream=log, poll_s=0.1)
            model.watch_collectives(dog.waiting)
            res = {}
            if rank == 1:
                time.sleep(4)            # frozen: never joins the exchange
            else:
                ro, rd, vd = make_rays()
                try:
                    model(ro, rd, vd, 0.05, 6.0)
                    res["error"] = None
                except CollectiveError as e:
                    res["error"] = str(e)
            dog.close()
        torch.save(res, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def test_a_frozen_box_partner_is_named_by_the_watchdog_and_the_error(tmp_path):
    """Issue 24: the segment exchange of forward sits under dist.collective and the stall
    watchdog: a partner that never joins is named while waiting, and its end (the process
    group's timeout) is a CollectiveError naming the exchange."""
    out = str(tmp_path / "f")
    mp.spawn(_frozen_worker, args=(2, str(tmp_path / "init"), out), nprocs=2)
    res = torch.load(f"{out}.0")
    log = open(f"{out}.0.log").read()
    assert "[rank 0] still waiting after" in log and "segment exchange" in log, log
    assert res["error"] and "segment exchange" in res["error"], res
    assert "a peer rank died, froze or became unreachable" in res["error"], res


def test_load_balance_scalars_cover_every_box():
    model = make_model(2)
    ro, rd, vd = make_rays()
    model(ro, rd, vd, 0.05, 6.0, train=True, generator=torch.Generator().manual_seed(0))
    sc = model.log_scalars()
    t0, t1 = ray_box_segments(ro, rd, model.bounds, 0.05, 6.0)
    want = (t1 > t0).sum(0).double() * 6 / 16
    assert (sc["box0_samples"], sc["box1_samples"]) == tuple(want.tolist())
    assert sc["imbalance"] == float(want.max() / want.mean()) and sc["box_ms"] > 0


def test_partition_from_sparse_points_or_rays():
    model = build_model(small_cfg(2), AABB)
    ro, rd, _ = make_rays()
    model.init_from_rays(ro.float(), rd.float(), 0.05, 6.0)
    assert int(model.partition_source) == 1 and int(model.partition_points) > 0
    pts = torch.zeros(100, 3)
    pts[:, 0] = torch.linspace(0.3, 0.7, 100)             # content on the right: the split too
    model.init_from_rays(ro.float(), rd.float(), 0.05, 6.0, points=pts)
    assert int(model.partition_source) == 2 and int(model.partition_points) == 100
    assert 0.45 <= float(model.bounds[0, 1, 0]) <= 0.55 and float(model.bounds[1, 0, 0]) == \
        float(model.bounds[0, 1, 0])


def test_memory_check_counts_a_ranks_share_of_the_boxes():
    cfg = small_cfg(4, hash_log2_size=14)
    whole = memory.train_param_bytes(cfg)
    # the boxes split, the shared colour head (and its Adam state) whole on every rank
    est = memory.model_memory(cfg)
    shared = -(-est.param_shared * whole // est.param_bytes)
    assert 0 < shared < whole // 100
    assert memory.train_param_bytes(cfg, 4) == shared + -(-(whole - shared) // 4)
    assert memory.train_param_bytes(cfg, 2) == shared + -(-(whole - shared) // 2)
    assert memory.train_param_bytes(cfg, 8) == memory.train_param_bytes(cfg, 4)  # 2 replicas
    fast = ModelConfig(kind="fast")
    assert memory.train_param_bytes(fast, 8) == memory.train_param_bytes(fast)   # replicated


def test_distortion_is_measured_in_normalised_distance():
    """model.distortion_weight means the same in the partitioned kind as in the unbounded one: the
    loss is on s in [0, 1] (near -> 0, far -> 1), so bounded it is the distortion in t over
    (far - near), and it stays within its bound 1 + 1/3 whatever the scene's units."""
    model = make_model(2).eval()
    g = torch.Generator().manual_seed(1)
    n = 32
    o = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.2 + torch.tensor(
        [0.0, 0.0, 3.0], dtype=torch.float64)
    d = torch.nn.functional.normalize(-o + torch.randn(n, 3, generator=g, dtype=torch.float64)
                                      * 0.1, dim=-1)
    near, far = 1.0, 6.0
    with torch.no_grad():
        out = model(o, d, d, near, far)
        t0, t1 = ray_box_segments(o, d, model.bounds, near, far)
        seg_t = torch.stack([model.render_box(k, o, d, d, t0[:, k], t1[:, k], None)
                             for k in range(2)], 1)
        in_t = composite_segments(seg_t, t0)["distortion"]
    assert float(in_t.abs().max()) > 0
    torch.testing.assert_close(out["distortion"], in_t / (far - near), rtol=1e-9, atol=1e-12)
    assert float(out["distortion"].max()) <= 4.0 / 3.0
