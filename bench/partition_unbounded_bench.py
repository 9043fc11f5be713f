"""Partitions of an unbounded scene: bounded boxes vs boxes that reach the far field
(model.far_bound), on the unbounded demo scene, CPU, small.

    python bench/partition_unbounded_bench.py [--partitions 2] [--steps 400] [--batch 1024]
        [--far 1000] [--scene-dir DIR]

Trains the partitioned kind twice in one process, the same steps of the same rays: with today's
bounded boxes (space outside the scene box [-s, s]^3, s = the scene's aabb_scale, is empty and the
rays stop at the scene's far plane) and with the outer faces at infinity and rays to --far scene
units. Prints held-out PSNR (mean of 4 val views, rendered as `nerf-dist eval` does) and seconds
per step for each. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import tempfile

from common import timed_training
from nerf_dist.scenes.demo_unbounded import write_unbounded_scene

SCENE_RES, SCENE_VIEWS = 48, 60
SIZES = dict(hash_levels=8, hash_features=2, hash_log2_size=14, hash_base_res=16,
             hash_max_res=512, hidden=32, geo_features=7, box_samples=32)


def run(scene: str, tmp: str, P: int, far: float, steps: int, batch: int) -> dict:
    over = [f"data.root={scene}", "data.format=ngp", "data.downscale=1",
            "data.white_background=false", f"run.dir={tmp}/run{far}",
            f"data.cache_dir={tmp}/cache", f"train.steps={steps}",
            f"train.rays_per_batch={batch}", "train.lr=1e-2", "log.every=100000",
            "train.threads=2", "eval.every=0", "model.kind=partitioned",
            f"model.partitions={P}", f"model.far_bound={far}"]
    over += [f"model.{k}={v}" for k, v in SIZES.items()]
    return timed_training(over, budget_s=1e9, eval_every_s=1e9, n_eval_views=4,
                          log=lambda *a: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--far", type=float, default=1000.0)
    ap.add_argument("--scene-dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = a.scene_dir or os.path.join(tmp, "scene")
        if not os.path.exists(os.path.join(scene, "transforms_test.json")):
            write_unbounded_scene(scene, resolution=SCENE_RES, views=SCENE_VIEWS)
        print(f"\nunbounded demo scene ({SCENE_RES} px, {SCENE_VIEWS} views), P={a.partitions}, "
              f"{a.steps} steps of {a.batch} rays, per-box table 2^{SIZES['hash_log2_size']}\n")
        print("| boxes | held-out PSNR dB | s/step |")
        print("|---|---|---|")
        for far, name in ((0.0, "bounded (scene box)"), (a.far, f"open, rays to {a.far:g}")):
            res = run(scene, tmp, a.partitions, far, a.steps, a.batch)
            print(f"| {name} | {res['curve'][-1][2]:.2f} | "
                  f"{res['train_s'] / max(res['steps'], 1):.3f} |", flush=True)


if __name__ == "__main__":
    main()
