"""Micro-benchmark of the fast path: training rays/s (forward + backward + Adam) on this machine.

    python bench/fast_micro.py [--rays 4096] [--steps 5] [--precision fp32 bf16] [--compile]
        [--set hash_log2_size=17 ...]

The occupancy grid is set from an analytic sphere (radius 0.6 in [-1.5, 1.5]^3), so the number of
samples per ray resembles a trained scene's rather than the all-occupied start.
"""
from __future__ import annotations

import argparse
import time

import torch

from nerf_dist.config import ModelConfig, parse_overrides
from nerf_dist.models import build_model


def rays(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = 4.0 * o / o.norm(dim=-1, keepdim=True)
    d = (torch.rand(n, 3, generator=g) - 0.5) * 2.0 - o
    return o, d / d.norm(dim=-1, keepdim=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rays", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="model.* overrides, e.g. hash_log2_size=17")
    args = ap.parse_args()
    over = parse_overrides(args.set)
    over = over.get("model", over)
    aabb = torch.tensor([[-1.5] * 3, [1.5] * 3])
    o, d = rays(args.rays)
    sphere = lambda p: 100.0 * (p.norm(dim=-1) < 0.6).float()  # noqa: E731
    for prec in args.precision:
        torch.manual_seed(0)
        cfg = ModelConfig(**{"kind": "fast", "precision": prec, "compile": args.compile, **over})
        model = build_model(cfg, aabb)
        model.grid.update(0, sphere, torch.Generator().manual_seed(0))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-15)
        times, spr = [], 0.0
        for s in range(args.steps + 1):
            t0 = time.perf_counter()
            out = model(o, d, d, 2.0, 6.0, train=True, generator=torch.Generator().manual_seed(s),
                        background=torch.ones(3))
            loss = ((out["rgb"] - 0.5) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if s:                                   # the first step warms up (and compiles)
                times.append(time.perf_counter() - t0)
            spr = float(out["samples_per_ray"])
        dt = sorted(times)[len(times) // 2]
        print(f"{prec:5s} compile={args.compile} rays={args.rays} samples/ray={spr:.1f} "
              f"step={dt * 1e3:.0f} ms  {args.rays / dt:,.0f} rays/s  threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
