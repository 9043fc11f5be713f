import warnings

import pytest
import yaml

from nerf_dist.config import (ConfigError, describe_keys, diff_keys, dump_yaml, from_dict,
                              load_config, to_dict)


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
    ("train.lr=-1", "train.lr"), ("data.format=sfm", "data.format"), ("data.orient=sideways", "data.orient"),
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


# ----------------------------------------------------------------------------- render section

def test_render_section_defaults_overrides_and_docs(tmp_path):
    from nerf_dist.config import RenderConfig
    cfg = load_config(None, [])
    assert cfg.render == RenderConfig()
    assert (cfg.render.tile, cfg.render.balance, cfg.render.path, cfg.render.resolution) == (
        64, "time", "auto", "")
    p = tmp_path / "c.yaml"
    p.write_text("render:\n  tile: 16\n  fps: 12\n  resolution: 32x24\n")
    cfg = load_config(str(p), ["render.tile=32", "render.balance=pixels", "render.path=test",
                               "render.resolution=64"])
    assert (cfg.render.tile, cfg.render.fps, cfg.render.balance) == (32, 12.0, "pixels")
    assert (cfg.render.path, cfg.render.resolution) == ("test", "64")
    q = tmp_path / "r.yaml"
    q.write_text(dump_yaml(cfg))
    assert load_config(str(q)) == cfg
    # a YAML null resolution means "the path's own size", as the empty string does
    p.write_text("render:\n  resolution: null\n")
    assert load_config(str(p)).render.resolution == ""
    keys = {k: (v, doc) for k, v, doc in describe_keys()}
    for k in ("render.tile", "render.balance", "render.fps", "render.frames", "render.max_frames",
              "render.path", "render.resolution", "render.video", "render.save_float",
              "render.threads"):
        assert k in keys and keys[k][1], k
    assert keys["render.tile"][0] == 64


@pytest.mark.parametrize("override,flag", [
    ("render.tile=0", "--tile"), ("render.balance=rows", "--balance"),
    ("render.frames=0", "--frames"), ("render.max_frames=-1", "--frames"),
    ("render.resolution=32x0", "--resolution"), ("render.resolution=wide", "--resolution"),
    ("render.resolution=0", "--resolution"), ("render.fps=0", "--fps"),
    ("render.threads=-1", "--threads"), ("render.path=", "--path"), ("render.tiles=3", "render.tiles"),
])
def test_bad_render_values_name_key_and_flag(override, flag):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_config(None, [override])
    assert flag in str(e.value)


def test_with_section_validates_like_a_file():
    from nerf_dist.config import with_section
    cfg = load_config(None, [])
    assert with_section(cfg, "render") is cfg
    new = with_section(cfg, "render", tile=8, fps=30.0)
    assert (new.render.tile, new.render.fps, new.render.balance) == (8, 30.0, "time")
    assert new.model == cfg.model and cfg.render.tile == 64
    with pytest.raises(ConfigError, match=r"render\.tile.*--tile"):
        with_section(cfg, "render", tile=0)


def test_render_keys_do_not_make_a_checkpoint_incompatible():
    a = load_config(None, [])
    b = load_config(None, ["render.tile=8", "render.path=test"])
    assert diff_keys(a, b) == []


def test_keys_command_prints_the_render_section(capsys):
    from nerf_dist.cli import main
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("render.balance "))
    # the whole docstring, not its first line only
    assert "pixel count (--balance)" in line and "[default: 'time']" in line
    assert "render.tile" in out and "[default: 64]" in out


def test_render_flags_override_the_config_only_when_given():
    from nerf_dist.cli import _parser, render_flag_values
    p = _parser()
    args = p.parse_args(["render", "--run-dir", "r"])
    assert render_flag_values(args) == {}
    args = p.parse_args(["render", "--run", "r", "--tile", "16", "--frames", "5", "--fps", "12",
                         "--no-video", "--save-float", "--path", "test", "--resolution", "8x6",
                         "--balance", "pixels", "--threads", "1"])
    assert args.run == "r"
    assert render_flag_values(args) == {
        "tile": 16, "frames": 5, "max_frames": 5, "fps": 12.0, "video": False, "save_float": True,
        "path": "test", "resolution": "8x6", "balance": "pixels", "threads": 1}
    args = p.parse_args(["eval", "--run-dir", "r", "--tile", "8"])
    assert render_flag_values(args) == {"tile": 8}


def test_run_dir_is_the_flag_help_shows_first(capsys):
    from nerf_dist.cli import _parser
    for cmd in ("render", "eval", "status"):
        with pytest.raises(SystemExit):
            _parser().parse_args([cmd, "--help"])
        out = capsys.readouterr().out
        assert "--run-dir RUN_DIR, --run RUN_DIR" in out, (cmd, out)


# ----------------------------------------------------------------------------- model kinds

