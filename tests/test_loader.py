"""RayLoader: world-size-independent global batches, owned-shard reads, resume, centre crop,
and streaming in windows of shards within data.cache_memory (local, memory:// and S3)."""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
import time
import uuid

import pytest
import torch

from nerf_dist.config import DataConfig
from nerf_dist.lifecycle import StallWatchdog
from nerf_dist.loader import BATCH_FIELDS, RayLoader, plan_window, shard_batch_sizes, stream_positions
from nerf_dist.ray_cache import RayCache, RayCacheError, ShardReadError, ensure_cache
from nerf_dist.render_ops.rays import scene_rays
from nerf_dist.storage import StorageError
from nerf_dist.scenes.base import Scene

S = 8  # shards; 3 images x 5 x 7 = 105 rays -> 14 or 13 rays per shard
# NOTE: W is not a multiple of S, else shard s would hold only column s (and no centre-crop rays).


def make_scene(n=3, H=5, W=7) -> Scene:
    g = torch.Generator().manual_seed(1)
    K = torch.tensor([[7.0, 0, W / 2], [0, 7.0, H / 2], [0, 0, 1.0]]).expand(n, 3, 3).clone()
    c2w = torch.zeros(n, 3, 4)
    for i in range(n):
        a = 0.4 * i
        c2w[i, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0],
                                       [-math.sin(a), 0, math.cos(a)]])
        c2w[i, :3, 3] = torch.tensor([0.1 * i, 0.0, 3.0])
    return Scene(images=torch.rand(n, H, W, 3, generator=g), K=K, c2w=c2w, near=2.0, far=6.0,
                 aabb=torch.tensor([[-1.5] * 3, [1.5] * 3]), background=torch.ones(3),
                 files=[f"r_{i}.png" for i in range(n)], split="train")


def write_root(root) -> None:
    """A scene folder the cache key can index (one frame, an image file never decoded here)."""
    root.mkdir()
    frames = [{"file_path": "r_0.png", "transform_matrix": [[1, 0, 0, 0]] * 4}]
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    (root / "r_0.png").write_bytes(b"not decoded")


def build(tmp, scene, shards=S, base=None) -> RayCache:
    root = tmp / f"scene-{uuid.uuid4().hex[:6]}"
    write_root(root)
    return ensure_cache(DataConfig(root=str(root), cache_shards=shards), base or str(tmp / "cache"),
                        log=lambda m: None, scene=scene)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> RayCache:
    return build(tmp_path_factory.mktemp("loader"), make_scene())


# A bigger scene for windows: 4 images x 16 x 15 = 960 pixels, 120 per shard. With 8 shards of
# 120 pixels x (6 bytes rgb16 x 2 + 8) = 2400 bytes streamed, 5000 bytes give windows of 2 shards.
BIG = dict(n=4, H=16, W=15)
WINDOW_MEMORY = 5000


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> RayCache:
    return build(tmp_path_factory.mktemp("loader-big"), make_scene(**BIG))


def global_batch(loaders: list[RayLoader], step: int | None = None) -> dict:
    """The ranks' local batches scattered into global order by their index."""
    out = {}
    for ld in loaders:
        batch = ld.next() if step is None else ld.batch_at(step)
        B = batch["n_global"]
        for k in BATCH_FIELDS:
            out.setdefault(k, torch.full((B, 3), float("nan")))[batch["index"]] = batch[k]
    assert all(not torch.isnan(v).any() for v in out.values()), "index must cover 0..B-1"
    return out


def pixel_map(cache: RayCache) -> dict:
    """rgb value -> global pixel index (the test scenes' random colours are distinct)."""
    n = cache.n_rays
    q = torch.zeros((n, 3), dtype=cache.read_shard(0).dtype)
    for s in range(cache.n_shards):
        q[torch.arange(s, n, cache.n_shards)] = cache.read_shard(s)
    rgb = cache.rgb(q)
    return {tuple(v): i for i, v in enumerate(rgb.tolist())}


