"""DDP on CPU with gloo: 1 rank (2 threads) vs 2 ranks (1 thread each) at the same global batch.

    python bench/ddp_bench.py [--downscale 1] [--steps 8] [--batch 1024] [--extra key=value ...]

Builds the lego ray cache first (separate process, so its memory does not count), then trains the
paper configuration under torchrun and prints, per configuration: rays/s, all-reduce seconds per
step, forward+backward seconds per step, and each rank's peak resident memory (VmHWM). Prints
figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from common import LEGO, REPO


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> None:
    """Runs inside torchrun: train `steps` steps, report per-rank figures as one JSON line."""
    import torch
    from nerf_dist import dist
    from nerf_dist.config import load_config
    from nerf_dist.train import Trainer
    cfg = load_config(None, args.overrides)
    info = dist.init()
    try:
        tr = Trainer(cfg, info)
        warm = 2
        for _ in range(warm):
            tr.train_step()
        dist.barrier()
        t0 = time.perf_counter()
        ar, fb, data = 0.0, 0.0, 0.0
        for _ in range(args.steps):
            o = tr.train_step()
            ar += o["t_allreduce"]
            fb += o["t_compute"]
            data += o["t_data"]
        dist.barrier()
        wall = time.perf_counter() - t0
        hwm = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    hwm = int(line.split()[1]) // 1024
        rep = {"rank": info.rank, "world": info.world_size, "threads": torch.get_num_threads(),
               "rays_per_s": args.steps * cfg.train.rays_per_batch / wall,
               "allreduce_s_per_step": ar / args.steps, "fwd_bwd_s_per_step": fb / args.steps,
               "data_s_per_step": data / args.steps, "peak_rss_mib": hwm,
               "local_rays": len(tr.loader.shards) and sum(tr.cache.shard_sizes[s] for s in tr.loader.shards)}
        # NOTE: one file per rank: torchrun interleaves the ranks' stdout.
        with open(os.path.join(cfg.run.dir, f"bench_rank{info.rank}.json"), "w") as f:
            json.dump(rep, f)
        tr.close()
    finally:
        dist.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    if not LEGO.exists():
        raise SystemExit(f"lego not found at {LEGO} (set NERF_DIST_LEGO)")
    tmp = tempfile.mkdtemp(prefix="nerf_dist_ddp_")
    common = [f"data.root={LEGO}", f"data.downscale={a.downscale}", f"data.cache_dir={tmp}/cache",
              f"train.rays_per_batch={a.batch}", f"model.precision={a.precision}",
              "log.progress=false", "checkpoint.every=0", "train.steps=100000", *a.extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "nerf_dist", "cache", f"run.dir={tmp}/c", *common],
                   check=True, env={**env, "OMP_NUM_THREADS": "2"}, cwd=REPO)
    print(f"ray cache built in {time.time() - t0:.0f} s")
    for nproc, threads in ((1, 2), (2, 1)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_port()), __file__, "--worker", "--steps", str(a.steps),
               f"run.dir={tmp}/r{nproc}", *common, f"train.threads={threads}"]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env={**env, "OMP_NUM_THREADS": str(threads)}, cwd=REPO)
        files = [os.path.join(tmp, f"r{nproc}", f"bench_rank{r}.json") for r in range(nproc)]
        reps = [json.load(open(f)) for f in files if os.path.exists(f)]
        if out.returncode != 0 or len(reps) != nproc:
            print(out.stdout[-2000:], out.stderr[-4000:])
            raise SystemExit(f"{nproc} rank(s) failed")
        reps.sort(key=lambda r: r["rank"])
        print(f"{nproc} rank(s) x {threads} thread(s), global batch {a.batch}, lego "
              f"{800 // a.downscale}x{800 // a.downscale}, {a.precision}: "
              f"{reps[0]['rays_per_s']:.0f} rays/s, all-reduce {reps[0]['allreduce_s_per_step'] * 1e3:.1f} ms/step, "
              f"fwd+bwd {reps[0]['fwd_bwd_s_per_step']:.2f} s/step, data {reps[0]['data_s_per_step'] * 1e3:.1f} ms/step")
        for r in reps:
            print(f"   rank {r['rank']}: peak RSS {r['peak_rss_mib']} MiB, rays held {r['local_rays']}")


if __name__ == "__main__":
    main()
