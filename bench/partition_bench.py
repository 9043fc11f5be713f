"""The partitioned kind (issue 19 point 7), CPU, small: memory per rank, capacity, communication.

    python bench/partition_bench.py [--parts memory,comm,capacity] [--total-log2 18]
        [--steps 300] [--capacity-log2 10] [--batch 1024] [--scene city|objects]

(a) memory: model + Adam bytes held per rank for P = 1, 2, 4 at a fixed total model size (the
    P boxes share 2^total_log2 table rows per level: each box has 2^(total_log2 - log2 P)); a rank
    of a P-rank box group holds one box and the shared colour head. Target: 1/P.
(c) comm: per training step, floats exchanged per ray (the segment all-gather) and gradient bytes
    all-reduced, and the time per step of 2 gloo processes: P=2 boxes on 2 ranks vs P=1 as 2
    data-parallel replicas (the DDP pattern), at the same global batch and total model size.
(b) capacity: held-out PSNR after the same steps for P = 1, 2, 4 at a fixed per-box table
    (2^capacity_log2 rows per level, small enough to be the bottleneck), trained in one process
    (P boxes in one process is the same model as P boxes on P ranks: tests/test_partition.py).
    --scene city (default): `demo-scene --variant city`, detail spread over the whole box;
    --scene objects: the four-solid demo scene (the figure before the city variant).
Prints markdown tables; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from common import timed_training

from nerf_dist.models import ModelConfig, build_model
from nerf_dist.models.partitioned.segments import SEG_WIDTH
from nerf_dist.render_ops.sampling import RowNoise
from nerf_dist.scenes.demo import write_demo_scene
from nerf_dist.scenes.demo_city import write_city_scene

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


def small(P: int, log2: int, **kw) -> ModelConfig:
    base = dict(kind="partitioned", partitions=P, hash_levels=8, hash_features=2,
                hash_log2_size=log2, hash_base_res=16, hash_max_res=512, hidden=32,
                geo_features=7, box_samples=32)
    base.update(kw)
    return ModelConfig(**base)


def rank_bytes(model, boxes) -> tuple[int, int]:
    """(params, params + Adam state) bytes of a rank holding `boxes` and the shared head."""
    n = sum(p.numel() for k in boxes for p in model.boxes[str(k)].parameters())
    n += sum(p.numel() for p in model.colour.parameters())
    return 4 * n, 4 * n * 4            # weight + grad + two Adam moments, fp32


def memory_table(total_log2: int) -> None:
    print(f"\n(a) memory per rank at a fixed total model size (2^{total_log2} table rows per "
          f"level in all)\n")
    print("| P | rows/level per box | model MB per rank | model+Adam MB per rank | vs P=1 |")
    print("|---|---|---|---|---|")
    base = None
    for P in (1, 2, 4):
        log2 = total_log2 - (P.bit_length() - 1)
        model = build_model(small(P, log2), AABB)
        w, t = rank_bytes(model, [0])
        base = base or t
        print(f"| {P} | 2^{log2} | {w / 2**20:.2f} | {t / 2**20:.2f} | {t / base:.3f} |")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comm_worker(rank, world, port, P, log2, batch, steps, out):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model(small(P, log2), AABB)
        replica, n_rep = model.distribute(rank, world)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-15)
        g = torch.Generator().manual_seed(1)
        ro = torch.randn(batch, 3, generator=g) * 0.2 + torch.tensor([0.0, -3.0, 0.0])
        rd = torch.nn.functional.normalize(torch.randn(batch, 3, generator=g) * 0.3
                                           + torch.tensor([0.0, 1.0, 0.0]), dim=-1)
        idx = torch.arange(batch)[replica::n_rep]
        target = torch.rand(batch, 3, generator=g)
        times, sync_t = [], []
        for step in range(steps + 1):
            t0 = time.perf_counter()
            res = model(ro[idx], rd[idx], rd[idx], 0.1, 6.0, train=True,
                        generator=RowNoise(step, batch, idx))
            loss = sum(model.losses(res, target[idx], n_rep / (batch * 3)).values())
            opt.zero_grad()
            loss.backward()
            t1 = time.perf_counter()
            model.sync_gradients()
            t2 = time.perf_counter()
            opt.step()
            if step:                             # the first step warms up
                times.append(time.perf_counter() - t0)
                sync_t.append(t2 - t1)
        if rank == 0:
            shared = sum(p.numel() for p in model.colour.parameters())
            boxes = sum(p.numel() for p in model.boxes.parameters())
            torch.save({"step_s": sum(times) / len(times), "sync_s": sum(sync_t) / len(sync_t),
                        "shared": shared, "boxes": boxes, "replicas": n_rep}, out)
    finally:
        tdist.destroy_process_group()


def comm_table(total_log2: int, batch: int, steps: int) -> None:
    print(f"\n(c) communication and time per step, 2 gloo processes (1 thread each), global "
          f"batch {batch}, total table 2^{total_log2} rows per level\n")
    print("| layout | floats exchanged per ray (sent + received per rank) | gradient all-reduce "
          "floats per rank | s per step | of which gradient sync s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for P, name in ((1, "P=1, 2 replicas (DDP pattern)"), (2, "P=2 boxes on 2 ranks")):
            log2 = total_log2 - (P.bit_length() - 1)
            out = os.path.join(tmp, f"p{P}.pt")
            mp.spawn(_comm_worker, args=(2, _port(), P, log2, batch, steps, out), nprocs=2)
            r = torch.load(out)
            # the box group's all-gather: each rank sends its segment row and receives the other's
            per_ray = 0 if P == 1 else 2 * SEG_WIDTH
            reduce = r["shared"] + (r["boxes"] if r["replicas"] > 1 else 0)
            print(f"| {name} | {per_ray} | {reduce} | {r['step_s']:.3f} | {r['sync_s']:.4f} |")


def capacity_table(log2: int, steps: int, batch: int, scene_kind: str = "city") -> None:
    views = 60 if scene_kind == "city" else 40
    print(f"\n(b) capacity: {scene_kind} demo scene (64x64, {views} views), {steps} steps of "
          f"{batch} rays, per-box table 2^{log2} rows per level (one process)\n")
    print("| P | total table rows/level | held-out PSNR dB | train s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        scene = os.path.join(tmp, "scene")
        write = write_city_scene if scene_kind == "city" else write_demo_scene
        write(scene, resolution=64, views=views, seed=0)
        for P in (1, 2, 4):
            cfg = small(P, log2)
            over = [f"data.root={scene}", f"run.dir={tmp}/run{P}", f"data.cache_dir={tmp}/cache",
                    f"train.steps={steps}", f"train.rays_per_batch={batch}", "train.lr=1e-2",
                    "log.every=100000", "train.threads=2", "eval.every=0"]
            over += [f"model.{k}={getattr(cfg, k)}" for k in
                     ("kind", "partitions", "hash_levels", "hash_features", "hash_log2_size",
                      "hash_base_res", "hash_max_res", "hidden", "geo_features", "box_samples")]
            res = timed_training(over, budget_s=1e9, eval_every_s=1e9, n_eval_views=2,
                                 log=lambda *a: None)
            print(f"| {P} | {P} x 2^{log2} | {res['curve'][-1][2]:.2f} | {res['train_s']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="memory,comm,capacity")
    ap.add_argument("--total-log2", type=int, default=18)
    ap.add_argument("--capacity-log2", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--scene", choices=("city", "objects"), default="city",
                    help="scene of table (b) (default city)")
    a = ap.parse_args()
    parts = a.parts.split(",")
    if "memory" in parts:
        memory_table(a.total_log2)
    if "comm" in parts:
        comm_table(a.total_log2, a.batch, 5)
    if "capacity" in parts:
        capacity_table(a.capacity_log2, a.steps, a.batch, a.scene)


if __name__ == "__main__":
    main()
