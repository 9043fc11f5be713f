"""Pixel cache (format 3): build, round-trip, colour modes, reuse/rebuild by key, streamed and
multi-rank builds, fsspec URLs, verification, retries on flaky storage, errors."""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import time
import uuid

import fsspec
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

import nerf_dist.ray_cache.build as rc_build
from nerf_dist import ray_cache, storage
from nerf_dist.config import DataConfig
from nerf_dist.ray_cache import (RayCache, RayCacheError, ShardReadError, build_shards, cache_key,
                                 ensure_cache, write_parts, write_shards)
from nerf_dist.render_ops.rays import scene_rays
from nerf_dist.scenes import load_scene
from nerf_dist.scenes.base import Scene

QUIET = {"log": lambda m: None}


def make_scene(n=3, H=5, W=8, ndc=False, seed=0, bits8=False) -> Scene:
    g = torch.Generator().manual_seed(seed)
    focal = 7.0
    K = torch.tensor([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1.0]]).expand(n, 3, 3).clone()
    c2w = torch.zeros(n, 3, 4)
    for i in range(n):
        a = 0.3 * i
        c2w[i, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0],
                                       [-math.sin(a), 0, math.cos(a)]])
        c2w[i, :3, 3] = torch.tensor([0.1 * i, -0.2 * i, 3.0])
    images = torch.rand(n, H, W, 3, generator=g)
    if bits8:
        images = torch.randint(0, 256, (n, H, W, 3), generator=g).float() / 255.0
    return Scene(images=images, K=K, c2w=c2w,
                 near=0.0 if ndc else 2.0, far=1.0 if ndc else 6.0,
                 aabb=torch.tensor([[-1.5] * 3, [1.5] * 3]), background=torch.ones(3),
                 files=[f"/scene/r_{i}.png" for i in range(n)], split="train",
                 ndc=ndc, ndc_focal=focal if ndc else 0.0, ndc_size=(H, W) if ndc else (0, 0))


def make_root(tmp_path, n=3) -> str:
    """A scene folder with the files cache_key looks at (never decoded in these tests)."""
    root = tmp_path / "scene"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        frames = [{"file_path": f"./{split}/r_{i}", "transform_matrix": [[1, 0, 0, 0]] * 4}
                  for i in range(n)]
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7,
                                                                   "frames": frames}))
        for i in range(n):
            (root / split / f"r_{i}.png").write_bytes(b"not really a png %d" % i)
    return str(root)


def assemble(cache: RayCache) -> dict:
    """Every pixel back in global order: rgb [n, 3] and its rays, from the shards + manifest."""
    S, n = cache.n_shards, cache.n_rays
    q = torch.zeros((n, cache.channels), dtype=cache.read_shard(0).dtype)
    for s in range(S):
        d = cache.read_shard(s)
        assert d.shape == (cache.shard_sizes[s], cache.channels)
        q[torch.arange(s, n, S)] = d
    out = cache.rays(torch.arange(n))
    out["rgb"] = cache.rgb(q)
    return out


def expected(scene) -> dict:
    parts = [scene_rays(scene, i) for i in range(scene.n)]
    out = {k: torch.cat([p[k] for p in parts]) for k in ("rays_o", "rays_d", "viewdirs")}
    out["rgb"] = scene.images.reshape(-1, 3)
    return out


def assert_close(got: dict, want: dict, rgb_atol=7.7e-6, ray_atol=2e-7) -> None:
    for k in ("rays_o", "rays_d", "viewdirs"):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=ray_atol, msg=k)
    torch.testing.assert_close(got["rgb"], want["rgb"], rtol=0, atol=rgb_atol, msg="rgb")


