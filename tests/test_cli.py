"""nerf_dist.cli: usage, config and argument errors, run in this process (``cli`` fixture).

Each error must exit 1 (2 for usage) with one `nerf-dist COMMAND: error: ...` line naming what
is wrong, never a traceback (an unexpected exception would fail the test right here), and write
nothing it should not. What needs processes of its own (several ranks, signals) is tested with
real processes elsewhere: test_distributed, test_lifecycle, test_elastic, test_launch.
"""
import shutil
import time

import pytest
import torch

from conftest import TINY_MODEL, tiny_train_args
from nerf_dist.checkpoint import Checkpointer


# ----------------------------------------------------------------------------- usage

def test_no_command_prints_help_and_exits_2(cli):
    res = cli()
    assert res.returncode == 2 and "usage: nerf-dist" in res.stdout and "commands:" in res.stdout


def test_unknown_command_is_a_usage_error(cli):
    res = cli("trian")
    assert res.returncode == 2 and "invalid choice: 'trian'" in res.stderr


def test_render_needs_a_run_or_a_checkpoint(cli, tmp_path):
    res = cli("render", "--out", tmp_path / "o")
    assert res.returncode == 2 and "--run-dir/--run --checkpoint is required" in res.stderr
    assert not (tmp_path / "o").exists()


