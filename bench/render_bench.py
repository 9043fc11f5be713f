"""Render throughput of `nerf-dist render` on the demo scene: 1 rank vs 2 ranks on the CPU.

    python bench/render_bench.py [--run RUN_DIR] [--frames 8] [--resolution 64x64] [--tile 32]

Without --run, writes the demo scene (64x64) and trains a small model for a few steps in a
temporary folder (the weights do not matter for speed, only the model size: --model-args).
Then renders the same orbit three times, each in a fresh process, timing only the render loop
(render.json's last_run: frames/s and rays/s, process start-up excluded):

    1 rank  x 1 thread      (baseline)
    1 rank  x 2 threads     (intra-op threading)
    2 ranks x 1 thread      (torchrun, gloo; tiles split across the ranks)

and checks the 2-rank frames equal the 1-rank ones (PNG levels). Prints a table and writes
bench_render.json in the output folder. Other processes on the machine skew the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = ["model.depth=4", "model.width=64", "model.skip=2", "model.pos_freqs=8",
               "model.dir_freqs=4", "model.n_samples=32", "model.n_importance=32"]


def _run(args: list[str], threads: int, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc > 1:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(port), "-m", "nerf_dist", *args]
    else:
        cmd = [sys.executable, "-m", "nerf_dist", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if res.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="trained run folder (default: train a small one)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--resolution", default="64x64")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--model-args", nargs="*", default=SMALL_MODEL,
                    help="model overrides for the trained run (default: a small 4x64 MLP)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="render_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else work / "run"
    if not args.run:
        scene = work / "scene"
        if not (scene / "transforms_train.json").exists():
            _run(["demo-scene", str(scene), "--resolution", "64", "--views", "20"], 1)
        if not (run / "config.yaml").exists():
            print(f"training a small model on the demo scene -> {run}", flush=True)
            _run(["train", f"data.root={scene}", f"run.dir={run}", "train.steps=20",
                  "train.rays_per_batch=512", "log.progress=false", "checkpoint.every=20",
                  "train.threads=2", *args.model_args], 2)
    configs = [("1 rank  x 1 thread", 1, 1), ("1 rank  x 2 threads", 1, 2),
               ("2 ranks x 1 thread", 2, 1)]
    results = []
    for name, nproc, threads in configs:
        out = work / f"render_{nproc}x{threads}"
        shutil.rmtree(out, ignore_errors=True)
        flag = "--run-dir" if nproc > 1 else "--run"
        _run(["render", flag, str(run), "--path", "orbit", "--frames", str(args.frames),
              "--resolution", args.resolution, "--tile", str(args.tile), "--out", str(out),
              "--no-progress", "--no-video", "--threads", str(threads)], threads, nproc)
        last = json.loads((out / "render.json").read_text())["last_run"]
        results.append({"config": name, "ranks": nproc, "threads_per_rank": threads,
                        "frames_per_s": last["frames_per_s"], "rays_per_s": last["rays_per_s"],
                        "seconds": last["seconds"], "rank_seconds": last["rank_seconds"]})
        print(f"{name}: {last['frames_per_s']:7.3f} frames/s  {last['rays_per_s']:9.0f} rays/s "
              f"({last['seconds']:.1f} s; per-rank busy s: "
              f"{[round(s, 1) for s in last['rank_seconds'] or []]})", flush=True)
    base1, base2, two = (r["rays_per_s"] for r in results)
    a, b = work / "render_1x1" / "rgb", work / "render_2x1" / "rgb"
    import imageio.v3 as iio
    max_level = max(int(np.abs(iio.imread(a / f).astype(int) - iio.imread(b / f).astype(int)).max())
                    for f in sorted(os.listdir(a)))
    summary = {"frames": args.frames, "resolution": args.resolution, "tile": args.tile,
               "results": results,
               "speedup_2ranks_vs_1rank_1thread": two / base1,
               "speedup_2ranks_vs_1rank_2threads": two / base2,
               "max_png_level_diff_2ranks_vs_1rank": max_level, "cpu_count": os.cpu_count()}
    print(f"2 ranks x 1 thread vs 1 rank x 1 thread:  {two / base1:.2f}x")
    print(f"2 ranks x 1 thread vs 1 rank x 2 threads: {two / base2:.2f}x")
    print(f"max PNG level difference, 2 ranks vs 1: {max_level}")
    (work / "bench_render.json").write_text(json.dumps(summary, indent=1))
    print(f"written: {work / 'bench_render.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