def test_stream_positions_are_permutations_per_epoch():
    perms: dict = {}
    stream = stream_positions(7, 0, 7 * 3 + 2, seed=3, stream=0, shard=1, _perms=perms)
    for e in range(3):
        assert sorted(stream[7 * e:7 * e + 7].tolist()) == list(range(7))
    assert not torch.equal(stream[:7], stream[7:14])
    # any window (cached or not, crossing epochs) reads the same stream
    assert torch.equal(stream_positions(7, 5, 12, 3, 0, 1), stream[5:17])
    assert torch.equal(stream_positions(7, 5, 12, 3, 0, 1, perms), stream[5:17])
    assert not torch.equal(stream_positions(7, 0, 7, 4, 0, 1), stream[:7])  # seed matters
    assert not torch.equal(stream_positions(7, 0, 7, 3, 0, 2), stream[:7])  # shard matters
    # the same permutations as torch.randperm's default int64 ones (format-2 runs)
    from nerf_dist.loader import stream_seed
    g = torch.Generator().manual_seed(stream_seed(3, 0, 1, 1))
    assert torch.equal(stream[7:14], torch.randperm(7, generator=g))


def test_shard_batch_sizes():
    assert shard_batch_sizes(21, 8) == [3] * 5 + [2] * 3
    assert sum(shard_batch_sizes(1000, 64)) == 1000