@pytest.mark.parametrize("ndc", [False, True])
def test_round_trip_equals_scene_rays(tmp_path, ndc):
    scene = make_scene(ndc=ndc)
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=7)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), scene=scene, **QUIET)
    assert cache.n_shards == 7 and cache.n_rays == 3 * 5 * 8
    assert (cache.H, cache.W, cache.n_images) == (5, 8, 3)
    assert max(cache.shard_sizes) - min(cache.shard_sizes) <= 1
    assert cache.meta["ndc"] is ndc and cache.meta["split"] == "train"
    assert cache.meta["near"] == scene.near and cache.meta["files"] == scene.files
    assert cache.url == os.path.join(str(tmp_path / "cache"), cache_key(cfg)[:16])
    # float images: rgb16, 6 bytes a pixel on disk and nothing else per pixel
    assert cache.mode == "rgb16" and cache.bytes_per_pixel == 6
    assert [c["bytes"] for c in cache.checksums] == [6 * n for n in cache.shard_sizes]
    assert torch.equal(cache.K, scene.K) and torch.equal(cache.c2w, scene.c2w)  # exact in JSON
    assert_close(assemble(cache), expected(scene))
    # every shard covers every image evenly
    for s in range(7):
        img = torch.arange(s, cache.n_rays, 7) // (5 * 8)
        counts = torch.bincount(img, minlength=3)
        assert counts.max() - counts.min() <= 1


def test_8bit_colours_are_stored_in_3_bytes_and_come_back_bit_for_bit(tmp_path):
    scene = make_scene(bits8=True)
    cache = ensure_cache(DataConfig(root=make_root(tmp_path), cache_shards=4),
                         str(tmp_path / "cache"), scene=scene, **QUIET)
    assert cache.mode == "rgb8" and cache.total_bytes == 3 * cache.n_rays
    got = assemble(cache)
    assert torch.equal(got["rgb"], scene.images.reshape(-1, 3))


def _write_pngs(root, images: list[np.ndarray], angle=0.7) -> str:
    os.makedirs(root / "train", exist_ok=True)
    frames = []
    for i, img in enumerate(images):
        iio.imwrite(root / "train" / f"r_{i}.png", img)
        a = 0.4 * i
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": [
            [math.cos(a), 0, math.sin(a), 0.1 * i], [0, 1, 0, 0], [-math.sin(a), 0, math.cos(a), 4],
            [0, 0, 0, 1]]})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": angle,
                                                            "frames": frames}))
    return str(root)


@pytest.mark.parametrize("kind,downscale,mode,exact", [
    ("rgba", 1, "rgba8", True), ("rgb", 1, "rgb8", True), ("grey16", 1, "rgb16", True),
    ("rgba", 2, "rgb16", False), ("mixed", 1, "rgba8", True)])
def test_colours_from_image_files_match_the_reader(tmp_path, kind, downscale, mode, exact):
    rng = np.random.default_rng(3)
    if kind == "grey16":
        imgs = [rng.integers(0, 65536, (6, 8), dtype=np.uint16) for _ in range(3)]
    else:
        imgs = [rng.integers(0, 256, (6, 8, 4), dtype=np.uint8) for _ in range(3)]
        if kind == "rgb":
            imgs = [x[..., :3] for x in imgs]
        if kind == "mixed":
            imgs[1] = imgs[1][..., :3]
    root = _write_pngs(tmp_path / "scene", imgs)
    cfg = DataConfig(root=root, cache_shards=4, downscale=downscale, white_background=False)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), **QUIET)  # streamed from the files
    scene = load_scene(cfg, "train")
    assert cache.mode == mode
    got = assemble(cache)
    if exact:
        assert torch.equal(got["rgb"], scene.images.reshape(-1, 3))
    else:
        assert float((got["rgb"] - scene.images.reshape(-1, 3)).abs().max()) <= 0.5 / 65535 + 1e-7
    assert_close(got, expected(scene))


