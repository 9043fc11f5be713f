"""Index arithmetic at real sizes (issue 24).

Unit tests: the helpers that turn counts into indices and offsets (evenly spaced pixel indices,
shard sizes, part-file offsets, the loader's schedule, RayCache.rays, tile plans) at 2^31 and 2^33
pixels, on a manifest-only cache: no pixel is materialised.

The real-size test (slow): a generated scene of more than 2^24 pixels (a float32 count rounds
there) trains 2 steps on 2 gloo ranks and evaluates one view.
"""
from __future__ import annotations

import json
import math
import resource
import time

import numpy as np
import pytest
import torch

from nerf_dist.loader import RayLoader
from nerf_dist.loader.schedule import extra_bytes, index_dtype, plan_window
from nerf_dist.ray_cache import RayCache, count_in, even_indices, shard_sizes
from nerf_dist.ray_cache.build import part_offsets
from nerf_dist.ray_cache.layout import CACHE_VERSION, manifest_problem
from nerf_dist.render_ops.rays import make_rays
from nerf_dist.renderer.tiles import plan_tiles, rank_loads

from conftest import TINY_MODEL, run_cli

SIZES = [2 ** 31, 2 ** 33]


def huge_cache(n_images: int, H: int, W: int, n_shards: int) -> RayCache:
    """A RayCache opened from a manifest alone (no shard files: nothing here reads one)."""
    n = n_images * H * W
    rng = np.random.default_rng(0)
    c2w = np.concatenate([np.eye(3)[None].repeat(n_images, 0),
                          rng.normal(size=(n_images, 3, 1))], -1)
    K = np.array([[W * 0.8, 0, W / 2], [0, W * 0.8, H / 2], [0, 0, 1]])[None].repeat(n_images, 0)
    m = {"version": CACHE_VERSION, "key": "0" * 64, "n_shards": n_shards, "n_rays": n,
         "shard_sizes": shard_sizes(n, n_shards),
         "shards": [{"bytes": k * 3, "sha256": "0" * 64} for k in shard_sizes(n, n_shards)],
         "H": H, "W": W, "n_images": n_images,
         "colour": {"mode": "rgb8", "dtype": "uint8", "channels": 3, "bytes_per_pixel": 3},
         "cameras": {"K": K.tolist(), "c2w": c2w.tolist(), "distortion": None},
         "meta": {"near": 2.0, "far": 6.0, "aabb": [[-1.5] * 3, [1.5] * 3],
                  "background": [1.0, 1.0, 1.0], "ndc": False, "ndc_focal": 0.0,
                  "ndc_size": [0, 0], "split": "train", "files": []}}
    m = json.loads(json.dumps(m))  # as read from storage
    assert manifest_problem(m) == ""
    return RayCache("memory://huge", m)