def test_batches_are_the_scene_pixels_with_their_rays(cache):
    """Every ray of a batch is make_rays of its pixel (within an ulp of format 2's stored rays)."""
    scene = make_scene()
    ld = RayLoader(cache, 0, 1, 21, seed=5)
    for step in range(3):
        batch, pix = ld.batch_at(step), ld.pixels_at(step)
        img, rest = pix // 35, pix % 35
        for r in range(21):
            uv = torch.tensor([[rest[r] % 7 + 0.5, rest[r] // 7 + 0.5]])
            want = scene_rays(scene, int(img[r]), uv)
            for k in ("rays_o", "rays_d", "viewdirs"):
                torch.testing.assert_close(batch[k][r:r + 1], want[k], rtol=0, atol=2e-7)
        torch.testing.assert_close(batch["rgb"], scene.images.reshape(-1, 3)[pix], rtol=0,
                                   atol=7.7e-6)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_give_the_global_batch(cache, world_size):
    B = 21  # b_s = 3 on 14-ray shards, 2 on 13-ray ones: both wrap into epoch 1 mid-batch (steps 4, 6)
    ref = RayLoader(cache, 0, 1, B, seed=5)
    ranks = [RayLoader(cache, r, world_size, B, seed=5) for r in range(world_size)]
    for step in range(10):
        g = ref.next()
        assert g["n_global"] == B and g["rgb"].shape == (B, 3)
        assert torch.equal(g["index"], torch.arange(B))
        merged = global_batch(ranks)
        for k in BATCH_FIELDS:
            assert torch.equal(g[k], merged[k]), (step, k)
    assert ref.step == 10 and all(r.step == 10 for r in ranks)


def test_epoch_covers_each_shard_once(cache):
    B = 2 * S  # 2 rays per shard per step
    ld = RayLoader(cache, 0, 1, B, seed=0)
    n = max(cache.shard_sizes)
    per_shard: dict[int, list] = {s: [] for s in range(S)}
    for step in range(math.ceil(n / 2)):
        pix = ld.pixels_at(step)
        for s in range(S):
            per_shard[s].append(pix[2 * s:2 * s + 2])
    for s in range(S):
        got = torch.cat(per_shard[s])[:cache.shard_sizes[s]]
        # the first n rays of shard s are exactly its n pixels, each once
        assert sorted(got.tolist()) == list(range(s, cache.n_rays, S))


def test_each_rank_reads_only_its_shards(cache, monkeypatch):
    read = []
    orig = RayCache.read_shard
    monkeypatch.setattr(RayCache, "read_shard", lambda self, s: read.append(s) or orig(self, s))
    RayLoader(cache, 1, 4, 32, seed=0).next()
    assert read == [1, 5]


def test_resume_is_exact_even_on_another_world_size(cache):
    a = RayLoader(cache, 0, 1, 21, seed=9)
    for _ in range(6):
        a.next()
    sd = a.state_dict()
    assert sd == {"step": 6, "seed": 9, "rays_per_batch": 21, "n_shards": S, "window": S}
    b = RayLoader(cache, 0, 1, 21, seed=9)
    b.load_state_dict(sd)
    ranks = [RayLoader(cache, r, 2, 21, seed=9) for r in range(2)]
    for r in ranks:
        r.load_state_dict(sd)
    for _ in range(4):
        want = a.next()
        got = b.next()
        merged = global_batch(ranks)
        for k in BATCH_FIELDS:
            assert torch.equal(want[k], got[k]) and torch.equal(want[k], merged[k])
    with pytest.raises(ValueError, match="seed"):
        RayLoader(cache, 0, 1, 21, seed=10).load_state_dict(sd)
    # a format-2 run's state (no window) resumes on a cache that fits
    old = {k: v for k, v in sd.items() if k != "window"}
    RayLoader(cache, 0, 1, 21, seed=9).load_state_dict(old)


def test_precrop_batches_only_hold_crop_rays(cache):
    frac = 0.5
    ld = RayLoader(cache, 0, 1, 24, seed=2, precrop_steps=6, precrop_frac=frac)
    full = RayLoader(cache, 0, 1, 24, seed=2)
    outside_after = 0
    for step in range(10):
        batch, pix = ld.next(), ld.pixels_at(step)
        crops = cache.crop(pix).float()
        torch.testing.assert_close(batch["rgb"], make_scene().images.reshape(-1, 3)[pix],
                                   rtol=0, atol=7.7e-6)
        if step < 6:
            assert bool((crops < frac).all()), step
        else:
            outside_after += int((crops >= frac).sum())
            # after the warm-up the full stream starts at its beginning
            assert torch.equal(batch["rgb"], full.batch_at(step - 6)["rgb"])
    assert outside_after > 0


def test_shards_must_divide_by_world_size(cache):
    with pytest.raises(ValueError, match="cache_shards"):
        RayLoader(cache, 0, 3, 24, seed=0)


def test_device_and_dtypes(cache):
    b = RayLoader(cache, 0, 2, 16, seed=0, device="cpu").next()
    assert set(b) == set(BATCH_FIELDS) | {"n_global", "index", "image", "alpha"}
    assert all(b[k].dtype == torch.float32 and b[k].shape == (8, 3) for k in BATCH_FIELDS)
    assert b["image"].dtype == torch.int64 and b["image"].shape == (8,)
    assert b["alpha"].dtype == torch.float32 and b["alpha"].shape == (8,)


def test_batches_carry_image_index_and_alpha(cache):
    """image = global pixel index // (H W), the cache's image order; alpha from rgba8 caches."""
    loader = RayLoader(cache, 0, 1, 16, seed=0)
    b = loader.batch_at(3)
    assert torch.equal(b["image"], loader.pixels_at(3) // (cache.H * cache.W))
    assert int(b["image"].max()) < cache.n_images
    assert bool(((b["alpha"] >= 0) & (b["alpha"] <= 1)).all())
    if cache.mode != "rgba8":
        assert bool((b["alpha"] == 1).all())


def test_precrop_without_crop_rays_raises_on_every_rank(tmp_path):
    # W == S: shard s holds only column s, so the outer-column shards have no centre-crop ray
    c = build(tmp_path, make_scene(W=8))
    for rank in range(2):  # rank 1 owns inner columns too, but must fail the same way
        with pytest.raises(ValueError, match="precrop_frac"):
            RayLoader(c, rank, 2, 16, seed=0, precrop_steps=5, precrop_frac=0.5)
    RayLoader(c, 0, 2, 16, seed=0, precrop_steps=5, precrop_frac=1.0)  # every pixel qualifies


# ----------------------------------------------------------------------------- windows

def test_window_plan_is_a_property_of_the_run():
    # fits: one window of every shard (the format-2 scheme)
    assert plan_window(960, 8, 40, 6, None).window == 8
    assert plan_window(960, 8, 40, 6, 8 * 120 * 14).window == 8
    p = plan_window(960, 8, 40, 6, WINDOW_MEMORY)
    assert (p.window, p.n_windows, p.phase_steps, p.b) == (2, 4, 6, [20, 20])
    assert sorted(s for w in range(4) for s in p.shards(w)) == list(range(8))  # each shard once
    assert p.shards(0) == [0, 5] and all(p.position(s) == j for w in range(4)
                                         for j, s in enumerate(p.shards(w)))
    with pytest.raises(ValueError, match=r"data.cache_memory=1000 bytes cannot hold one shard.*"
                                         r"at least 2400.*data.cache_shards >= 20"):
        plan_window(960, 8, 40, 6, 1000)


def test_windowed_cycle_visits_every_pixel_exactly_once(big):
    ld = RayLoader(big, 0, 1, 40, seed=7, cache_memory=WINDOW_MEMORY)
    plan = ld.plan
    assert (plan.window, plan.n_windows, plan.phase_steps) == (2, 4, 6)
    cycle = plan.n_windows * plan.phase_steps  # 24 steps x 40 rays = 960 = every pixel
    for c in range(2):
        seen = torch.cat([ld.pixels_at(c * cycle + k) for k in range(cycle)])
        assert sorted(seen.tolist()) == list(range(big.n_rays)), c
        # each step draws from 2 shards spread over the scene: rays of several images
        assert all(len(set((ld.pixels_at(c * cycle + k) // 240).tolist())) >= 3 for k in range(cycle))
    # cycles reshuffle: another window order and other permutations
    assert not torch.equal(ld.pixels_at(0), ld.pixels_at(cycle))
    # and the batches hold those pixels' colours
    colour = pixel_map(big)
    for k in (0, 5, 6, 23, 24):
        got = [colour[tuple(v)] for v in ld.batch_at(k)["rgb"].tolist()]
        assert got == ld.pixels_at(k).tolist()


def test_windowed_one_and_two_ranks_give_the_same_global_batches(big):
    one = RayLoader(big, 0, 1, 40, seed=3, cache_memory=WINDOW_MEMORY)
    two = [RayLoader(big, r, 2, 40, seed=3, cache_memory=WINDOW_MEMORY) for r in range(2)]
    assert all(ld.plan == one.plan for ld in two)
    for step in range(30):  # crosses 5 window changes and a cycle
        want = one.next()
        got = global_batch(two)
        for k in BATCH_FIELDS:
            assert torch.equal(want[k], got[k]), (step, k)
    # each rank read only its own shards, one window at a time
    for r, ld in enumerate(two):
        assert ld.store.reads and all(s % 2 == r for s in ld.store.reads)


CROP_MEMORY = 6000  # the warm-up's crop positions cost more: 120 x (12 + 12) x 2 shards fits


def test_windowed_resume_mid_window_is_exact(big):
    a = RayLoader(big, 0, 1, 40, seed=11, cache_memory=CROP_MEMORY, precrop_steps=4)
    for _ in range(9):  # the crop stream's first window (4 steps), then 5 full steps: mid-visit
        a.next()
    sd = a.state_dict()
    assert sd["window"] == 2
    b = RayLoader(big, 0, 1, 40, seed=11, cache_memory=CROP_MEMORY, precrop_steps=4)
    b.load_state_dict(sd)
    ranks = [RayLoader(big, r, 2, 40, seed=11, cache_memory=CROP_MEMORY, precrop_steps=4)
             for r in range(2)]
    for r in ranks:
        r.load_state_dict(sd)
    for _ in range(12):
        want, got, merged = a.next(), b.next(), global_batch(ranks)
        for k in BATCH_FIELDS:
            assert torch.equal(want[k], got[k]) and torch.equal(want[k], merged[k])
    # another data.cache_memory would draw another sequence: refused, naming the key
    with pytest.raises(ValueError, match="windows of 2 shards.*data.cache_memory"):
        RayLoader(big, 0, 1, 40, seed=11, precrop_steps=4).load_state_dict(sd)
    assert max(ld.bytes_held() for ld in ranks) <= CROP_MEMORY // 2


@pytest.mark.parametrize("world_size", [1, 2])
def test_memory_held_stays_within_the_bound_and_windows_are_read_ahead(big, world_size):
    loaders = [RayLoader(big, r, world_size, 40, seed=1, cache_memory=WINDOW_MEMORY)
               for r in range(world_size)]
    try:
        peak = 0
        for step in range(60):
            for ld in loaders:
                ld.next()
                peak = max(peak, ld.bytes_held())
                assert ld.bytes_held() <= WINDOW_MEMORY // world_size, step
        # the bound is used: a window of 2 x 120 pixels in use (colours + 2 permutations at most)
        # and the next one on its way, split over the ranks
        assert peak >= 2 * 120 * (6 + 4 + 6) // world_size
        # every window after the first was read ahead, while the one before was in use
        for ld in loaders:
            # NOTE: the last read-ahead may still be in flight on a loaded machine: let it land
            # before counting (a read is recorded when it completes).
            if ld.store._ahead is not None:
                ld.store._ahead[1].result()
            assert ld.store.sync_reads == 1 and len(ld.store.reads) >= 10 * 2 // world_size
    finally:
        for ld in loaders:
            ld.close()


def test_whole_cache_within_the_budget_is_the_unbounded_scheme(big):
    a = RayLoader(big, 0, 1, 40, seed=2)
    b = RayLoader(big, 0, 1, 40, seed=2, cache_memory=8 * 120 * 14)  # exactly fits
    assert b.plan.n_windows == 1 and b.store._pool is None
    for _ in range(30):
        x, y = a.next(), b.next()
        assert all(torch.equal(x[k], y[k]) for k in BATCH_FIELDS)
    assert b.bytes_held() <= 8 * 120 * 14


def test_windows_that_do_not_split_over_the_ranks_are_refused(big):
    memory = 1 * 120 * 20 + 100  # windows of 1 shard
    assert RayLoader(big, 0, 1, 40, seed=0, cache_memory=memory).plan.window == 1
    with pytest.raises(ValueError, match=r"windows of 1 shards.*2 ranks.*data.cache_memory to at "
                                         r"least 4800 \(windows of 2 shards"):
        RayLoader(big, 0, 2, 40, seed=0, cache_memory=memory)
    with pytest.raises(ValueError, match="rays_per_batch=400 draws 200 rays"):
        RayLoader(big, 0, 1, 400, seed=0, cache_memory=WINDOW_MEMORY)


def _visits(ld: RayLoader, steps: int) -> list[int]:
    """The windows the first `steps` steps enter, in order (a window change or the first step)."""
    ws = [ld.plan.at(ld.seed, k)[0] for k in range(steps)]
    return [w for k, w in enumerate(ws) if k == 0 or w != ws[k - 1]]


def _land(ld: RayLoader) -> None:
    """Let a read-ahead in flight finish (a read is recorded when it completes)."""
    if ld.store._ahead is not None:
        with contextlib.suppress(Exception):
            ld.store._ahead[1].result()


def test_resume_mid_window_reads_that_window_once(big):
    ld = RayLoader(big, 1, 2, 40, seed=3, cache_memory=WINDOW_MEMORY)
    plan, T = ld.plan, ld.plan.phase_steps
    step = 2 * T + 3  # the middle of the third visit
    w, w0, w_next = (plan.at(3, k)[0] for k in (step, 0, 3 * T))
    assert w not in (w0, w_next), "pick a seed whose third window is neither the first nor the next"
    assert ld.store.reads == []  # nothing is read when the loader is built
    sd = ld.state_dict()
    sd["step"] = step
    ld.load_state_dict(sd)
    mine = [s for s in plan.shards(w) if s % 2 == 1]
    try:
        for _ in range(T - 3):  # the rest of that visit
            ld.next()
        _land(ld)
        # that window once, then the next one read ahead; window 0 never
        assert ld.store.reads == mine + [s for s in plan.shards(w_next) if s % 2 == 1]
        assert ld.store.sync_reads == 1
    finally:
        ld.close()


def test_a_read_ahead_that_failed_is_read_again_at_the_switch(big, monkeypatch, capsys):
    """A transient failure while reading a window ahead (a whole visit before it is needed)
    does not stop the run: the window is read again when entered; the batches do not change."""
    clean = RayLoader(big, 0, 1, 40, seed=1, cache_memory=WINDOW_MEMORY)
    T = clean.plan.phase_steps
    want = [clean.next() for _ in range(2 * T)]
    clean.close()
    ld = RayLoader(big, 0, 1, 40, seed=1, cache_memory=WINDOW_MEMORY)
    second = ld.plan.shards(ld.plan.at(1, T)[0])
    failed = []
    orig = RayCache.read_shard

    def flaky(self, s, verify=True):
        if s == second[0] and not failed:
            failed.append(s)
            raise ShardReadError(f"cannot read ray cache shard {s}: simulated outage", s)
        return orig(self, s, verify)
    monkeypatch.setattr(RayCache, "read_shard", flaky)
    try:
        for step in range(2 * T):
            got = ld.next()
            assert all(torch.equal(want[step][k], got[k]) for k in BATCH_FIELDS), step
    finally:
        ld.close()
    assert failed and ld.store.sync_reads == 2  # the first window, and the retried one
    assert f"reading ray cache shards {second}" in capsys.readouterr().err


def test_close_stops_the_read_ahead_thread(big):
    ld = RayLoader(big, 0, 1, 40, seed=1, cache_memory=WINDOW_MEMORY)
    ld.next()  # holds the first window and starts reading the next one
    threads = list(ld.store._pool._threads)
    assert threads and all(t.is_alive() for t in threads)
    ld.close()
    assert not any(t.is_alive() for t in threads)
    ld.close()  # idempotent
    assert ld.next()["rgb"].shape == (40, 3)  # still usable: reads on the calling thread


def test_watch_covers_window_reads_and_the_switch(big, monkeypatch):
    calls = []

    @contextlib.contextmanager
    def watch(what):
        calls.append(what)
        yield
    ld = RayLoader(big, 0, 2, 40, seed=1, cache_memory=WINDOW_MEMORY, watch=watch)
    for _ in range(30):
        ld.next()
    ld.close()
    visits = _visits(ld, 30)
    # per window entered: the switch (every rank's shards), inside it this rank's read; nothing
    # on the other steps
    switches = [c for c in calls if c.startswith("every rank's ray cache shards of window")]
    reads = [c for c in calls if c.startswith("this rank's ray cache shards")]
    assert len(switches) == len(reads) == len(visits) and len(calls) == 2 * len(visits)
    assert [int(c.split("window ")[1].split(" ")[0]) for c in switches] == visits
    # with the stall watchdog: a slow read is named while it lasts
    orig = RayCache.read_shard
    monkeypatch.setattr(RayCache, "read_shard", lambda self, s: time.sleep(0.4) or orig(self, s))
    buf = io.StringIO()
    dog = StallWatchdog(rank=0, warn_s=0.1, stream=buf, poll_s=0.02)
    try:
        slow = RayLoader(big, 0, 2, 40, seed=1, cache_memory=WINDOW_MEMORY, watch=dog.waiting)
        slow.next()
        slow.close()
    finally:
        dog.close()
    assert "for this rank's ray cache shards [" in buf.getvalue()


DAMAGE_SEED, DAMAGE_TIMEOUT_S = 3, 30.0


def _damaged_worker(rank, world_size, init_file, url, out):
    import torch.distributed as tdist
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size,
                             timeout=datetime.timedelta(seconds=DAMAGE_TIMEOUT_S))
    res = {"detect": None, "steps": 0, "err": "", "storage": False}
    orig = RayCache.read_shard

    def spy(self, s, verify=True):
        try:
            return orig(self, s, verify)
        except RayCacheError:
            res["detect"] = res["detect"] or time.time()
            raise
    RayCache.read_shard = spy  # NOTE: this spawned process only
    ld = RayLoader(RayCache.open(url), rank, world_size, 40, seed=DAMAGE_SEED,
                   cache_memory=WINDOW_MEMORY)
    try:
        grad = torch.zeros(1)
        for _ in range(5 * ld.plan.phase_steps):
            ld.next()
            res["steps"] += 1
            tdist.all_reduce(grad)  # stands for the gradient all-reduce of a training step
    except Exception as e:  # noqa: BLE001 - the test reads it
        res["err"], res["storage"] = f"{type(e).__name__}: {e}", isinstance(e, StorageError)
    ld.close()
    res["exit"] = time.time()
    torch.save(res, f"{out}.{rank}")
    tdist.destroy_process_group()


def test_a_damaged_shard_in_a_later_window_stops_every_rank_naming_it(tmp_path):
    """Two gloo ranks stream windows; a shard of the third window visited (rank 1's) is
    truncated after the build. Rank 1 finds it (reading that window ahead); both ranks stop at
    the step that enters the window, each naming the shard, long before dist.timeout_s (without
    the agreement rank 0 would wait in the all-reduce until then)."""
    import torch.multiprocessing as mp
    cache = build(tmp_path, make_scene(**BIG))
    probe = RayLoader(cache, 0, 2, 40, seed=DAMAGE_SEED, cache_memory=WINDOW_MEMORY)
    T = probe.plan.phase_steps
    w = probe.plan.at(DAMAGE_SEED, 2 * T)[0]
    assert w not in (probe.plan.at(DAMAGE_SEED, 0)[0], probe.plan.at(DAMAGE_SEED, T)[0])
    (bad,) = [s for s in probe.plan.shards(w) if s % 2 == 1]
    path = os.path.join(cache.url, f"shard-{bad:05d}.bin")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    out = str(tmp_path / "out")
    t0 = time.time()
    mp.spawn(_damaged_worker, args=(2, str(tmp_path / "init"), cache.url, out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    name = f"shard-{bad:05d}.bin"
    # the owner raises its own storage error; its peer names the owner and the shard
    assert res[1]["storage"] and res[1]["err"].startswith("ShardReadError: ray cache shard ")
    assert f"{name} is damaged" in res[1]["err"]
    assert res[0]["err"].startswith(f"RayCacheError: rank 1 failed while reading its ray cache "
                                    f"shards for step {2 * T} (window {w})")
    assert name in res[0]["err"] and not res[0]["storage"]
    # both stopped at the step that enters the window, not one step later in a collective
    assert res[0]["steps"] == res[1]["steps"] == 2 * T
    detect = res[1]["detect"]
    assert res[0]["detect"] is None and detect is not None and t0 < detect
    # ordering, not a wall-clock bound: every rank exits before dist.timeout_s after detection
    assert all(detect < r["exit"] < detect + DAMAGE_TIMEOUT_S for r in res)
    print(f"damaged {name} (window {w}, entered at step {2 * T}): found at +"
          f"{detect - t0:.3f} s; rank 0 exits {res[0]['exit'] - detect:.3f} s and rank 1 "
          f"{res[1]['exit'] - detect:.3f} s after detection (dist.timeout_s={DAMAGE_TIMEOUT_S:g})")


# ----------------------------------------------------------------------------- object storage

def _s3_worker(rank, world_size, init_file, url, out):
    import torch.distributed as tdist
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size)
    try:
        cache = RayCache.open(url)
        ld = RayLoader(cache, rank, world_size, 40, seed=5, cache_memory=WINDOW_MEMORY)
        batches, held = [], 0
        for _ in range(30):
            batches.append(ld.next())
            held = max(held, ld.bytes_held())
        ld.close()
        torch.save({"batches": batches, "held": held, "reads": ld.store.reads}, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def test_two_ranks_stream_windows_from_s3(tmp_path, s3_server):
    import torch.multiprocessing as mp
    base = f"s3://{s3_server['bucket']}/loader-{uuid.uuid4().hex[:8]}"
    cache = build(tmp_path, make_scene(**BIG), base=base)
    assert cache.url.startswith("s3://")
    local = build(tmp_path, make_scene(**BIG))
    ref = RayLoader(local, 0, 1, 40, seed=5)  # the whole cache in memory, local files
    out = str(tmp_path / "out")
    mp.spawn(_s3_worker, args=(2, str(tmp_path / "init"), cache.url, out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    streamed = RayLoader(local, 0, 1, 40, seed=5, cache_memory=WINDOW_MEMORY)
    for step in range(30):
        want = streamed.next()
        got = {}
        for r in range(2):
            b = res[r]["batches"][step]
            for k in BATCH_FIELDS:
                got.setdefault(k, torch.zeros(40, 3))[b["index"]] = b[k]
        for k in BATCH_FIELDS:
            assert torch.equal(want[k], got[k]), (step, k)
    assert all(res[r]["held"] <= WINDOW_MEMORY // 2 for r in range(2))
    assert all(s % 2 == r for r in range(2) for s in res[r]["reads"])
    # the window scheme draws the same pixels as the unbounded one, in another order: same set
    # over a cycle (24 steps)
    seen_ref = sorted(i for k in range(24) for i in ref.pixels_at(k).tolist())
    seen = sorted(i for k in range(24) for i in streamed.pixels_at(k).tolist())
    assert seen == seen_ref == list(range(960))