def test_reuse_and_rebuild_on_change(tmp_path, monkeypatch):
    scene = make_scene()
    calls = []

    def fake_open(data_cfg, split):
        calls.append((data_cfg, split))
        return rc_build.InMemory(scene)

    monkeypatch.setattr(rc_build, "open_scene", fake_open)
    root = make_root(tmp_path)
    base = str(tmp_path / "cache")
    cfg = DataConfig(root=root, cache_shards=4)
    logs = []
    c1 = ensure_cache(cfg, base, log=logs.append)
    assert len(calls) == 1 and calls[0][1] == "train"
    assert any("wrote 4/4" in m for m in logs) and any("6 bytes a pixel" in m for m in logs)
    c2 = ensure_cache(cfg, base, log=logs.append)
    assert len(calls) == 1, "an unchanged scene + settings must reuse the cache"
    assert c2.url == c1.url and c2.key == c1.key
    # data.cache_memory changes how a cache is built, not what it holds: same key
    assert cache_key(DataConfig(root=root, cache_shards=4, cache_memory="64KiB")) == c1.key

    # a setting that changes rays -> another key and folder
    c3 = ensure_cache(DataConfig(root=root, cache_shards=4, downscale=2), base, log=logs.append)
    assert len(calls) == 2 and c3.url != c1.url
    # a changed scene file -> another key
    k_before = cache_key(cfg)
    img = os.path.join(root, "train", "r_0.png")
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(cfg) != k_before
    k_before = cache_key(cfg)
    with open(os.path.join(root, "transforms_train.json"), "a") as f:
        f.write(" ")
    assert cache_key(cfg) != k_before
    assert cache_key(cfg, "val") != cache_key(cfg, "train")
    assert cache_key(cfg) == cache_key(cfg)
    # a file the reader does not read does not change the key (nor does another split's image)
    k_before = cache_key(cfg)
    (tmp_path / "scene" / "notes.txt").write_text("hi")
    (tmp_path / "scene" / "train" / "r_9.png").write_bytes(b"not listed")
    os.utime(os.path.join(root, "val", "r_0.png"), ns=(1, 1))
    assert cache_key(cfg) == k_before
    # nor does data.allow_outside_root by itself (it only admits files)
    assert cache_key(DataConfig(root=root, cache_shards=4, allow_outside_root=True)) == k_before


@pytest.mark.parametrize("budget", [1 << 30, 200])
def test_ranks_and_budgets_build_the_same_bytes(tmp_path, budget):
    """1 rank from memory, 1 rank through parts, 2 and 3 ranks by hand: the same shards."""
    scene = make_scene(n=5, H=6, W=7)
    one = build_shards(scene, str(tmp_path / "one"), 6, **QUIET)
    src = rc_build.InMemory(scene)
    for world in (1, 2, 3):
        url = str(tmp_path / f"w{world}-{budget}")
        infos = [write_parts(src, url, 6, r, world, budget, **QUIET) for r in range(world)]
        flushes = [f for fl, _, _ in infos for f in fl]
        if world > 1 or budget < 1000:
            assert flushes and all(frames is None for _, _, frames in infos)
            assert sorted(os.listdir(os.path.join(url, "parts"))) == sorted(f["name"] for f in flushes)
        if budget < 1000:  # 200 bytes: a part every frame (each frame is 42 pixels x 6 bytes)
            assert len(flushes) == 5
        mode = ray_cache.build.widest(m for _, m, _ in infos)
        sums = {}
        for r in range(world):
            sums.update(write_shards(src, url, 6, flushes, mode, r, world, infos[r][2], **QUIET))
        assert sums == one, (world, budget)


def test_manifest_needs_every_shard(tmp_path):
    scene = make_scene()
    src = rc_build.InMemory(scene)
    url = str(tmp_path / "c")
    flushes, mode, _ = write_parts(src, url, 4, 0, 2, **QUIET)
    flushes += write_parts(src, url, 4, 1, 2, **QUIET)[0]
    sums = write_shards(src, url, 4, flushes, mode, 0, 2, **QUIET)
    with pytest.raises(RayCacheError, match="shard-00001.bin"):
        ray_cache.write_manifest(src, url, "k", 4, sums, mode)
    write_shards(src, url, 4, flushes, mode, 1, 2, **QUIET)  # files, no checksums
    with pytest.raises(RayCacheError, match="without a checksum.*shard-00001.bin"):
        ray_cache.write_manifest(src, url, "k", 4, sums, mode)