@pytest.mark.parametrize("n", SIZES + [2 ** 24 + 1, 44_800_000])
def test_even_indices_are_exact_past_float32(n):
    idx = even_indices(n, 4096)
    assert idx.dtype == torch.int64 and idx.numel() == 4096
    assert int(idx[0]) == 0 and int(idx[-1]) == n - 1
    assert bool((idx[1:] > idx[:-1]).all())
    k = [1, 1000, 4094]
    assert [int(idx[j]) for j in k] == [j * (n - 1) // 4095 for j in k]
    # the bug this replaces: a float32 linspace rounds its last index up to n (out of range)
    assert int(torch.linspace(0, n - 1, 4096).long()[-1]) >= n or n < 2 ** 24 + 2


def test_even_indices_small_counts():
    assert even_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert even_indices(1, 4096).tolist() == [0]
    assert even_indices(10, 1).tolist() == [0]
    assert even_indices(0, 4).numel() == 0
    assert even_indices(10, 4).tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize("n", SIZES)
def test_shard_sizes_and_counts(n):
    S = 64
    sizes = shard_sizes(n + 3, S)
    assert sum(sizes) == n + 3 and max(sizes) - min(sizes) <= 1
    lo, hi = n - 1000, n + 3
    assert sum(count_in(lo, hi, s, S) for s in range(S)) == hi - lo
    assert sum(count_in(0, hi, s, S) for s in range(S)) == hi


@pytest.mark.parametrize("n", SIZES)
def test_part_offsets_past_4_gib(n):
    """The byte ranges of a part file of 2^31 / 2^33 pixels (4 bytes a pixel: 8 / 32 GiB)."""
    HW = 4096 * 4096
    first, S = 7, 64
    end = first + n // HW
    off = part_offsets(first, end, HW, S)
    assert off.dtype == np.int64 and off.shape == (S + 1,)
    assert int(off[-1]) == n
    for s in (0, 1, S - 1):
        assert int(off[s + 1] - off[s]) == count_in(first * HW, end * HW, s, S)
    assert int(off[S - 1]) * 4 > 2 ** 32  # byte offsets beyond uint32, exact


def test_index_dtype_and_budget():
    assert index_dtype(2 ** 31) == torch.int32   # positions 0 .. 2^31 - 1
    assert index_dtype(2 ** 31 + 1) == torch.int64
    assert extra_bytes(2 ** 31 + 1, False) == 2 * extra_bytes(2 ** 31, False)


@pytest.mark.parametrize("n_images", [128, 512])  # x 4096 x 4096 = 2^31, 2^33 pixels
def test_rays_and_crop_of_the_last_pixels(n_images):
    H = W = 4096
    cache = huge_cache(n_images, H, W, 64)
    n = cache.n_pixels
    assert n in SIZES
    idx = torch.tensor([0, n - 1, n - W, (n_images - 1) * H * W + 5 * W + 7, 2 ** 31 - 1])
    got = cache.rays(idx)
    img = torch.tensor([0, n_images - 1, n_images - 1, n_images - 1, 2 ** 31 // (H * W) - 1
                        if n > 2 ** 31 else n_images - 1])
    col = torch.tensor([0, W - 1, 0, 7, W - 1])
    row = torch.tensor([0, H - 1, H - 1, 5, H - 1])
    uv = torch.stack([col.float() + 0.5, row.float() + 0.5], -1)
    want = make_rays(uv, cache.K[img], cache.c2w[img], None, None)
    for k in ("rays_o", "rays_d"):
        assert torch.equal(got[k], want[k]), k
    assert torch.equal(cache.crop(idx), cache.crop(idx - img * H * W))


@pytest.mark.parametrize("n_images", [128, 512])
def test_loader_schedule_at_huge_sizes(n_images):
    """The loader's pixel schedule (positions -> global indices) over a manifest-only cache of
    2^31 / 2^33 pixels: 4096 shards, streamed in small windows (nothing is read)."""
    H = W = 4096
    cache = huge_cache(n_images, H, W, 4096)
    n, S = cache.n_pixels, cache.n_shards
    per = cache.shard_sizes[0]
    mem = 8 * per * (2 * 3 + extra_bytes(per, False)) + 1
    plan = plan_window(n, S, 4096, 3, mem)
    assert plan.window == 8 and plan.n_windows == S // 8
    loaders = [RayLoader(cache, r, 2, 4096, seed=3, cache_memory=mem) for r in range(2)]
    one = RayLoader(cache, 0, 1, 4096, seed=3, cache_memory=mem)
    for step in (0, 10 ** 6):
        got = [ld.pixels_at(step) for ld in loaders]
        full = one.pixels_at(step)
        assert full.dtype == torch.int64 and full.numel() == 4096
        assert bool((full >= 0).all()) and bool((full < n).all())
        assert torch.equal(torch.sort(torch.cat(got)).values, torch.sort(full).values)
        assert {int(s) for s in got[1] % S} <= set(range(1, S, 2))
    for ld in loaders + [one]:
        ld.close()


def test_tile_plan_of_a_4_gigapixel_frame():
    plan = plan_tiles(1, 2 ** 16, 2 ** 16, 4096, 3)
    assert sum(rank_loads(plan)) == 2 ** 32
    assert sum(len(p) for p in plan) == 256


# ---------------------------------------------------------------------------- real size, 2 ranks

def write_big_scene(root, views: int = 24, W: int = 1024, H: int = 768, base: int = 256) -> int:
    """The procedural demo scene as a Blender dataset of `views` train views of W x H plus one val
    view: traced at base x base, repeated to W x W (nearest) and cropped to H rows about the
    centre (the same pinhole camera, focal from W). Returns the train pixel count."""
    import imageio.v3 as iio

    from nerf_dist.scenes import demo
    poses = demo.camera_poses(views, 0)
    focal = 0.5 * base / math.tan(0.5 * demo.CAMERA_ANGLE_X)
    crop = (W - H) // 2
    for split, ps in (("train", poses["train"][:views]), ("val", poses["val"][:1])):
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i, c2w in enumerate(ps):
            rgba, _ = demo.render_view(c2w, base, focal, 1)
            big = np.repeat(np.repeat(rgba, W // base, 0), W // base, 1)[crop:crop + H]
            iio.imwrite(root / split / f"r_{i}.png",
                        np.round(np.clip(big, 0, 1) * 255).astype(np.uint8))
            frames.append({"file_path": f"./{split}/r_{i}",
                           "transform_matrix": [[float(x) for x in r] for r in c2w]})
        (root / f"transforms_{split}.json").write_text(json.dumps(
            {"camera_angle_x": demo.CAMERA_ANGLE_X, "frames": frames}))
    return len(poses["train"][:views]) * W * H


@pytest.mark.slow
def test_real_size_scene_trains_on_two_ranks_and_evaluates(tmp_path):
    """24 views of 1024x768 (18.9M pixels > 2^24): 2 steps on 2 gloo ranks, then one val view
    evaluated on 2 ranks. Before issue 24 the first step's sample of training rays indexed past
    the cache (a float32 linspace) and every such run died before training."""
    scene = tmp_path / "scene"
    n = write_big_scene(scene)
    assert n > 2 ** 24
    run = tmp_path / "run"
    t0 = time.time()
    res = run_cli(["train", f"data.root={scene}", f"run.dir={run}", "train.steps=2",
                   "train.rays_per_batch=256", "log.every=1", "log.progress=false",
                   "checkpoint.every=0", "train.threads=1", "eval.every=0",
                   "data.cache_shards=64", *TINY_MODEL, "model.n_samples=8",
                   "model.n_importance=0"], nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{n} cached pixels" in res.stdout
    res = run_cli(["eval", "--run-dir", str(run), "--split", "val"], nproc=2,
                  timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PSNR" in res.stdout
    print(f"real-size scene: {n} pixels, train 2 steps + eval 1 view on 2 ranks in "
          f"{time.time() - t0:.1f} s; this process's peak RSS "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB (children)")
