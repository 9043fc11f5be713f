"""Shared pieces of the benchmarks: lego location, a timed training loop with held-out PSNR."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LEGO = Path(os.environ.get("NERF_DIST_LEGO", REPO.parent / "shared" / "data" / "lego"))
sys.path.insert(0, str(REPO))

from nerf_dist.config import load_config  # noqa: E402
from nerf_dist.dist import DistInfo  # noqa: E402
from nerf_dist.evaluation import render_views  # noqa: E402
from nerf_dist.metrics import psnr  # noqa: E402
from nerf_dist.renderer.core import RenderSetup  # noqa: E402
from nerf_dist.scenes import load_scene  # noqa: E402
from nerf_dist.train import Trainer  # noqa: E402


def timed_training(overrides: list[str], budget_s: float, eval_every_s: float, n_eval_views: int = 2,
                   target_psnr: float | None = None, device: str = "cpu", log=print) -> dict:
    """Train in-process for budget_s seconds of training time (evaluation time excluded).

    Every eval_every_s seconds, renders n_eval_views held-out (val) views (through the renderer,
    as `nerf-dist eval` does) and records their mean PSNR. Returns {'curve': [(train_s, step, psnr)], 'steps', 'rays_per_s', 'time_to_target'}.
    """
    cfg = load_config(None, ["log.progress=false", "checkpoint.every=0", *overrides])
    dev = torch.device(device)
    trainer = Trainer(cfg, DistInfo(device=dev))
    val = load_scene(cfg.data, "val")
    views = list(range(0, val.n, max(1, val.n // n_eval_views)))[:n_eval_views]
    curve = []
    train_s = 0.0
    next_eval = eval_every_s
    time_to_target = None
    rays = 0
    while train_s < budget_s and trainer.step < cfg.train.steps:
        t0 = time.perf_counter()
        out = trainer.train_step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - t0
        rays += out["n_global"]
        if train_s >= next_eval or train_s >= budget_s or trainer.step >= cfg.train.steps:
            next_eval += eval_every_s
            setup = RenderSetup.from_scene(trainer.model, val, cfg.model.chunk, dev)
            p = sum(psnr(out["rgb"], val.images[i])
                    for i, out in render_views(setup, val, views)) / len(views)
            trainer.model.train()
            curve.append((round(train_s, 1), trainer.step, round(p, 2)))
            scalars = "".join(f" {k}={v:.3f}" for k, v in trainer.model.log_scalars().items())
            log(f"  t={train_s:7.1f}s step={trainer.step:6d} val PSNR={p:6.2f} dB "
                f"samples/ray={out['samples_per_ray']:.0f}{scalars}")
            if target_psnr is not None and time_to_target is None and p >= target_psnr:
                time_to_target = train_s
    trainer.close()
    return {"curve": curve, "steps": trainer.step, "rays_per_s": rays / max(train_s, 1e-9),
            "time_to_target": time_to_target, "train_s": train_s}