def test_memory_url(tmp_path):
    scene = make_scene(H=64, W=64)  # 24 KiB a frame: the 64 KiB budget flushes two parts
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4, cache_memory="64KiB")
    base = f"memory://nerf-dist-test-{uuid.uuid4().hex[:8]}/ray_cache"
    cache = ensure_cache(cfg, base, scene=scene, **QUIET)
    assert cache.url.startswith("memory://")
    assert_close(assemble(RayCache.open(cache.url)), expected(scene))
    assert not storage.listdir(storage.join(cache.url, "parts"))  # removed at commit
    again = ensure_cache(cfg, base, scene=None, **QUIET)  # reused: nothing decoded
    assert again.url == cache.url


def test_streamed_build_on_s3_through_part_files(tmp_path, s3_server):
    """A build larger than its buffer on the S3 emulator: parts, range reads, then shards."""
    scene = make_scene(H=64, W=64)
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4, cache_memory="64KiB")
    base = f"s3://{s3_server['bucket']}/rc-{uuid.uuid4().hex[:8]}"
    logs = []
    cache = ensure_cache(cfg, base, scene=scene, log=logs.append)
    assert cache.url.startswith("s3://") and any("committed" in m for m in logs)
    assert_close(assemble(cache), expected(scene))
    assert storage.listdir(cache.url) == sorted(["manifest.json"] + [f"shard-{s:05d}.bin" for s in range(4)])
    local = ensure_cache(cfg, str(tmp_path / "local"), scene=scene, **QUIET)
    assert local.checksums == cache.checksums


