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

from . import dist, storage
from .checkpoint import CheckpointError, Checkpointer, load_url
from .config import (Config, ConfigError, diff_keys, from_dict, load_config, own_keys, to_dict,
                     with_overrides)
from .lifecycle import STATUS_FILE
from .models import build_model, model_class

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
    rank: int = 0        # the rank of world_size this model was loaded for (see load_model)
    world_size: int = 1


def load_model(run_dir: str | None = None, checkpoint: str | None = None,
               overrides: list[str] | tuple = (), rank: int = 0, world_size: int = 1) -> Loaded:
    """Load the newest checkpoint of a run folder, or one checkpoint URL, onto the CPU.

    The model is built from the checkpoint's own saved config (overridden by run-time keys such
    as model.chunk); a checkpoint whose tensors do not fit that model, or that lacks model /
    config / scene entries, raises CheckpointError naming it.

    rank, world_size: load what rank `rank` of a `world_size`-rank job holds once the model is
    placed as training places it (:meth:`~nerf_dist.models.base.NeRFModel.build_placed`: a
    partitioned model's own boxes and the shared head; other kinds, the whole model), reading only
    those part files of a sharded checkpoint; the job then places it
    (:func:`place_loaded`) under its process group. No collective here.
    """
    if (run_dir is None) == (checkpoint is None):
        raise ValueError("give exactly one of --run RUN_DIR or --checkpoint URL")
    run_cfg = None
    if run_dir is not None:
        cfg_path = os.path.join(run_dir, CONFIG_FILE)
        if not os.path.exists(cfg_path):
            raise ConfigError(f"{cfg_path} not found: is {run_dir} a nerf-dist run folder?")
        run_cfg = load_config(cfg_path, list(overrides), saved=True)
        url = run_paths(run_cfg)["checkpoints"]
        loaded = Checkpointer(url, run_cfg.checkpoint.keep, is_main=False).load(
            parts=_parts_held(run_cfg, rank, world_size))
        if loaded is None:
            raise CheckpointError(f"no complete checkpoint in {storage.redact(url)} "
                                  f"(has run {run_dir} saved one yet?)")
        source = url
    else:
        source = checkpoint
        # NOTE: the model config is inside the checkpoint: its shared state first (no part
        # file), then the part files this rank holds with it (the shared state read again:
        # small, the boxes live in the parts).
        loaded = load_url(checkpoint, parts=set() if world_size > 1 else None)
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
    if run_cfg is None and world_size > 1:
        parts = _parts_held(cfg, rank, world_size)
        if parts is not None:
            again, state = load_url(checkpoint, parts)
            if again != step:
                raise CheckpointError(f"checkpoint {name} changed while it was read (step {step}, "
                                      f"then {again})")
    scene = state["scene"]
    try:
        model = build_model(cfg.model, torch.as_tensor(scene["aabb"], dtype=torch.float32), rank,
                            world_size)
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name} does not fit model.kind={cfg.model.kind} on "
                              f"rank {rank} of {world_size}: "
                              f"{str(e).splitlines()[0][:300]}") from e
    model.eval()
    return Loaded(cfg, model, int(step), float(state.get("elapsed", 0.0)), scene, name, rank,
                  world_size)


def _parts_held(cfg: Config, rank: int, world_size: int) -> set[str] | None:
    """The part files of a sharded checkpoint rank `rank` of `world_size` reads (None: all)."""
    if world_size == 1:
        return None
    return model_class(cfg.model.kind).checkpoint_parts_held(cfg.model, rank, world_size)


def place_loaded(loaded: Loaded, rank: int, world_size: int) -> None:
    """Collective when world_size > 1 (every rank calls it, under the process group): place the
    loaded model across the ranks as training does (:meth:`NeRFModel.distribute`: a partitioned
    model's box groups, so the renderer's tiles go by box group, ``render_split``). A model loaded
    for another rank or world size than this job's is refused (ValueError) before any
    collective. The ranks must have loaded the same step: each reads its own part files, so a
    damaged one makes only its reader fall back to an older checkpoint; then every rank raises
    the same CheckpointError naming the steps."""
    if loaded.world_size != 1 and (loaded.rank, loaded.world_size) != (rank, world_size):
        raise ValueError(f"the model was loaded for rank {loaded.rank} of {loaded.world_size} "
                         f"but runs as rank {rank} of {world_size}: pass load_model the job's "
                         f"rank and world size (nerf_dist.dist.launch_rank)")
    if world_size == 1:
        return
    steps = dist.all_gather_object(loaded.step, rank, world_size)
    err = None
    if len(set(steps)) > 1:
        err = (f"the ranks loaded different checkpoints of {loaded.source} (steps by rank: "
               f"{steps}; a damaged part file makes its reader fall back): pass --checkpoint "
               f"with the step folder all can read")
    dist.raise_together(err, rank, world_size, CheckpointError)
    loaded.model.distribute(rank, world_size)


__all__ = ["CONFIG_FILE", "run_paths", "config_at_rest", "write_config", "Loaded", "load_model",
           "place_loaded"]
