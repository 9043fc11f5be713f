"""No key silently ignored (issue 24 points 5-7): a model key of another kind is refused on the
command line and warned about in a file; one concept, one name (per-kind defaults, deprecated
spellings mapped); resume refuses what moves the scene or its data and logs changed loss weights;
model.appearance_images is checked against the scene before any work."""
import warnings
from pathlib import Path

import pytest
import yaml

from test_scenes import write_blender
from nerf_dist.config import ConfigError, from_dict, load_config, to_dict, with_overrides
from nerf_dist.dist import DistInfo
from nerf_dist.run_dir import config_at_rest
from nerf_dist.train import train
from nerf_dist.train.resume import choose_checkpoint


@pytest.mark.parametrize("kind, key, owner", [("fast", "model.partitions=4", "partitioned"),
                                              ("vanilla", "model.appearance_dim=8", "unbounded"),
                                              ("partitioned", "model.grid_res=32", "fast"),
                                              ("unbounded", "model.width=64", "vanilla")])
def test_a_key_of_another_kind_on_the_command_line_is_refused(kind, key, owner):
    name = key.split("=")[0]
    with pytest.raises(ConfigError, match=rf"'{name}' \(a key of model\.kind={owner}\) is not "
                                          rf"read by model\.kind={kind}"):
        load_config(None, [f"model.kind={kind}", key])
    with pytest.raises(ConfigError, match=name):
        with_overrides(load_config(None, [f"model.kind={kind}"]), [key])
    # the kind's own and the common keys pass
    load_config(None, [f"model.kind={owner}", key, "model.chunk=64"])


def test_a_key_of_another_kind_in_a_file_is_one_warning_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"kind": "fast", "partitions": 4, "appearance_dim": 8,
                                           "grid_res": 32}}))
    with pytest.warns(UserWarning) as rec:
        cfg = load_config(str(f))
    msgs = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0], msgs
    assert "'model.partitions' (a key of model.kind=partitioned)" in msgs[0]
    assert "'model.appearance_dim' (a key of model.kind=unbounded)" in msgs[0]
    assert "model.kind=fast" in msgs[0] and "grid_res" not in msgs[0] and str(f) in msgs[0]
    assert cfg.model.grid_res == 32
    # a key the command line sets again is the command line's (refused there), and model.kind
    # on the command line decides which of the file's keys are foreign
    with pytest.raises(ConfigError, match="model.partitions"):
        load_config(str(f), ["model.partitions=2"])
    with pytest.warns(UserWarning, match="'model.grid_res' \\(a key of model.kind=fast\\)"):
        assert load_config(str(f), ["model.kind=partitioned"]).model.partitions == 4


def test_a_runs_saved_config_of_an_earlier_version_loads_silently(tmp_path, tiny_run):
    """Runs trained before configs were saved with model.kind's keys only hold every kind's keys
    and the old spellings in config.yaml: loading such a run (eval, render, export) warns of
    nothing the user wrote, and reads the same model."""
    from nerf_dist.run_dir import load_model
    import shutil
    run = tmp_path / "old_run"
    shutil.copytree(tiny_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    kind = saved["model"]["kind"]
    other = {"vanilla": {"grid_res": 64, "fast_random_background": False},
             "fast": {"width": 256, "fast_random_background": False}}[kind]
    saved["model"].update(other)
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(str(run))
    assert loaded.cfg.model.kind == kind
    # the same file given as --config by a user still warns
    with pytest.warns(UserWarning, match="not read by model.kind"):
        load_config(str(run / "config.yaml"))


def test_shared_names_have_per_kind_defaults():
    kinds = {k: load_config(None, [f"model.kind={k}"]).model
             for k in ("fast", "unbounded", "partitioned")}
    assert (kinds["fast"].random_background, kinds["unbounded"].random_background) == (False, True)
    assert (kinds["partitioned"].far_bound, kinds["unbounded"].far_bound) == (0.0, 1000.0)
    # each kind checks the value by its own rule: 0 (bounded) is a partitioned far bound only
    with pytest.raises(ConfigError, match="model.far_bound"):
        load_config(None, ["model.kind=unbounded", "model.far_bound=0"])
    with pytest.raises(ConfigError, match="model.far_bound"):
        load_config(None, ["model.kind=partitioned", "model.far_bound=0.5"])
    assert load_config(None, ["model.kind=partitioned", "model.far_bound=50"]).model.far_bound == 50


@pytest.mark.parametrize("kind, old, new, value", [
    ("fast", "fast_random_background", "random_background", True),
    ("partitioned", "partition_far_bound", "far_bound", 100.0)])
def test_deprecated_spellings_are_mapped_with_one_warning(tmp_path, kind, old, new, value):
    with pytest.warns(FutureWarning, match=rf"'model\.{old}' is deprecated: it is now "
                                           rf"'model\.{new}'") as rec:
        cfg = load_config(None, [f"model.kind={kind}", f"model.{old}={value}"])
    assert getattr(cfg.model, new) == value
    assert len([w for w in rec if issubclass(w.category, FutureWarning)]) == 1
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"kind": kind, old: value}}))
    with pytest.warns(FutureWarning):
        assert getattr(load_config(str(f)).model, new) == value
    # another kind never read the old spelling: refused on the command line
    with pytest.raises(ConfigError, match=rf"'model\.{old}'"):
        load_config(None, ["model.kind=unbounded", f"model.{old}={value}"])