def test_errors_name_the_url(tmp_path, monkeypatch):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), scene=scene, **QUIET)
    manifest = os.path.join(cache.url, "manifest.json")

    with pytest.raises(RayCacheError, match="manifest not found.*" + str(tmp_path / "nope")):
        RayCache.open(str(tmp_path / "nope"))

    os.remove(os.path.join(cache.url, "shard-00002.bin"))
    with pytest.raises(RayCacheError, match="shard-00002.bin"):
        cache.read_shard(2)
    with open(os.path.join(cache.url, "shard-00003.bin"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(RayCacheError, match="shard-00003.bin"):
        cache.read_shard(3)

    good = open(manifest).read()
    m = json.loads(good)
    m["version"] = 999
    open(manifest, "w").write(json.dumps(m))
    with pytest.raises(RayCacheError, match=cache.url + ".*version 999"):
        RayCache.open(cache.url)
    open(manifest, "w").write("{not json")
    with pytest.raises(RayCacheError, match="corrupt.*manifest"):
        RayCache.open(cache.url)

    # ensure_cache rebuilds over a corrupt manifest (and restores the removed shard)
    calls = []
    monkeypatch.setattr(rc_build, "open_scene",
                        lambda c, s: calls.append(s) or rc_build.InMemory(scene))
    rebuilt = ensure_cache(cfg, str(tmp_path / "cache"), **QUIET)
    assert calls == ["train"] and rebuilt.url == cache.url
    assert_close(assemble(rebuilt), expected(scene))


def test_too_few_pixels(tmp_path):
    with pytest.raises(RayCacheError, match="cache_shards"):
        build_shards(make_scene(n=1, H=2, W=2), str(tmp_path / "c"), 8, **QUIET)


def flip_byte(path: str, at: int = 3) -> None:
    raw = bytearray(open(path, "rb").read())
    raw[at] ^= 0x7F
    open(path, "wb").write(bytes(raw))


def _gloo_worker(rank, world_size, init_file, root, base, out):
    import torch.distributed as tdist

    from nerf_dist.loader import RayLoader
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size)
    try:
        built = []
        rc_build.open_scene = lambda cfg, split: built.append(split) or rc_build.InMemory(make_scene())
        orig = rc_build.write_shards

        def spy(*a, **k):
            sums = orig(*a, **k)
            built.append(list(sums))
            return sums
        rc_build.write_shards = spy
        cfg = DataConfig(root=root, cache_shards=4)
        cache = ensure_cache(cfg, base, rank, world_size, **QUIET)
        again = ensure_cache(cfg, base, rank, world_size, **QUIET)
        same = True
        if rank == 0:
            got, want = assemble(RayCache.open(cache.url)), expected(make_scene())
            same = all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
        # a flipped byte in shard 1 (rank 1's): both ranks fail, neither waits for the other
        tdist.barrier()
        if rank == 0:
            flip_byte(os.path.join(cache.url, "shard-00001.bin"))
        tdist.barrier()
        try:
            RayLoader(cache, rank, world_size, 8, seed=0).next()  # the first batch reads
            err = ""
        except RayCacheError as e:
            err = f"{type(e).__name__}: {e}"
        torch.save({"built": built, "url": cache.url, "again": again.url, "err": err,
                    "same": same, "parts": os.path.exists(os.path.join(cache.url, "parts"))},
                   f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def test_ensure_cache_with_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp
    root, base, out = make_root(tmp_path), str(tmp_path / "cache"), str(tmp_path / "out")
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), root, base, out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    # each rank opened the scene once and wrote only its own shards; the second call reused
    assert res[0]["built"] == ["train", [0, 2]] and res[1]["built"] == ["train", [1, 3]]
    assert res[0]["url"] == res[1]["url"] == res[0]["again"] and res[0]["same"]
    assert not res[0]["parts"]  # the build's part files are gone once committed
    # the damaged shard is named on the rank that read it and on its peer
    assert res[1]["err"].startswith("ShardReadError: ") and "--rebuild" in res[1]["err"]
    assert "shard-00001.bin is damaged" in res[1]["err"]
    assert res[0]["err"].startswith("RayCacheError: rank 1 failed while reading its ray cache "
                                    "shards for step 0") and "shard-00001.bin" in res[0]["err"]


ALONE_TIMEOUT_S = 30.0


def _rank0_alone_worker(rank, world_size, init_file, root, base, out, step):
    """ensure_cache on 2 gloo ranks where a step rank 0 does alone fails with a storage error."""
    import torch.distributed as tdist
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size,
                             timeout=datetime.timedelta(seconds=ALONE_TIMEOUT_S))
    rc_build.open_scene = lambda cfg, split: rc_build.InMemory(make_scene())
    if rank == 0:
        def fail(*a, **k):
            raise storage.StorageError(f"cannot write {base}: simulated outage in {step}")
        setattr(rc_build, step, fail)
    err, t_fail = "", time.time()
    try:
        ensure_cache(DataConfig(root=root, cache_shards=4), base, rank, world_size, **QUIET)
        tdist.barrier()  # NOTE: where a rank that missed the failure would wait until the timeout
    except Exception as e:  # noqa: BLE001 - the test reads it
        err = f"{type(e).__name__}: {e}"
    torch.save({"err": err, "start": t_fail, "exit": time.time()}, f"{out}.{rank}")
    tdist.destroy_process_group()