def test_version_and_keys(cli):
    res = cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("nerf-dist ")
    res = cli("keys")
    assert res.returncode == 0 and "train.steps" in res.stdout and "model.width" in res.stdout


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("text,needle", [
    ("train:\n  steps: [1\n", "is not valid YAML"),
    ("train:\n  - 1\n", "config section 'train': expected a mapping"),
    ("trian:\n  steps: 3\n", "unknown config key 'trian'"),
    ("train:\n  steps: abc\n", "train.steps"),
], ids=["malformed", "not-a-mapping", "unknown-section", "bad-value"])
def test_bad_config_file_is_named(cli, tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = cli("train", "--config", cfg, f"run.dir={tmp_path / 'r'}")
    assert res.returncode == 1 and needle in res.stderr, res.stderr
    assert res.stderr.startswith("nerf-dist train: error: ")


def test_missing_config_file_is_named(cli, tmp_path):
    res = cli("train", "--config", tmp_path / "missing.yaml")
    assert res.returncode == 1
    assert f"config file not found: {tmp_path / 'missing.yaml'}" in res.stderr


@pytest.mark.parametrize("override,needle", [
    ("train.stepz=5", "train.stepz"),
    ("train.steps=abc", "config key 'train.steps': expected an integer, got 'abc'"),
    ("trainsteps", "'trainsteps' is not of the form section.key=value"),
])
def test_bad_override_is_named(cli, demo_scene, tmp_path, override, needle):
    res = cli("train", f"data.root={demo_scene}", f"run.dir={tmp_path / 'r'}", override)
    assert res.returncode == 1 and needle in res.stderr, res.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_scene_is_named(cli, tmp_path):
    res = cli("train", f"data.root={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'r'}")
    assert res.returncode == 1 and str(tmp_path / "nowhere") in res.stderr


def test_credentials_never_reach_the_error_line(cli, tmp_path):
    res = cli("train", "data.root=memory://user:s3cret@host/nowhere", f"run.dir={tmp_path / 'r'}")
    assert res.returncode == 1 and "memory://***@host/nowhere" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout


def test_errors_of_other_ranks_say_which(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    res = cli("train", f"data.root={tmp_path}", "train.stepz=5")
    assert res.returncode == 1 and res.stderr.startswith("[rank 1] nerf-dist train: error: ")


def test_debug_mode_reraises(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("NERF_DIST_DEBUG", "1")
    with pytest.raises(ValueError, match="train.stepz"):
        cli("train", f"data.root={tmp_path}", "train.stepz=5")


def test_unwritable_checkpoint_dir_fails_before_training(cli, demo_scene, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("train", f"data.root={demo_scene}", f"run.dir={tmp_path / 'r'}",
              f"checkpoint.dir={blocker / 'ckpt'}", "train.steps=5", *TINY_MODEL)
    assert res.returncode == 1
    assert "checkpoint.dir" in res.stderr and str(blocker) in res.stderr
    assert "training" not in res.stdout


def test_resume_with_other_model_is_an_error(cli, demo_scene, tiny_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    res = cli(*tiny_train_args(demo_scene, run, "train.steps=20", "train.resume=auto",
                               "model.width=48"))
    assert res.returncode == 1
    assert "model.width" in res.stderr and "32" in res.stderr and "48" in res.stderr
    assert Checkpointer(str(run / "checkpoints"), is_main=False).list() == [10]


# ----------------------------------------------------------------------------- render / eval

@pytest.mark.parametrize("extra,needle", [
    (["--resolution", "0x32"], "--resolution"),
    (["--resolution", "0"], "--resolution"),
    (["--frames", "0"], "--frames"),
    (["--tile", "0"], "--tile"),
    (["--resolution", "2000000x10"], "--resolution"),
])
def test_render_bad_arguments(cli, tiny_run, tmp_path, extra, needle):
    out = tmp_path / "bad"
    res = cli("render", "--run", tiny_run, "--out", out, "--no-progress", *extra)
    assert res.returncode == 1 and needle in res.stderr, res.stderr
    assert not out.exists()


def _broken_path_file(tmp_path, run):
    bad = tmp_path / "broken_path.json"
    bad.write_text('{"width": 8, "height": 8, "fl_x": 8, "frames": [{"transform_matrix": 3}]}')
    return ["--run", run, "--path", bad], [str(bad), "frame 0"]


def _missing_checkpoint(tmp_path, run):
    missing = tmp_path / "nowhere" / "step-00000010"
    return ["--checkpoint", missing], [str(missing)]


def _empty_run(tmp_path, run):
    (tmp_path / "empty_run").mkdir()
    return ["--run", tmp_path / "empty_run"], ["config.yaml"]


def _foreign_checkpoint(tmp_path, run):
    foreign = tmp_path / "foreign.pt"
    torch.save({"step": 3, "weights": torch.zeros(2)}, foreign)
    return ["--checkpoint", foreign], ["not a nerf-dist training checkpoint"]


def _other_model(tmp_path, run):
    return ["--run", run, "model.width=48"], ["model.width"]


@pytest.mark.parametrize("case", [_broken_path_file, _missing_checkpoint, _empty_run,
                                  _foreign_checkpoint, _other_model],
                         ids=lambda f: f.__name__.strip("_"))
def test_render_bad_inputs_are_named(cli, tiny_run, tmp_path, case):
    out = tmp_path / "bad"
    args, needles = case(tmp_path, tiny_run)
    res = cli("render", *args, "--out", out, "--no-progress")
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("nerf-dist render: error: ")
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)
    assert not out.exists()


def test_render_impossible_resolution_fails_fast_with_the_estimate(cli, tiny_run, tmp_path):
    out = tmp_path / "huge"
    t0 = time.monotonic()
    res = cli("render", "--run", tiny_run, "--out", out, "--no-progress",
              "--resolution", "100000x100000")
    took = time.monotonic() - t0
    print(f"render --resolution 100000x100000 refused after {took:.1f} s (in-process)")
    assert res.returncode == 1, res.stderr
    err = res.stderr
    assert "100000x100000" in err and "needs about" in err and "TiB" in err  # the estimate
    assert "available (MemAvailable)" in err or "available under the cgroup limit" in err
    assert "lower --resolution" in err
    assert not out.exists()  # nothing was written
    assert took < 60


def test_eval_refuses_an_absurd_tile(cli, tiny_run, tmp_path):
    res = cli("eval", "--run", tiny_run, "--out", tmp_path / "e", "--tile", "100000")
    assert res.returncode == 1 and "--tile=100000" in res.stderr, res.stderr
    assert not (tmp_path / "e").exists()


def test_eval_of_a_folder_that_is_no_run(cli, tmp_path):
    res = cli("eval", "--run", tmp_path / "nowhere")
    assert res.returncode == 1 and f"{tmp_path / 'nowhere'}/config.yaml not found" in res.stderr


# ----------------------------------------------------------------------------- render settings (cfg.render)

def test_render_settings_come_from_render_keys_and_flags_override_them(cli, tiny_run, tmp_path):
    import json

    import imageio.v3 as iio
    out = tmp_path / "keys"
    res = cli("render", "--run-dir", tiny_run, "--out", out, "--no-progress", "render.frames=2",
              "render.fps=5", "render.video=false", "render.resolution=12x10", "render.tile=8")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "rgb").iterdir()) == ["00000.png", "00001.png"]
    assert iio.imread(out / "rgb" / "00000.png").shape == (10, 12, 3)
    meta = json.loads((out / "render.json").read_text())
    assert meta["fps"] == 5 and meta["last_run"]["tile"] == 8
    assert not (out / "video.gif").exists()          # render.video=false
    # a flag beats the key it stands for; --frames also limits a split (render.max_frames)
    out = tmp_path / "flags"
    res = cli("render", "--run-dir", tiny_run, "--out", out, "--no-progress", "--frames", "3",
              "--no-video", "--path", "orbit", "render.frames=5", "render.path=test")
    assert res.returncode == 0, res.stderr
    assert len(list((out / "rgb").iterdir())) == 3
    out = tmp_path / "split"
    res = cli("render", "--run-dir", tiny_run, "--out", out, "--no-progress", "render.path=test",
              "render.max_frames=2", "render.video=false")
    assert res.returncode == 0, res.stderr
    assert len(list((out / "rgb").iterdir())) == 2
    assert json.loads((out / "render.json").read_text())["settings"]["path"] == "test"


def test_eval_takes_its_tile_from_render_tile(cli, tiny_run, tmp_path):
    res = cli("eval", "--run-dir", tiny_run, "--out", tmp_path / "e", "render.tile=100000")
    assert res.returncode == 1 and "--tile=100000" in res.stderr, res.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("extra,needle", [
    (["render.tile=0"], "render.tile"), (["render.balance=rows"], "render.balance"),
    (["--fps", "0"], "--fps"), (["render.resolution=wide"], "render.resolution"),
])
def test_bad_render_settings_are_named_before_anything_is_written(cli, tiny_run, tmp_path, extra,
                                                                  needle):
    out = tmp_path / "bad"
    res = cli("render", "--run-dir", tiny_run, "--out", out, "--no-progress", *extra)
    assert res.returncode == 1 and needle in res.stderr, res.stderr
    assert not out.exists()
