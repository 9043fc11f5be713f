"""RayLoader: world-size-independent global batches, owned-shard reads, resume, centre crop."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nerf_dist.config import DataConfig
from nerf_dist.loader import BATCH_FIELDS, RayLoader, shard_batch_sizes, stream_positions
from nerf_dist.ray_cache import RayCache, ensure_cache
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


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> RayCache:
    tmp = tmp_path_factory.mktemp("loader")
    root = tmp / "scene"
    write_root(root)
    return ensure_cache(DataConfig(root=str(root), cache_shards=S), str(tmp / "cache"),
                        log=lambda m: None, scene=make_scene())


def split_by_shard(batch: dict, shards: list[int], b: list[int]) -> dict[int, dict]:
    out, start = {}, 0
    for s in shards:
        out[s] = {k: batch[k][start:start + b[s]] for k in BATCH_FIELDS}
        start += b[s]
    assert start == batch["rgb"].shape[0]
    return out


def gather_ranks(loaders: list[RayLoader]) -> dict:
    """Concatenate the ranks' local batches in shard order (= the global batch)."""
    parts: dict[int, dict] = {}
    index = []
    for ld in loaders:
        batch = ld.next()
        index.append(batch["index"])
        parts.update(split_by_shard(batch, ld.shards, ld.b))
    # "index" = positions of the local rays in the global batch: together exactly 0..B-1
    assert torch.equal(torch.cat(index).sort().values, torch.arange(sum(loaders[0].b)))
    return {k: torch.cat([parts[s][k] for s in sorted(parts)]) for k in BATCH_FIELDS}


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


def test_shard_batch_sizes():
    assert shard_batch_sizes(21, 8) == [3] * 5 + [2] * 3
    assert sum(shard_batch_sizes(1000, 64)) == 1000


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_give_the_global_batch(cache, world_size):
    B = 21  # b_s = 3 on 14-ray shards, 2 on 13-ray ones: both wrap into epoch 1 mid-batch (steps 4, 6)
    ref = RayLoader(cache, 0, 1, B, seed=5)
    ranks = [RayLoader(cache, r, world_size, B, seed=5) for r in range(world_size)]
    for step in range(10):
        g = ref.next()
        assert g["n_global"] == B and g["rgb"].shape == (B, 3)
        assert torch.equal(g["index"], torch.arange(B))
        assert torch.equal(torch.cat([g[k] for k in BATCH_FIELDS], 1),
                           torch.cat([v for v in gather_ranks(ranks).values()], 1)), step
    assert ref.step == 10 and all(r.step == 10 for r in ranks)


def test_epoch_covers_each_shard_once(cache):
    B = 2 * S  # 2 rays per shard per step
    ld = RayLoader(cache, 0, 1, B, seed=0)
    n = max(cache.shard_sizes)
    per_shard: dict[int, list] = {s: [] for s in range(S)}
    data = {s: cache.read_shard(s) for s in range(S)}
    for _ in range(math.ceil(n / 2)):
        for s, part in split_by_shard(ld.next(), ld.shards, ld.b).items():
            per_shard[s].append(part["rays_d"])
    for s in range(S):
        got = torch.cat(per_shard[s])[:cache.shard_sizes[s]]
        # the first n rays of shard s are exactly its n rays, each once
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, data[s]["rays_d"].tolist()))


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
    assert sd == {"step": 6, "seed": 9, "rays_per_batch": 21, "n_shards": S}
    b = RayLoader(cache, 0, 1, 21, seed=9)
    b.load_state_dict(sd)
    ranks = [RayLoader(cache, r, 2, 21, seed=9) for r in range(2)]
    for r in ranks:
        r.load_state_dict(sd)
    for _ in range(4):
        want = a.next()
        got = b.next()
        for k in BATCH_FIELDS:
            assert torch.equal(want[k], got[k])
        merged = gather_ranks(ranks)
        for k in BATCH_FIELDS:
            assert torch.equal(want[k], merged[k])
    with pytest.raises(ValueError, match="seed"):
        RayLoader(cache, 0, 1, 21, seed=10).load_state_dict(sd)


def test_precrop_batches_only_hold_crop_rays(cache):
    crop_of = {}
    for s in range(S):
        d = cache.read_shard(s)
        for ro, rd, c in zip(d["rays_o"].tolist(), d["rays_d"].tolist(), d["crop"].float().tolist()):
            crop_of[tuple(ro + rd)] = c
    frac = 0.5
    ld = RayLoader(cache, 0, 1, 24, seed=2, precrop_steps=6, precrop_frac=frac)
    full = RayLoader(cache, 0, 1, 24, seed=2)
    outside_after = 0
    for step in range(10):
        batch = ld.next()
        crops = [crop_of[tuple(k)] for k in torch.cat([batch["rays_o"], batch["rays_d"]], 1).tolist()]
        if step < 6:
            assert all(c < frac for c in crops), step
        else:
            outside_after += sum(c >= frac for c in crops)
            # after the warm-up the full stream starts at its beginning
            assert torch.equal(batch["rgb"], full.batch_at(step - 6)["rgb"])
    assert outside_after > 0


def test_shards_must_divide_by_world_size(cache):
    with pytest.raises(ValueError, match="cache_shards"):
        RayLoader(cache, 0, 3, 24, seed=0)


def test_device_and_dtypes(cache):
    b = RayLoader(cache, 0, 2, 16, seed=0, device="cpu").next()
    assert set(b) == set(BATCH_FIELDS) | {"n_global", "index"}
    assert all(b[k].dtype == torch.float32 and b[k].shape == (8, 3) for k in BATCH_FIELDS)


def test_precrop_without_crop_rays_raises_on_every_rank(tmp_path):
    # W == S: shard s holds only column s, so the outer-column shards have no centre-crop ray
    root = tmp_path / "scene"
    write_root(root)
    c = ensure_cache(DataConfig(root=str(root), cache_shards=8), str(tmp_path / "cache"),
                     log=lambda m: None, scene=make_scene(W=8))
    for rank in range(2):  # rank 1 owns inner columns too, but must fail the same way
        with pytest.raises(ValueError, match="precrop_frac"):
            RayLoader(c, rank, 2, 16, seed=0, precrop_steps=5, precrop_frac=0.5)
    RayLoader(c, 0, 2, 16, seed=0, precrop_steps=5, precrop_frac=1.0)  # every pixel qualifies


def test_prefetch_gives_the_same_batches(cache):
    plain = RayLoader(cache, 1, 2, 21, seed=4, precrop_steps=2)
    fetch = RayLoader(cache, 1, 2, 21, seed=4, precrop_steps=2, prefetch=True)
    try:
        for step in range(6):
            if step == 3:  # a resume mid-run drops the stale prefetched batch
                sd = plain.state_dict()
                sd["step"] = 1
                plain.load_state_dict(sd)
                fetch.load_state_dict(sd)
            a, b = plain.next(), fetch.next()
            for k in BATCH_FIELDS:
                assert torch.equal(a[k], b[k]), (step, k)
    finally:
        fetch.close()