@pytest.mark.parametrize("step", ["write_manifest", "_cache_problem"])
def test_a_failed_rank0_only_step_of_the_build_stops_both_ranks(tmp_path, step):
    """Rank 0 alone checks the cache and commits it (manifest); a storage error there is raised
    on rank 0 as itself and on rank 1 naming rank 0 and the error, before dist.timeout_s."""
    import torch.multiprocessing as mp
    root, base, out = make_root(tmp_path), str(tmp_path / "cache"), str(tmp_path / "out")
    mp.spawn(_rank0_alone_worker, args=(2, str(tmp_path / "init"), root, base, out, step),
             nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    doing = "committing" if step == "write_manifest" else "checking"
    assert res[0]["err"] == f"StorageError: cannot write {base}: simulated outage in {step}"
    assert res[1]["err"].startswith(f"RayCacheError: rank 0 failed while {doing} the ray cache ")
    assert res[1]["err"].endswith(f"StorageError: cannot write {base}: simulated outage in {step}")
    assert all(r["exit"] < r["start"] + ALONE_TIMEOUT_S for r in res)


# ----------------------------------------------------------------------------- verification

def test_flipped_byte_truncation_and_missing_shard_are_caught(tmp_path):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), scene=scene, **QUIET)
    assert len(cache.checksums) == 4 and all(len(c["sha256"]) == 64 for c in cache.checksums)
    clean = cache.read_shard(1).clone()

    flip_byte(os.path.join(cache.url, "shard-00001.bin"))
    assert not torch.equal(cache.read_shard(1, verify=False), clean)  # what verifying prevents
    with pytest.raises(RayCacheError, match=r"shard-00001\.bin is damaged: sha256") as e:
        cache.read_shard(1)
    assert "nerf-dist cache --rebuild" in str(e.value) and f"delete the cache folder {cache.url}" in str(e.value)

    path = os.path.join(cache.url, "shard-00002.bin")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(RayCacheError, match=rf"shard-00002\.bin is damaged: {len(raw) // 2} bytes, "
                                            rf"the manifest records {len(raw)}.*--rebuild"):
        cache.read_shard(2)

    os.remove(os.path.join(cache.url, "shard-00003.bin"))
    with pytest.raises(RayCacheError, match=r"not found: .*shard-00003\.bin.*--rebuild"):
        cache.read_shard(3)
    assert cache.read_shard(0).shape == (cache.shard_sizes[0], 3)


@pytest.mark.parametrize("version,why", [(1, r"an older format without shard checksums"),
                                         (2, r"an older format that stored rays")])
def test_old_format_manifest_is_rebuilt_with_a_message(tmp_path, monkeypatch, version, why):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    base = str(tmp_path / "cache")
    cache = ensure_cache(cfg, base, scene=scene, **QUIET)
    mpath = os.path.join(cache.url, "manifest.json")
    m = json.loads(open(mpath).read())
    m["version"] = version
    open(mpath, "w").write(json.dumps(m))
    with pytest.raises(RayCacheError, match=rf"version {version} \({why}"):
        RayCache.open(cache.url)
    # an old cache in a sibling folder (its key had the old version in it) is named, never read
    old = os.path.join(base, "0123456789abcdef")
    os.makedirs(old)
    open(os.path.join(old, "manifest.json"), "w").write(json.dumps({"version": 2}))
    logs = []
    monkeypatch.setattr(rc_build, "open_scene", lambda c, s: rc_build.InMemory(scene))
    again = ensure_cache(cfg, base, log=logs.append)
    assert again.url == cache.url and again.manifest["version"] == ray_cache.CACHE_VERSION == 3
    (line,) = [x for x in logs if "rebuilding" in x]
    assert f"version {version} ({why}" in line.replace("\\", "") and "--rebuild" not in line
    assert any("not using" in x and "0123456789abcdef" in x and "format 2" in x for x in logs)
    assert again.checksums == cache.checksums