def test_model_keys_are_flat_and_each_kind_owns_its_own():
    from dataclasses import fields

    from nerf_dist.models.config import CommonModelConfig, ModelConfig, key_kinds
    from nerf_dist.models.hashgrid.config import HashGridConfig
    from nerf_dist.models.partitioned.config import PartitionedConfig
    from nerf_dist.models.unbounded.config import UnboundedConfig
    from nerf_dist.models.vanilla.config import VanillaConfig
    kinds = key_kinds()
    assert kinds["kind"] == kinds["chunk"] == kinds["precision"] == ()
    # NOTE: the partitioned kind's config extends the hash encoding's, not the fast kind's grid
    assert kinds["width"] == ("vanilla",)
    assert kinds["hash_levels"] == ("fast", "partitioned", "unbounded")
    assert kinds["grid_res"] == ("fast",)
    assert kinds["far_bound"] == ("partitioned", "unbounded")
    assert kinds["random_background"] == ("fast", "unbounded")
    assert kinds["partitions"] == ("partitioned",)
    names = [f.name for f in fields(ModelConfig)]
    assert sorted(names) == sorted({f.name for c in (CommonModelConfig, VanillaConfig,
                                                     HashGridConfig, UnboundedConfig,
                                                     PartitionedConfig)
                                    for f in fields(c)})
    # a config of one kind is one of the other's too (a saved config holds every key), but a key
    # of another kind on the command line is refused (tests/test_config_kinds.py)
    cfg = load_config(None, ["model.kind=fast", "model.hash_levels=4"])
    assert isinstance(cfg.model, HashGridConfig) and isinstance(cfg.model, VanillaConfig)
    assert cfg.model.hash_levels == 4
    with pytest.raises(ConfigError, match=r"model\.skip"):
        load_config(None, ["model.skip=9"])
    with pytest.raises(ConfigError, match=r"model\.hash_log2_size"):
        load_config(None, ["model.kind=fast", "model.hash_log2_size=30"])
    # `nerf-dist keys` says which kind a key belongs to, and lists the kinds
    docs = {k: doc for k, _, doc in describe_keys()}
    assert docs["model.width"].startswith("[vanilla] ") and docs["model.max_samples"].startswith(
        "[fast] ") and not docs["model.chunk"].startswith("[")
    assert docs["model.kind"].startswith("vanilla (") and " | fast (" in docs["model.kind"]


def test_a_saved_config_of_every_key_still_loads(tmp_path):
    # NOTE: checkpoints and run folders stored the whole model section, every kind's keys in it,
    # until issue 24 (now only model.kind's own): such a file still loads, with one warning line
    cfg = load_config(None, ["model.kind=fast", "model.grid_res=8"])
    q = tmp_path / "r.yaml"
    q.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    text = q.read_text()
    assert "  width: 256\n" in text and "  grid_res: 8\n" in text and "  chunk: 8192\n" in text
    with pytest.warns(UserWarning, match=r"'model\.width' \(a key of model\.kind=vanilla\)") as rec:
        assert load_config(str(q)) == cfg
    assert len([w for w in rec if issubclass(w.category, UserWarning)]) == 1
    assert from_dict(to_dict(cfg)) == cfg
    # what is saved now holds model.kind's keys only, and reads back without a warning
    q.write_text(dump_yaml(cfg))
    assert "  width:" not in q.read_text() and "  grid_res: 8\n" in q.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(str(q)) == cfg


def test_two_kinds_may_share_a_key_only_with_one_meaning():
    from dataclasses import dataclass

    from nerf_dist.models.config import _check_shared_keys

    @dataclass(frozen=True)
    class A:
        hidden: int = 64

    @dataclass(frozen=True)
    class B(A):
        extra: float = 1.0

    @dataclass(frozen=True)
    class C:
        hidden: int = 32

    @dataclass(frozen=True)
    class D:
        hidden: float = 64.0

    assert _check_shared_keys([A, B]) == {}       # B extends A: `hidden` is one key of both
    # one concept, one name: kinds may give it different defaults (resolved by model.kind)
    assert _check_shared_keys([A, C]) == {"hidden": {A: 64, C: 32}}
    with pytest.raises(TypeError, match="model.hidden"):
        _check_shared_keys([A, D])


def test_a_new_kind_brings_its_keys_with_one_registry_entry():
    from dataclasses import dataclass, fields

    from nerf_dist.config_check import check
    from nerf_dist.models.config import key_kinds, model_config_class
    from nerf_dist.models.hashgrid.config import HashGridConfig
    from nerf_dist.models.registry import KINDS, Kind

    @dataclass(frozen=True)
    class ToyConfig:
        toy_size: int = 3
        """Toy: its one key."""

        def __post_init__(self) -> None:
            check(self.toy_size >= 1, "model.toy_size", "must be >= 1")

    @dataclass(frozen=True)
    class CaptureConfig(HashGridConfig):
        contract: bool = True
        """Capture: a kind extending the hash grid's keys."""

    kinds = {**KINDS, "toy": Kind(ToyConfig, "x:Y"), "capture": Kind(CaptureConfig, "x:Z")}
    cls = model_config_class(kinds)
    names = [f.name for f in fields(cls)]
    assert names[:4] == ["kind", "chunk", "precision", "compile"]
    assert "toy_size" in names and "contract" in names and names.count("hash_levels") == 1
    assert cls(toy_size=5).toy_size == 5 and cls().max_samples == 256
    with pytest.raises(ConfigError, match=r"model\.toy_size"):
        cls(toy_size=0)
    with pytest.raises(ConfigError, match=r"model\.hash_log2_size"):
        cls(hash_log2_size=2)                     # the other kinds' keys are still checked
    owners = key_kinds(kinds)
    assert owners["toy_size"] == ("toy",) and owners["hash_levels"][0] == "fast"
    assert owners["hash_levels"][-1] == "capture"
    assert owners["contract"] == ("capture",) and owners["width"] == ("vanilla",)
