"""End-to-end: train, checkpoint, resume exactly, evaluate; TensorBoard events.

(Bad-run and config errors: tests/test_cli.py, in-process.)
"""
import json
import os

import pytest
import torch

from conftest import checkpoint_params, run_cli, train_tiny


@pytest.mark.slow
def test_resume_is_bit_identical(demo_scene, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    cache = tmp_path / "cache"
    train_tiny(demo_scene, full, "train.steps=20", f"data.cache_dir={cache}")
    train_tiny(demo_scene, part, "train.steps=10", f"data.cache_dir={cache}")
    res = train_tiny(demo_scene, part, "train.steps=20", "train.resume=auto",
                     f"data.cache_dir={cache}")
    assert "resumed from step 10" in res.stdout
    a = checkpoint_params(str(full / "checkpoints"))
    b = checkpoint_params(str(part / "checkpoints"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training changed something (the comparison is not vacuous)
    c = checkpoint_params(str(part / "checkpoints"), 10)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_tensorboard_events_and_eval_report(demo_scene, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "tb_run"
    train_tiny(demo_scene, run, "train.steps=10", "eval.every=10")
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("train/loss", "train/psnr", "train/lr", "perf/rays_per_s", "perf/elapsed_s",
                "time/data_s", "time/forward_backward_s", "time/allreduce_s", "eval/psnr"):
        assert tag in tags, tag
    assert [e.step for e in ea.Scalars("train/loss")] == [5, 10]
    assert ea.Tags()["images"], "eval images were not logged"
    res = run_cli(["eval", "--run", str(run)])
    assert res.returncode == 0, res.stderr
    rep = json.loads((run / "eval_test" / "report.json").read_text())
    assert rep["n_images"] == len(rep["per_image"]) == 8
    assert rep["step"] == 10 and rep["train_seconds"] > 0
    assert all(0 < e["ssim"] <= 1 and e["psnr"] > 5 for e in rep["per_image"])
    assert os.path.exists(run / "eval_test" / "rgb_000.png")
    assert os.path.exists(run / "eval_test" / "depth_007.png")