def test_cli_cache_verifies_and_rebuilds(tmp_path, demo_scene, capsys, monkeypatch):
    import nerf_dist.cli
    from nerf_dist.cli import main
    # NOTE: the keys epilog of --help costs seconds of source parsing per parser build; not tested here.
    monkeypatch.setattr(nerf_dist.cli, "_keys_help", lambda: "", raising=False)
    args = [f"data.root={demo_scene}", f"run.dir={tmp_path / 'run'}", "data.cache_shards=4"]
    assert main(["cache", *args]) == 0
    out = capsys.readouterr().out
    assert "building" in out and "sha256 verified" in out and "rgba8, 4 bytes a pixel" in out
    cache_dir = tmp_path / "run" / "ray_cache"
    (url,) = [str(p) for p in cache_dir.iterdir()]
    shard = os.path.join(url, "shard-00002.bin")
    good = open(shard, "rb").read()

    flip_byte(shard, 100)
    assert main(["cache", *args]) == 1
    err = capsys.readouterr().err
    assert "shard-00002.bin is damaged" in err and "nerf-dist cache --rebuild" in err

    assert main(["cache", "--rebuild", *args]) == 0
    out = capsys.readouterr().out
    assert f"rebuilding {url}: --rebuild" in out and "sha256 verified" in out
    assert open(shard, "rb").read() == good
    # --rebuild rebuilds a valid cache too (the manifest is written again)
    before = os.stat(os.path.join(url, "manifest.json")).st_mtime_ns
    assert main(["cache", "--rebuild", *args]) == 0
    assert os.stat(os.path.join(url, "manifest.json")).st_mtime_ns != before


# ----------------------------------------------------------------------------- flaky storage

class TruncatingFS(MemoryFileSystem):
    """memory:// whose next reads fail as planned: an exception, or a body cut short."""

    protocol = ("flakycache",)
    store: dict = {}
    pseudo_dirs = [""]
    plan: list = []
    reads: list = []

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("flakycache://"))

    def cat_file(self, path, start=None, end=None, **kw):
        data = super().cat_file(path, start, end, **kw)
        if "shard-" in str(path):
            TruncatingFS.reads.append(path)
            if TruncatingFS.plan:
                what = TruncatingFS.plan.pop(0)
                if isinstance(what, BaseException):
                    raise what
                return data[: len(data) // 2]  # "truncate": half the body, no error
        return data


@pytest.fixture
def flaky_cache(tmp_path, monkeypatch):
    fsspec.register_implementation("flakycache", TruncatingFS, clobber=True)
    TruncatingFS.plan, TruncatingFS.reads = [], []
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    monkeypatch.setattr(ray_cache.layout.time, "sleep", lambda s: None)
    storage.configure(retries=3, backoff_s=0.01)
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    cache = ensure_cache(cfg, f"flakycache://bucket-{uuid.uuid4().hex[:8]}/c", scene=scene, **QUIET)
    try:
        yield cache
    finally:
        storage.configure()
        TruncatingFS.plan.clear()


def test_flaky_shard_reads_are_retried_and_never_half_used(flaky_cache, capsys):
    cache = flaky_cache
    clean = {s: cache.read_shard(s).clone() for s in range(4)}
    # a reset connection, then a truncated body, then a good read: the good bytes are returned
    TruncatingFS.plan = [ConnectionResetError("reset by peer"), "truncate"]
    TruncatingFS.reads.clear()
    assert torch.equal(cache.read_shard(2), clean[2])
    assert len(TruncatingFS.reads) == 3
    err = capsys.readouterr().err
    assert "reset by peer" in err and "shard-00002.bin is damaged" in err and "reading it again" in err


def test_a_shard_that_stays_truncated_fails_naming_the_url(flaky_cache):
    from nerf_dist.loader import RayLoader
    cache = flaky_cache
    TruncatingFS.plan = ["truncate"] * 4  # retries=3: four reads, all short
    # NOTE: the loader reads at its first batch; this rank's own failure is a storage error
    with pytest.raises(ShardReadError, match=r"flakycache://.*shard-00000\.bin is damaged.*read 4 times"):
        RayLoader(cache, 0, 1, 8, seed=0).next()
    TruncatingFS.plan = [ConnectionResetError("reset")] * 4
    with pytest.raises(storage.StorageError, match=r"cannot read ray cache shard flakycache://.*"
                                                   r"shard-00000\.bin.*gave up after 4 attempt") as e:
        RayLoader(cache, 0, 1, 8, seed=0).next()
    assert isinstance(e.value, RayCacheError) and e.value.shard == 0
    TruncatingFS.plan = []
    assert RayLoader(cache, 0, 1, 8, seed=0).next()["rgb"].shape == (8, 3)


# ----------------------------------------------------------------------------- complete keys

def _png(path, value: int) -> None:
    iio.imwrite(path, np.full((4, 4, 3), value, dtype=np.uint8))


def _real_root(tmp_path, file_paths: list[str]) -> str:
    """A Blender scene folder (4x4 images, identity poses) whose frames name file_paths."""
    root = tmp_path / "scene"
    root.mkdir(exist_ok=True)
    frames = [{"file_path": fp, "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4],
                                                     [0, 0, 0, 1]]} for fp in file_paths]
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return str(root)


