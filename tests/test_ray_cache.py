"""Ray cache: build, round-trip, reuse/rebuild by key, multi-rank build, fsspec URLs, errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid

import pytest
import torch

import nerf_dist.scenes
from nerf_dist import ray_cache
from nerf_dist.config import DataConfig
from nerf_dist.ray_cache import RayCache, RayCacheError, build_shards, cache_key, ensure_cache
from nerf_dist.rays import scene_rays
from nerf_dist.scenes.base import Scene


def make_scene(n=3, H=5, W=8, ndc=False, seed=0) -> Scene:
    g = torch.Generator().manual_seed(seed)
    focal = 7.0
    K = torch.tensor([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1.0]]).expand(n, 3, 3).clone()
    c2w = torch.zeros(n, 3, 4)
    for i in range(n):
        a = 0.3 * i
        c2w[i, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0],
                                       [-math.sin(a), 0, math.cos(a)]])
        c2w[i, :3, 3] = torch.tensor([0.1 * i, -0.2 * i, 3.0])
    return Scene(images=torch.rand(n, H, W, 3, generator=g), K=K, c2w=c2w,
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


def expected_rays(scene) -> dict:
    """Every ray of the scene in global order (i = image*H*W + row*W + col)."""
    H, W = scene.H, scene.W
    parts = [scene_rays(scene, i) for i in range(scene.n)]
    out = {k: torch.cat([p[k] for p in parts]) for k in ("rays_o", "rays_d", "viewdirs")}
    out["rgb"] = scene.images.reshape(-1, 3)
    j, i = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    crop = torch.maximum((i / W - 0.5).abs(), (j / H - 0.5).abs()).reshape(-1) * 2
    out["crop"] = crop.repeat(scene.n).half()
    out["img"] = torch.arange(scene.n, dtype=torch.int32).repeat_interleave(H * W)
    return out


def assemble(cache: RayCache) -> dict:
    """Scatter all shards back into global ray order."""
    S, n = cache.n_shards, cache.n_rays
    full = {}
    for s in range(S):
        d = cache.read_shard(s)
        idx = torch.arange(s, n, S)
        assert len(idx) == cache.shard_sizes[s]
        for k, t in d.items():
            if k not in full:
                full[k] = torch.zeros((n,) + tuple(t.shape[1:]), dtype=t.dtype)
            full[k][idx] = t
    return full


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("ndc", [False, True])
def test_round_trip_equals_scene_rays(tmp_path, ndc):
    scene = make_scene(ndc=ndc)
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=7)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), log=lambda m: None, scene=scene)
    assert cache.n_shards == 7 and cache.n_rays == 3 * 5 * 8
    assert (cache.H, cache.W, cache.n_images) == (5, 8, 3)
    assert max(cache.shard_sizes) - min(cache.shard_sizes) <= 1
    assert cache.meta["ndc"] is ndc and cache.meta["split"] == "train"
    assert cache.meta["near"] == scene.near and cache.meta["files"] == scene.files
    assert cache.url == os.path.join(str(tmp_path / "cache"), cache_key(cfg)[:16])
    assert_same(assemble(cache), expected_rays(scene))
    # every shard covers every image evenly
    for s in range(7):
        counts = torch.bincount(cache.read_shard(s)["img"].long(), minlength=3)
        assert counts.max() - counts.min() <= 1


def test_reuse_and_rebuild_on_change(tmp_path, monkeypatch):
    scene = make_scene()
    calls = []

    def fake_load(data_cfg, split):
        calls.append((data_cfg, split))
        return scene

    monkeypatch.setattr(nerf_dist.scenes, "load_scene", fake_load)
    root = make_root(tmp_path)
    base = str(tmp_path / "cache")
    cfg = DataConfig(root=root, cache_shards=4)
    logs = []
    c1 = ensure_cache(cfg, base, log=logs.append)
    assert len(calls) == 1 and calls[0][1] == "train"
    assert any("wrote 4/4" in m for m in logs)
    c2 = ensure_cache(cfg, base, log=logs.append)
    assert len(calls) == 1, "an unchanged scene + settings must reuse the cache"
    assert c2.url == c1.url and c2.key == c1.key

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


def test_two_ranks_build_the_same_cache(tmp_path):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=6)
    one = ensure_cache(cfg, str(tmp_path / "one"), log=lambda m: None, scene=scene)
    url = str(tmp_path / "two" / "c")
    owned = [build_shards(scene, url, 6, rank=r, world_size=2, log=lambda m: None) for r in (0, 1)]
    assert [list(o) for o in owned] == [[0, 2, 4], [1, 3, 5]]
    ray_cache.write_manifest(scene, url, one.key, 6, {**owned[0], **owned[1]})
    two = RayCache.open(url)
    assert two.manifest["shard_sizes"] == one.manifest["shard_sizes"]
    assert two.checksums == one.checksums  # same bytes on 1 or 2 ranks
    assert two.meta == one.meta
    for s in range(6):
        a, b = one.read_shard(s), two.read_shard(s)
        for k in a:
            assert torch.equal(a[k], b[k]), (s, k)


def test_manifest_needs_every_shard(tmp_path):
    scene = make_scene()
    url = str(tmp_path / "c")
    sums = build_shards(scene, url, 4, rank=0, world_size=2, log=lambda m: None)
    with pytest.raises(RayCacheError, match="shard-00001.pt"):
        ray_cache.write_manifest(scene, url, "k", 4, sums)
    build_shards(scene, url, 4, rank=1, world_size=2, log=lambda m: None)  # files, no checksums
    with pytest.raises(RayCacheError, match="without a checksum.*shard-00001.pt"):
        ray_cache.write_manifest(scene, url, "k", 4, sums)


def test_memory_url(tmp_path):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    base = f"memory://nerf-dist-test-{uuid.uuid4().hex[:8]}/ray_cache"
    cache = ensure_cache(cfg, base, log=lambda m: None, scene=scene)
    assert cache.url.startswith("memory://")
    assert_same(assemble(RayCache.open(cache.url)), expected_rays(scene))
    again = ensure_cache(cfg, base, log=lambda m: None, scene=None)  # reused: no load_scene
    assert again.url == cache.url


def test_errors_name_the_url(tmp_path, monkeypatch):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), log=lambda m: None, scene=scene)
    manifest = os.path.join(cache.url, "manifest.json")

    with pytest.raises(RayCacheError, match="manifest not found.*" + str(tmp_path / "nope")):
        RayCache.open(str(tmp_path / "nope"))

    os.remove(os.path.join(cache.url, "shard-00002.pt"))
    with pytest.raises(RayCacheError, match="shard-00002.pt"):
        cache.read_shard(2)
    with open(os.path.join(cache.url, "shard-00003.pt"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(RayCacheError, match="shard-00003.pt"):
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
    monkeypatch.setattr(nerf_dist.scenes, "load_scene", lambda c, s: calls.append(s) or scene)
    rebuilt = ensure_cache(cfg, str(tmp_path / "cache"), log=lambda m: None)
    assert calls == ["train"] and rebuilt.url == cache.url
    assert_same(assemble(rebuilt), expected_rays(scene))


def test_too_few_rays(tmp_path):
    with pytest.raises(RayCacheError, match="cache_shards"):
        build_shards(make_scene(n=1, H=2, W=2), str(tmp_path / "c"), 8, log=lambda m: None)


def flip_tensor_byte(path: str, field: str = "rays_o") -> None:
    """Flip one byte inside a tensor's data in a shard file (its length and zip layout unchanged)."""
    raw = bytearray(open(path, "rb").read())
    t = torch.load(path, weights_only=True)[field]
    at = bytes(raw).find(t.numpy().tobytes())
    assert at > 0, "tensor bytes not found in the shard file"
    raw[at + 3] ^= 0x7F  # the high byte of the first float: a wildly wrong value
    open(path, "wb").write(bytes(raw))


