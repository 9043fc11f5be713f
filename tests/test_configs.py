"""Every config in configs/ trains (2 steps) on a tiny scene of each format it claims to serve
(issue 24 point 8), with overrides that only make it tiny (its own kind's keys: a key of another
kind would be refused), and reads without a warning about its keys. A pinned data.format that the
folder does not have says which format the folder looks like."""
import warnings
from pathlib import Path

import pytest

from test_colmap import make_scene
from test_scenes import write_blender, write_llff, write_ngp
from nerf_dist.config import load_config
from nerf_dist.dist import DistInfo
from nerf_dist.scenes import load_scene
from nerf_dist.scenes.base import SceneError
from nerf_dist.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The formats each config says it serves (its header comment); a new config adds its row.
CLAIMS = {"capture.yaml": ("colmap", "ngp"), "capture_cpu.yaml": ("colmap", "ngp"),
          "demo.yaml": ("blender",), "lego.yaml": ("blender",), "lego_fast.yaml": ("blender",),
          "lego_fast_cpu.yaml": ("blender",), "llff.yaml": ("llff",)}
WRITERS = {"blender": write_blender, "llff": write_llff, "ngp": write_ngp,
           "colmap": lambda root: make_scene(root, size=(8, 6))}
_HASH = ["model.hash_levels=2", "model.hash_log2_size=10", "model.hash_base_res=4",
         "model.hash_max_res=16", "model.hidden=8", "model.geo_features=3"]
TINY = {"vanilla": ["model.depth=2", "model.width=16", "model.skip=1", "model.pos_freqs=2",
                    "model.dir_freqs=1", "model.n_samples=8", "model.n_importance=8"],
        "fast": [*_HASH, "model.grid_res=8", "model.march_steps=16", "model.max_samples=8"],
        "unbounded": [*_HASH, "model.proposal_samples=8", "model.proposal_max_res=16",
                      "model.proposal_log2_size=10", "model.proposal_levels=2",
                      "model.proposal_hidden=8", "model.field_samples=4"]}


def test_every_config_claims_its_formats():
    assert set(CLAIMS) == {p.name for p in CONFIGS.glob("*.yaml")}


@pytest.mark.slow
@pytest.mark.parametrize("name, fmt", [(n, f) for n, fs in CLAIMS.items() for f in fs])
def test_config_trains_on_a_tiny_scene_of_each_format(tmp_path, name, fmt):
    WRITERS[fmt](tmp_path / "scene")
    path = str(CONFIGS / name)
    kind = load_config(path).model.kind
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        cfg = load_config(path, [f"data.root={tmp_path / 'scene'}", f"run.dir={tmp_path / 'run'}",
                                 "data.downscale=1", "data.cache_shards=4", "train.steps=2",
                                 "train.rays_per_batch=32", "train.threads=1", "eval.every=0",
                                 "checkpoint.every=0", "log.progress=false",
                                 "train.precrop_steps=0", *TINY[kind]])
    assert not [str(w.message) for w in rec if "model." in str(w.message)]
    res = train(cfg, DistInfo())
    assert res["step"] == 2, res


def test_a_pinned_format_the_folder_lacks_says_what_it_looks_like(tmp_path):
    make_scene(tmp_path)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.format=ngp"])
    with pytest.raises(SceneError, match=r"transforms file not found.*data\.format=ngp, but .* "
                                         r"has no transforms\.json: it looks like a colmap folder"):
        load_scene(cfg.data, "train")
    write_ngp(tmp_path / "ngp")
    with pytest.raises(SceneError, match="looks like a ngp folder"):
        load_scene(load_config(None, [f"data.root={tmp_path / 'ngp'}",
                                      "data.format=blender"]).data, "train")
