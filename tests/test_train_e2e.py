"""End-to-end: train, checkpoint, resume exactly, evaluate; bad-run errors; TensorBoard events."""
import json
import os

import torch

from conftest import TINY_MODEL, run_cli
from nerf_dist.checkpoint import Checkpointer


def _train(scene, run_dir, *extra, nproc=1, env=None, ckpt=None):
    args = ["train", f"data.root={scene}", f"run.dir={run_dir}", "train.rays_per_batch=256",
            "log.every=5", "log.progress=false", "checkpoint.every=10", "train.threads=1",
            *TINY_MODEL, *extra]
    if ckpt:
        args.append(f"checkpoint.dir={ckpt}")
    res = run_cli(args, env=env, nproc=nproc)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _params(url, step=None):
    loaded = Checkpointer(url, keep=10, is_main=False).load(step)
    assert loaded is not None
    return loaded[1]["model"]


def test_resume_is_bit_identical(demo_scene, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    cache = tmp_path / "cache"
    _train(demo_scene, full, "train.steps=20", f"data.cache_dir={cache}")
    _train(demo_scene, part, "train.steps=10", f"data.cache_dir={cache}")
    res = _train(demo_scene, part, "train.steps=20", "train.resume=auto", f"data.cache_dir={cache}")
    assert "resumed from step 10" in res.stdout
    a = _params(str(full / "checkpoints"))
    b = _params(str(part / "checkpoints"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training changed something (the comparison is not vacuous)
    c = _params(str(part / "checkpoints"), 10)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_with_other_model_is_an_error(demo_scene, tmp_path):
    run = tmp_path / "r"
    _train(demo_scene, run, "train.steps=5")
    args = ["train", f"data.root={demo_scene}", f"run.dir={run}", "train.steps=10",
            "train.resume=auto", "log.progress=false", *TINY_MODEL, "model.width=48"]
    res = run_cli(args)
    assert res.returncode != 0
    assert "model.width" in res.stderr and "32" in res.stderr and "48" in res.stderr


def test_unwritable_checkpoint_dir_fails_before_training(demo_scene, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli(["train", f"data.root={demo_scene}", f"run.dir={tmp_path / 'r'}",
                   f"checkpoint.dir={blocker / 'ckpt'}", "train.steps=5", *TINY_MODEL])
    assert res.returncode != 0
    assert "checkpoint.dir" in res.stderr and str(blocker) in res.stderr
    assert "training" not in res.stdout


def test_bad_config_key_is_named(demo_scene, tmp_path):
    res = run_cli(["train", f"data.root={demo_scene}", "train.stepz=5"])
    assert res.returncode != 0 and "train.stepz" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_scene_is_named(tmp_path):
    res = run_cli(["train", f"data.root={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'r'}"])
    assert res.returncode != 0 and "nowhere" in res.stderr
    assert "Traceback" not in res.stderr


def test_tensorboard_events_and_eval_report(demo_scene, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "tb_run"
    _train(demo_scene, run, "train.steps=10", "eval.every=10")
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