def _gloo_worker(rank, world_size, init_file, root, base, out):
    import torch.distributed as tdist

    from nerf_dist.loader import RayLoader
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size)
    try:
        import nerf_dist.scenes as scenes
        built = []
        scenes.load_scene = lambda cfg, split: built.append(split) or make_scene()
        orig = ray_cache.build_shards

        def spy(*a, **k):
            sums = orig(*a, **k)
            built.append(list(sums))
            return sums
        ray_cache.build_shards = spy
        cfg = DataConfig(root=root, cache_shards=4)
        cache = ensure_cache(cfg, base, rank, world_size, log=lambda m: None)
        again = ensure_cache(cfg, base, rank, world_size, log=lambda m: None)
        same = True
        if rank == 0:
            got, want = assemble(RayCache.open(cache.url)), expected_rays(make_scene())
            same = all(torch.allclose(got[k].float(), want[k].float(), atol=1e-6) for k in want)
        # a flipped byte in shard 1 (rank 1's): both ranks fail, neither waits for the other
        tdist.barrier()
        if rank == 0:
            flip_tensor_byte(os.path.join(cache.url, "shard-00001.pt"))
        tdist.barrier()
        try:
            RayLoader(cache, rank, world_size, 8, seed=0)
            err = ""
        except RayCacheError as e:
            err = str(e)
        torch.save({"built": built, "url": cache.url, "again": again.url, "err": err,
                    "same": same},
                   f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def test_ensure_cache_with_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp
    root, base, out = make_root(tmp_path), str(tmp_path / "cache"), str(tmp_path / "out")
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), root, base, out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    # each rank loaded the scene once and wrote only its own shards; the second call reused
    assert res[0]["built"] == ["train", [0, 2]] and res[1]["built"] == ["train", [1, 3]]
    assert res[0]["url"] == res[1]["url"] == res[0]["again"] and res[0]["same"]
    # the damaged shard is named on the rank that read it and on its peer
    assert "shard-00001.pt is damaged" in res[1]["err"] and "--rebuild" in res[1]["err"]
    assert res[0]["err"].startswith("rank 1 found a damaged ray cache") and "shard-00001" in res[0]["err"]


