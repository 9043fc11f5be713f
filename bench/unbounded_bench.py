"""Held-out PSNR over CPU minutes on the unbounded demo scene: today's fast path vs model.kind=unbounded.

    python bench/unbounded_bench.py fast --aabb-scale 16 [--minutes 2 5 10] [--out fast16.json]
    python bench/unbounded_bench.py unbounded [--minutes 2 5 10] [--out unbounded.json]
    python bench/unbounded_bench.py table fast16.json unbounded.json

The unbounded kind's two samplers (model.sampler), side by side:

    python bench/unbounded_bench.py unbounded --minutes 2 5 --out proposal.json
    python bench/unbounded_bench.py unbounded --minutes 2 5 --out occupancy.json \
        --extra model.sampler=occupancy
    python bench/unbounded_bench.py table proposal.json occupancy.json

Each side is one process (run them side by side, one thread each: train.threads=1). The scene
(`nerf-dist demo-scene --variant unbounded`, 48 px, 60 training views) is written under
--scene-dir when absent; the fast path reads a copy of its transforms files with the given
aabb_scale (images shared through symlinks). Sizes: the fast path's from configs/lego_fast_cpu.yaml,
the unbounded path's from configs/capture_cpu.yaml (model, batch, learning-rate schedule), both
with data.white_background=false. PSNR: mean over the 4 val views, rendered through the renderer
as `nerf-dist eval` does, at each of --minutes of training time (evaluation time excluded).
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from common import REPO, timed_training
from cpu_sizes import lego_fast_cpu, overrides
from nerf_dist.scenes.demo_unbounded import write_unbounded_scene

SCENE_RES, SCENE_VIEWS = 48, 60


def scene(root: str, aabb_scale: int | None = None) -> str:
    """The unbounded demo scene under root (written when absent); with aabb_scale, a sibling
    folder whose transforms files say that aabb_scale, sharing the images."""
    base = os.path.join(root, "scene")
    if not os.path.exists(os.path.join(base, "transforms_test.json")):
        write_unbounded_scene(base, resolution=SCENE_RES, views=SCENE_VIEWS)
    if aabb_scale is None:
        return base
    out = os.path.join(root, f"scene_aabb{aabb_scale}")
    os.makedirs(out, exist_ok=True)
    for split in ("train", "val", "test"):
        link = os.path.join(out, split)
        if not os.path.exists(link):
            os.symlink(os.path.join(base, split), link)
        with open(os.path.join(base, f"transforms_{split}.json"), encoding="utf-8") as f:
            data = json.load(f)
        data["aabb_scale"] = aabb_scale
        with open(os.path.join(out, f"transforms_{split}.json"), "w", encoding="utf-8") as f:
            json.dump(data, f)
    return out


def run_side(args) -> dict:
    if args.side == "fast":
        root = scene(args.scene_dir, args.aabb_scale)
        sizes = overrides(lego_fast_cpu())
    else:
        root = scene(args.scene_dir)
        sizes = overrides(lego_fast_cpu(REPO / "configs" / "capture_cpu.yaml"))
    budget = 60.0 * max(args.minutes)
    # NOTE: the pid too: two sides started in the same second must not share a run folder.
    run = os.path.join(args.scene_dir,
                       f"run_{args.side}{args.aabb_scale or ''}_{int(time.time())}_{os.getpid()}")
    ov = [*sizes, f"data.root={root}", "data.format=ngp", "data.downscale=1",
          "data.white_background=false", f"run.dir={run}", "train.threads=1", "train.steps=100000",
          "eval.every=0", *args.extra]
    print(f"{args.side}: {' '.join(ov)}", flush=True)
    res = timed_training(ov, budget, 60.0, n_eval_views=4)
    marks = {}
    for m in args.minutes:
        # NOTE: the evaluation at or just after m minutes of training time (evaluations are
        # every 60 s of training time, so this is the one at m minutes).
        pts = [c for c in res["curve"] if c[0] >= 60.0 * m - 1.0]
        marks[str(m)] = pts[0] if pts else res["curve"][-1]
    out = {"side": args.side, "aabb_scale": args.aabb_scale, "overrides": ov, "curve": res["curve"],
           "marks": marks, "steps": res["steps"], "s_per_step": res["train_s"] / max(res["steps"], 1)}
    print(json.dumps(out), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return out


def table(files: list[str]) -> None:
    rows = [json.load(open(f, encoding="utf-8")) for f in files]
    minutes = list(rows[0]["marks"])
    print("| path | " + " | ".join(f"{m} min" for m in minutes) + " | s/step |")
    print("|---|" + "---|" * (len(minutes) + 1))
    for r in rows:
        extra = r["overrides"][r["overrides"].index("eval.every=0") + 1:]
        name = r["side"] + (f" (aabb_scale {r['aabb_scale']})" if r["aabb_scale"] else "")
        name += "".join(f" {e}" for e in extra)
        cells = [f"{r['marks'][m][2]:.2f} dB (step {r['marks'][m][1]})" for m in minutes]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['s_per_step']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=["fast", "unbounded", "table"])
    ap.add_argument("files", nargs="*", help="table: the --out files of the sides")
    ap.add_argument("--aabb-scale", type=int, default=None, help="fast: the scene's aabb_scale")
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    ap.add_argument("--scene-dir", default=os.path.join(REPO, "runs", "unbounded_bench"))
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    args = ap.parse_args()
    if args.side == "table":
        table(args.files)
        return
    if args.side == "fast" and args.aabb_scale is None:
        ap.error("fast needs --aabb-scale")
    run_side(args)


if __name__ == "__main__":
    main()