def test_an_old_checkpoint_config_keeps_its_meaning():
    # NOTE: saved before issue 24: every key of every kind, the unbounded kind's
    # random_background / far_bound at their defaults next to the fast / partitioned spellings
    old = to_dict(load_config(None, ["model.kind=fast"]))
    old["model"].update(random_background=True, far_bound=1000.0, fast_random_background=False,
                        partition_far_bound=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_dict(old).model.random_background is False
        old["model"].update(kind="partitioned", partitions=2, partition_far_bound=250.0)
        assert from_dict(old).model.far_bound == 250.0


# ----------------------------------------------------------------------------- resume by meaning

class _OneCheckpoint:
    """A checkpoint folder holding one checkpoint of config `saved` at step 5."""
    url = "mem://ckpt"

    def __init__(self, saved):
        self.state = {"step": 5, "config": config_at_rest(saved)}

    def newest_good(self, parts=None, below=None):
        return 5, self.state, []


_BASE = ["model.kind=unbounded", "train.resume=auto", "train.steps=100", "data.format=colmap"]


@pytest.mark.parametrize("change", ["data.orient=pca", "data.colmap_dir=sparse/1",
                                    "data.cache_shards=32", "data.downscale=2",
                                    "model.hash_levels=8"])
def test_resume_refuses_a_change_of_the_scene_frame_or_data(change):
    saved = load_config(None, _BASE)
    with pytest.raises(ConfigError, match=rf"cannot resume.*{change.split('=')[0]}"):
        choose_checkpoint(load_config(None, [*_BASE, change]), _OneCheckpoint(saved), print)


def test_resume_allows_a_loss_weight_or_schedule_with_one_log_line():
    saved = load_config(None, _BASE)
    lines = []
    verdict, state = choose_checkpoint(
        load_config(None, [*_BASE, "model.distortion_weight=0.01", "train.lr_final=1e-4",
                           "model.chunk=64"]), _OneCheckpoint(saved), lines.append)
    assert verdict["step"] == 5 and state["step"] == 5
    assert len(lines) == 1, lines
    assert "model.distortion_weight: 0.0 -> 0.01" in lines[0] and "train.lr_final" in lines[0]
    assert "model.chunk" not in lines[0]
    lines.clear()
    choose_checkpoint(load_config(None, _BASE), _OneCheckpoint(saved), lines.append)
    assert lines == []


# ----------------------------------------------------------------------------- checks before work

def test_appearance_images_below_the_scene_is_refused_before_the_first_step(tmp_path):
    write_blender(tmp_path / "scene", n=5)
    cfg = load_config(None, [f"data.root={tmp_path / 'scene'}", f"run.dir={tmp_path / 'run'}",
                             "model.kind=unbounded", "model.appearance_dim=2",
                             "model.appearance_images=3", "model.hash_levels=2",
                             "model.hash_log2_size=10", "model.hidden=8",
                             "model.proposal_samples=8", "model.proposal_max_res=16",
                             "model.proposal_log2_size=10", "model.field_samples=4",
                             "train.steps=2", "train.rays_per_batch=16", "log.progress=false",
                             "eval.every=0", "checkpoint.every=0", "train.threads=1"])
    with pytest.raises(ConfigError, match=r"model\.appearance_images.*3 rows for a scene of 5 "
                                          r"training images.*model\.appearance_dim"):
        train(cfg, DistInfo())
    assert not list(Path(tmp_path / "run").rglob("step_*")), "a step ran before the check"
