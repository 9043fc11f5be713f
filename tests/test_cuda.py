"""CUDA readiness: the fast path under bf16/fp16 autocast, the vanilla model, the renderer, a
1-rank NCCL process group, and checkpoints written from GPU tensors read back without a GPU.

Every test here needs a CUDA GPU and is skipped (with the reason) elsewhere. bench/gpu_check.sh
runs this file first on a GPU machine, then prints the GPU figures.
"""
import datetime
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as tdist

from conftest import REPO, TINY_MODEL, free_port

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

# The fast path as configs/demo.yaml sizes it (the demo scene is its scene).
DEMO_YAML = str(REPO / "configs" / "demo.yaml")


def _trainer(scene, run, config=None, *overrides, device="cuda"):
    from nerf_dist.config import load_config
    from nerf_dist.dist import DistInfo
    from nerf_dist.train import Trainer
    cfg = load_config(config, [f"data.root={scene}", f"run.dir={run}", "log.progress=false",
                               "checkpoint.every=0", "eval.every=0", "train.resume=none",
                               *overrides])
    return Trainer(cfg, DistInfo(device=torch.device(device)))


def _losses(trainer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        out = trainer.train_step()
        assert not out["nonfinite"], f"non-finite loss or gradient at step {trainer.step}"
        losses.append(float(out["loss"]))
    return losses


def _falls(losses: list[float], factor: float) -> bool:
    head, tail = losses[:5], losses[-5:]
    return sum(tail) / len(tail) < factor * sum(head) / len(head)


@pytest.fixture(autouse=True)
def _exact_fp32_matmuls():
    """NOTE: TF32 would make fp32 matmuls on Ampere+ differ from the CPU by ~1e-3; the tests
    compare against the CPU, so they run with it off and restore whatever was set."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fast_path_autocast_trains(demo_scene, tmp_path, precision):
    tr = _trainer(demo_scene, tmp_path / "run", DEMO_YAML, f"model.precision={precision}",
                  "train.rays_per_batch=2048")
    try:
        assert next(tr.model.parameters()).is_cuda
        # fp16 needs loss scaling on CUDA (GradScaler); bf16 does not
        assert tr.scaler.is_enabled() == (precision == "fp16")
        losses = _losses(tr, 60)
        assert all(torch.isfinite(torch.tensor(losses))), losses
        assert _falls(losses, 0.5), losses
        assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    finally:
        tr.close()


def test_vanilla_trains(demo_scene, tmp_path):
    tr = _trainer(demo_scene, tmp_path / "run", None, *TINY_MODEL, "train.lr=5e-3",
                  "train.rays_per_batch=1024")
    try:
        losses = _losses(tr, 40)
        assert _falls(losses, 0.7), losses
    finally:
        tr.close()


def test_renderer_cuda_equals_cpu(demo_scene):
    """A random vanilla model (fp32) renders the same frames on CUDA as on the CPU.

    Tolerance: 2e-4 for rgb and opacity, 1e-3 x far for depth (float summation order and the
    importance samples' inverse CDF differ between devices; one PNG level is 3.9e-3).
    """
    from nerf_dist.config import load_config
    from nerf_dist.models import build_model
    from nerf_dist.renderer import RenderSetup, render_frames
    from nerf_dist.renderer.paths import split_path
    from nerf_dist.scenes import load_scene
    scene = load_scene(load_config(None, [f"data.root={demo_scene}"]).data, "val")
    torch.manual_seed(0)
    model = build_model(load_config(None, TINY_MODEL).model).eval()
    cams = split_path(scene)
    frames = [0, 1]
    cpu = dict(render_frames(RenderSetup.from_scene(model, scene, 4096, "cpu"), cams, frames,
                             tile=16))
    gpu = dict(render_frames(RenderSetup.from_scene(model.cuda(), scene, 4096, "cuda"), cams,
                             frames, tile=16))
    for f in frames:
        assert gpu[f]["rgb"].device.type == "cpu"  # assembled on the host
        assert (cpu[f]["acc"] > 0.05).any()  # the comparison is not of empty frames
        assert (gpu[f]["rgb"] - cpu[f]["rgb"]).abs().max() <= 2e-4
        assert (gpu[f]["acc"] - cpu[f]["acc"]).abs().max() <= 2e-4
        assert (gpu[f]["depth"] - cpu[f]["depth"]).abs().max() <= 1e-3 * float(scene.far)


def test_nccl_one_rank_process_group(monkeypatch):
    from nerf_dist import dist
    assert tdist.is_nccl_available(), "this torch build has no NCCL"
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    torch.cuda.set_device(0)
    tdist.init_process_group("nccl", init_method="env://", rank=0, world_size=1,
                             timeout=datetime.timedelta(seconds=60))
    try:
        assert tdist.get_backend() == "nccl"
        t = torch.arange(4, dtype=torch.float32, device="cuda")
        tdist.all_reduce(t)
        flags = torch.tensor([0.0, 1.0, 0.0], device="cuda")  # the trainer's stop-flag reduce
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        torch.cuda.synchronize()
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0] and flags.tolist() == [0.0, 1.0, 0.0]
        # the project's helpers on an NCCL group (objects travel through CUDA tensors there)
        dist.barrier()
        assert dist.broadcast_object({"step": 7}) == {"step": 7}
    finally:
        dist.close()
    assert not tdist.is_initialized()


def _digests(state_dict) -> dict:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in state_dict.items() if v.dtype != torch.bfloat16}


def test_checkpoint_saved_on_gpu_loads_without_a_gpu(demo_scene, tmp_path):
    from nerf_dist.checkpoint import Checkpointer
    run = tmp_path / "run"
    tr = _trainer(demo_scene, run, None, *TINY_MODEL, "train.rays_per_batch=512")
    try:
        _losses(tr, 3)
        tr.save()
        expected = _digests(tr.model.state_dict())
    finally:
        tr.close()
    step, state = Checkpointer(str(run / "checkpoints"), keep=3, is_main=False).load()
    assert step == 3
    # map_location: every tensor comes back on the CPU, optimizer moments included
    tensors = [v for v in state["model"].values()] + [
        v for s in state["optimizer"]["state"].values() for v in s.values()
        if isinstance(v, torch.Tensor)]
    assert tensors and all(v.device.type == "cpu" for v in tensors)
    # and a process that sees no GPU at all loads it (as `nerf-dist render` on a laptop would)
    code = ("import hashlib, json, torch\n"
            "from nerf_dist.run_dir import load_model\n"
            "assert not torch.cuda.is_available()\n"
            f"m = load_model(run_dir={str(run)!r}).model\n"
            "print(json.dumps({k: hashlib.sha256(v.detach().contiguous().numpy().tobytes())"
            ".hexdigest() for k, v in m.state_dict().items() if v.dtype != torch.bfloat16}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(REPO), env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == expected
