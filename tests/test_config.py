import pytest

from nerf_dist.config import ConfigError, describe_keys, diff_keys, dump_yaml, load_config


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1.0e-3\n  steps: 10\ndata:\n  root: /x\n")
    cfg = load_config(str(p), ["train.steps=20", "data.white_background=false", "seed=3"])
    assert cfg.train.lr == 1e-3 and cfg.train.steps == 20 and cfg.seed == 3
    assert cfg.data.white_background is False and cfg.data.root == "/x"
    # the resolved config round-trips through YAML
    q = tmp_path / "r.yaml"
    q.write_text(dump_yaml(cfg))
    assert load_config(str(q)) == cfg


@pytest.mark.parametrize("override,key", [
    ("train.stpes=3", "train.stpes"), ("nope.x=1", "nope"), ("train.steps=abc", "train.steps"),
    ("train.lr=-1", "train.lr"), ("data.format=colmap", "data.format"),
    ("data.downscale=0", "data.downscale"), ("model.kind=foo", "model.kind"),
    ("train.lr=.inf", "train.lr"), ("train.lr=.nan", "train.lr"), ("train.lr=1e3", "train.lr"),
    ("train.steps=.inf", "train.steps"), ("model.grid_threshold=-.inf", "model.grid_threshold"),
    ("train.on_nonfinite=ignore", "train.on_nonfinite"), ("dist.timeout_s=0", "dist.timeout_s"),
    ("storage.retries=-1", "storage.retries"),
])
def test_bad_keys_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_is_safe(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("seed: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_config(str(p))


def test_describe_and_diff():
    keys = {k: doc for k, _, doc in describe_keys()}
    for k in ("data.root", "data.format", "data.downscale", "data.white_background",
              "data.skip_missing", "train.steps", "train.max_seconds", "train.rays_per_batch",
              "train.lr", "seed", "run.dir", "eval.every"):
        assert k in keys and keys[k], k
    a = load_config(None, [])
    b = load_config(None, ["model.width=128", "train.lr=1e-3", "model.chunk=1"])
    d = diff_keys(a, b)
    assert len(d) == 1 and d[0].startswith("model.width")
