"""What stops or skips a step, agreed by every rank (train/guards.py): here the fp16 loss
scaler's skip (issue 24), with two real gloo processes whose gradients differ as a partitioned
model's box gradients do."""
from __future__ import annotations

import datetime

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from nerf_dist.dist import DistInfo
from nerf_dist.lifecycle import StallWatchdog
from nerf_dist.train import guards


def _step(model, optim, scaler, dist, dog, step, inf_on):
    x = torch.linspace(-1, 1, 6).view(2, 3)
    loss = model(x).square().sum()
    optim.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if dist.rank in inf_on:
        with torch.no_grad():
            model.weight.grad[0, 0] = float("inf")     # this rank's own (box) gradient overflowed
    overflow = guards.scaler_overflow(scaler, optim)
    stop, bad, budget, anywhere = guards.agree(dist, dog, None, guards.nonfinite(
        loss, model, scaler), False, step, overflow)
    guards.scaler_step(scaler, optim, anywhere, take=not bad)
    return {"local": bool(overflow), "anywhere": anywhere, "scale": scaler.get_scale(),
            "weight": model.weight.detach().clone()}


def _worker(rank, world, init, out):
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                             timeout=datetime.timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optim = torch.optim.Adam(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        dist = DistInfo(rank, world)
        dog = StallWatchdog(rank, 0.0)
        w0 = model.weight.detach().clone()
        rec = [_step(model, optim, scaler, dist, dog, 0, inf_on={1}),
               _step(model, optim, scaler, dist, dog, 1, inf_on=set())]
        torch.save({"w0": w0, "rec": rec}, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def test_one_ranks_fp16_overflow_makes_every_rank_skip_the_step(tmp_path):
    out = str(tmp_path / "g")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    first = [r["rec"][0] for r in res]
    assert [f["local"] for f in first] == [False, True]      # only rank 1 overflowed ...
    assert all(f["anywhere"] for f in first)                 # ... and every rank knows it
    for r in res:                                            # every rank skipped, scale halved
        assert torch.equal(r["rec"][0]["weight"], r["w0"])
        assert r["rec"][0]["scale"] == 512.0
    second = [r["rec"][1] for r in res]                      # then every rank steps alike
    assert not any(s["anywhere"] for s in second)
    assert not torch.equal(second[0]["weight"], res[0]["w0"])
    assert torch.equal(second[0]["weight"], second[1]["weight"])
    assert second[0]["scale"] == second[1]["scale"] == 512.0
