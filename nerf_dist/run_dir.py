"""The run folder: where a run's files live, what is saved there, and loading its model back.

Layout (``run.dir``; each other location can be moved by its own key)::

    RUN_DIR/config.yaml     the resolved config, credentials removed (rank 0, at start)
    RUN_DIR/status.json     how the run ended (lifecycle.write_status; `nerf-dist status`)
    RUN_DIR/checkpoints/    checkpoint.dir  (step-NNNNNNNN/ folders, see nerf_dist.checkpoint)
    RUN_DIR/ray_cache/      data.cache_dir  (see nerf_dist.ray_cache)
    RUN_DIR/tb/             log.dir         (TensorBoard events)

The trainer writes it; `nerf-dist render`, `eval`, `cache` and `demo` read it through
:func:`run_paths` and :func:`load_model`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import yaml

from . import storage
from .checkpoint import CheckpointError, Checkpointer, load_url
from .config import (Config, ConfigError, diff_keys, from_dict, load_config, own_keys, to_dict,
                     with_overrides)
from .lifecycle import STATUS_FILE
from .models import build_model

CONFIG_FILE = "config.yaml"


def run_paths(cfg: Config) -> dict:
    """{run, config, status, checkpoints, cache, tb}: the run folder and where each part lives
    (local paths or storage URLs)."""
    run = cfg.run.dir
    return {
        "run": run,
        "config": os.path.join(run, CONFIG_FILE),
        "status": os.path.join(run, STATUS_FILE),
        "checkpoints": cfg.checkpoint.dir or os.path.join(run, "checkpoints"),
        "cache": cfg.data.cache_dir or os.path.join(run, "ray_cache"),
        "tb": cfg.log.dir or os.path.join(run, "tb"),
    }


def config_at_rest(cfg: Config) -> dict:
    """The config as saved (config.yaml, checkpoints): every credential removed from every URL.

    NOTE: ``s3://KEY:SECRET@bucket/x`` is saved as ``s3://bucket/x``, which still works where the
    credentials come from the environment, as they should.
    """
    def strip(v):
        return v.replace("://***@", "://") if isinstance(v, str) else v
    tree = storage.redact_tree(own_keys(to_dict(cfg)))
    return {k: ({kk: strip(vv) for kk, vv in v.items()} if isinstance(v, dict) else strip(v))
            for k, v in tree.items()}


def write_config(cfg: Config) -> str:
    """Write RUN_DIR/config.yaml (:func:`config_at_rest`, yaml.safe_dump); returns its path."""
    path = run_paths(cfg)["config"]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(yaml.safe_dump(config_at_rest(cfg), sort_keys=False))
    return path


@dataclass
class Loaded:
    """A trained model and what rendering needs from its checkpoint."""

    cfg: Config
    model: torch.nn.Module
    step: int
    elapsed: float
    scene: dict          # near, far, aabb, background (from the checkpoint)
    source: str          # where the checkpoint came from (for messages and render.json)


def load_model(run_dir: str | None = None, checkpoint: str | None = None,
               overrides: list[str] | tuple = ()) -> Loaded:
    """Load the newest checkpoint of a run folder, or one checkpoint URL, onto the CPU.

    The model is built from the checkpoint's own saved config (overridden by run-time keys such
    as model.chunk); a checkpoint whose tensors do not fit that model, or that lacks model /
    config / scene entries, raises CheckpointError naming it.
    """
    if (run_dir is None) == (checkpoint is None):
        raise ValueError("give exactly one of --run RUN_DIR or --checkpoint URL")
    run_cfg = None
    if run_dir is not None:
        cfg_path = os.path.join(run_dir, CONFIG_FILE)
        if not os.path.exists(cfg_path):
            raise ConfigError(f"{cfg_path} not found: is {run_dir} a nerf-dist run folder?")
        run_cfg = load_config(cfg_path, list(overrides))
        url = run_paths(run_cfg)["checkpoints"]
        loaded = Checkpointer(url, run_cfg.checkpoint.keep, is_main=False).load()
        if loaded is None:
            raise CheckpointError(f"no complete checkpoint in {storage.redact(url)} "
                                  f"(has run {run_dir} saved one yet?)")
        source = url
    else:
        source = checkpoint
        loaded = load_url(checkpoint)
    step, state = loaded
    name = storage.redact(source)
    missing = [k for k in ("model", "config", "scene") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {name} is not a nerf-dist training checkpoint "
                              f"(missing {', '.join(missing)})")
    try:
        saved = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {name} holds an incompatible config: {e}") from e
    cfg = run_cfg if run_cfg is not None else with_overrides(saved, list(overrides))
    diffs = diff_keys(saved, cfg, ("model.",))
    if diffs:
        raise CheckpointError(f"checkpoint {name} was trained with another model config; "
                              f"differing keys: {'; '.join(diffs)}")
    scene = state["scene"]
    try:
        model = build_model(cfg.model, torch.as_tensor(scene["aabb"], dtype=torch.float32))
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name} does not fit model.kind={cfg.model.kind}: "
                              f"{str(e).splitlines()[0][:300]}") from e
    model.eval()
    return Loaded(cfg, model, int(step), float(state.get("elapsed", 0.0)), scene, name)


__all__ = ["CONFIG_FILE", "run_paths", "config_at_rest", "write_config", "Loaded", "load_model"]