# ----------------------------------------------------------------------------- verification

def test_flipped_byte_truncation_and_missing_shard_are_caught(tmp_path):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    cache = ensure_cache(cfg, str(tmp_path / "cache"), log=lambda m: None, scene=scene)
    assert len(cache.checksums) == 4 and all(len(c["sha256"]) == 64 for c in cache.checksums)
    clean = cache.read_shard(1)

    # a flipped byte inside tensor data still unpickles (the failure the checksum exists for)...
    flip_tensor_byte(os.path.join(cache.url, "shard-00001.pt"))
    silent = cache.read_shard(1, verify=False)
    assert not torch.equal(silent["rays_o"], clean["rays_o"])
    # ...but a verified read names the shard and both remedies
    with pytest.raises(RayCacheError, match=r"shard-00001\.pt is damaged: sha256") as e:
        cache.read_shard(1)
    assert "nerf-dist cache --rebuild" in str(e.value) and f"delete the cache folder {cache.url}" in str(e.value)

    path = os.path.join(cache.url, "shard-00002.pt")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(RayCacheError, match=rf"shard-00002\.pt is damaged: {len(raw) // 2} bytes, "
                                            rf"the manifest records {len(raw)}.*--rebuild"):
        cache.read_shard(2)

    os.remove(os.path.join(cache.url, "shard-00003.pt"))
    with pytest.raises(RayCacheError, match=r"not found: .*shard-00003\.pt.*--rebuild"):
        cache.read_shard(3)
    torch.testing.assert_close(cache.read_shard(0)["rgb"], assemble_one(scene, 0, 4)["rgb"])


def assemble_one(scene, s: int, n_shards: int) -> dict:
    return ray_cache.shard_rays(scene, s, n_shards)


def test_old_format_manifest_is_rebuilt_with_a_message(tmp_path, monkeypatch):
    scene = make_scene()
    cfg = DataConfig(root=make_root(tmp_path), cache_shards=4)
    base = str(tmp_path / "cache")
    cache = ensure_cache(cfg, base, log=lambda m: None, scene=scene)
    mpath = os.path.join(cache.url, "manifest.json")
    m = json.loads(open(mpath).read())
    m["version"] = 1
    del m["shards"]  # what version 1 wrote: no checksums
    open(mpath, "w").write(json.dumps(m))
    with pytest.raises(RayCacheError, match=r"version 1 \(an older format without shard checksums\)"):
        RayCache.open(cache.url)
    logs = []
    monkeypatch.setattr(nerf_dist.scenes, "load_scene", lambda c, s: scene)
    again = ensure_cache(cfg, base, log=logs.append)
    assert again.url == cache.url and again.manifest["version"] == ray_cache.CACHE_VERSION
    (line,) = [x for x in logs if "rebuilding" in x]
    assert "version 1 (an older format without shard checksums)" in line and "--rebuild" not in line
    assert again.checksums == cache.checksums
    again.read_shard(0)


def test_cli_cache_verifies_and_rebuilds(tmp_path, demo_scene, capsys, monkeypatch):
    import nerf_dist.cli
    from nerf_dist.cli import main
    # NOTE: the keys epilog of --help costs seconds of source parsing per parser build; not tested here.
    monkeypatch.setattr(nerf_dist.cli, "_keys_help", lambda: "")
    args = [f"data.root={demo_scene}", f"run.dir={tmp_path / 'run'}", "data.cache_shards=4"]
    assert main(["cache", *args]) == 0
    out = capsys.readouterr().out
    assert "building" in out and "sha256 verified" in out
    cache_dir = tmp_path / "run" / "ray_cache"
    (url,) = [str(p) for p in cache_dir.iterdir()]
    shard = os.path.join(url, "shard-00002.pt")
    good = open(shard, "rb").read()

    flip_tensor_byte(shard, "rgb")
    assert main(["cache", *args]) == 1
    err = capsys.readouterr().err
    assert "shard-00002.pt is damaged" in err and "nerf-dist cache --rebuild" in err

    assert main(["cache", "--rebuild", *args]) == 0
    out = capsys.readouterr().out
    assert f"rebuilding {url}: --rebuild" in out and "sha256 verified" in out
    assert open(shard, "rb").read() == good
    # --rebuild rebuilds a valid cache too (the manifest is written again)
    before = os.stat(os.path.join(url, "manifest.json")).st_mtime_ns
    assert main(["cache", "--rebuild", *args]) == 0
    assert os.stat(os.path.join(url, "manifest.json")).st_mtime_ns != before


# ----------------------------------------------------------------------------- complete keys

def _png(path, value: int) -> None:
    import imageio.v3 as iio
    import numpy as np
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
    parts = [cache.read_shard(s) for s in range(cache.n_shards)]
    rgb = torch.cat([p["rgb"] for p in parts])
    ids = torch.cat([p["img"] for p in parts])
    return float(rgb[ids == img].mean())


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