def _mean_rgb(cache: RayCache, img: int) -> float:
    rgb = assemble(cache)["rgb"].reshape(cache.n_images, -1, 3)
    return float(rgb[img].mean())


def test_image_behind_a_symlinked_folder_is_keyed(tmp_path):
    store = tmp_path / "store" / "train"
    store.mkdir(parents=True)
    for i in range(2):
        _png(store / f"r_{i}.png", 50)
    root = _real_root(tmp_path, ["./train/r_0", "./train/r_1"])
    os.symlink(store, os.path.join(root, "train"))  # the folder lives outside data.root
    cfg = DataConfig(root=root, cache_shards=4)
    base, logs = str(tmp_path / "cache"), []
    c1 = ensure_cache(cfg, base, log=logs.append)
    assert ensure_cache(cfg, base, log=logs.append).url == c1.url  # unchanged: reused
    assert c1.manifest["inputs"]["data"][0][0] == str(store / "r_0.png")  # resolved path
    assert abs(_mean_rgb(c1, 0) - 50 / 255) < 1e-6

    _png(store / "r_0.png", 200)  # edit the image through its real folder
    n_logs = len(logs)
    c2 = ensure_cache(cfg, base, log=logs.append)
    assert c2.url != c1.url and logs[n_logs].startswith("ray cache: building")
    assert abs(_mean_rgb(c2, 0) - 200 / 255) < 1e-6

    # repointing the symlink at a copy (same names, sizes and times) is another scene too
    other = tmp_path / "other"
    shutil.copytree(store, other, copy_function=shutil.copy2)
    os.remove(os.path.join(root, "train"))
    os.symlink(other, os.path.join(root, "train"))
    assert cache_key(cfg) != c2.key


def test_image_outside_root_is_keyed_when_allowed(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _png(outside / "r_0.png", 30)
    root = _real_root(tmp_path, ["../elsewhere/r_0", "../elsewhere/r_0.png"])
    import nerf_dist.scenes
    with pytest.raises(nerf_dist.scenes.SceneError, match="outside the scene folder.*allow_outside_root"):
        cache_key(DataConfig(root=root, cache_shards=4))
    cfg = DataConfig(root=root, cache_shards=4, allow_outside_root=True)
    base, logs = str(tmp_path / "cache"), []
    c1 = ensure_cache(cfg, base, log=logs.append)
    assert c1.manifest["inputs"]["data"][0][0] == str(outside / "r_0.png")
    _png(outside / "r_0.png", 220)
    c2 = ensure_cache(cfg, base, log=logs.append)
    assert c2.url != c1.url and abs(_mean_rgb(c2, 1) - 220 / 255) < 1e-6


def test_key_survives_moving_the_scene_folder(tmp_path):
    root = make_root(tmp_path)
    k = cache_key(DataConfig(root=root, cache_shards=4))
    moved = str(tmp_path / "moved")
    shutil.copytree(root, moved, copy_function=shutil.copy2)  # same contents, sizes, mtimes
    assert cache_key(DataConfig(root=moved, cache_shards=4)) == k
    os.symlink(moved, str(tmp_path / "link"))  # data.root itself a symlink
    assert cache_key(DataConfig(root=str(tmp_path / "link"), cache_shards=4)) == k
