"""Configuration: nested frozen dataclasses, strict YAML loading, dotted CLI overrides.

A config file is YAML (read with ``yaml.safe_load``) whose sections mirror :class:`Config`.
Command-line overrides are ``section.key=value`` strings; the value is parsed as a YAML scalar.
An unknown section or key, or a value of the wrong type or range, raises :class:`ConfigError`
naming the dotted key.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import re
import typing
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import yaml

from . import storage
from .config_check import ConfigError, check as _check
from .models.config import CommonModelConfig, ModelConfig, key_kinds, kinds_help




# The scene readers (nerf_dist.scenes.READERS, which checks it holds exactly these), in the order
# format 'auto' tries them.
SCENE_FORMATS = ("blender", "llff", "ngp", "colmap")
# The image files a scene may name (and `prepare` reads), compared in lower case. NOTE: here and
# not in nerf_dist.scenes because `prepare` never imports torch, which the scenes package does.
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/demo"
    """Scene folder (Blender, LLFF, instant-ngp/nerfstudio or COLMAP layout)."""
    format: str = "auto"
    """auto | blender | llff | ngp | colmap. 'auto' detects the format from the folder."""
    downscale: int = 1
    """Integer image downscale factor (area averaging)."""
    white_background: bool = True
    """Composite RGBA images over white (true) or black (false); also the renderer's background."""
    skip_missing: bool = False
    """Drop frames whose image file is missing (with a warning) instead of failing."""
    llff_hold: int = 8
    """LLFF / ngp / colmap: every N-th view (of the name-sorted images for colmap) is held out as the test split."""
    ndc: str = "auto"
    """auto | true | false: normalised device coordinates (auto = on for LLFF)."""
    cache_dir: str = ""
    """Ray cache location (path or fsspec URL); empty = <run.dir>/ray_cache."""
    cache_shards: int = 64
    """Number of ray-cache shards; a multiple of every world size you use."""
    allow_outside_root: bool = False
    """Allow scene files (a file_path with ../ or an absolute path) outside data.root."""
    colmap_dir: str = ""
    """COLMAP: model folder (cameras/images/points3D .bin or .txt) relative to data.root; empty = sparse/0, sparse or data.root."""
    orient: str = "up"
    """COLMAP: up (mean camera up -> +z) | pca (principal axes of the camera centres) | none (COLMAP's axes)."""
    cache_memory: str = "2GB"
    """Shard data EACH RANK holds ("2GB", "512MiB", or bytes), also each rank's buffer while the
    cache is built; larger caches are streamed (README: Scenes larger than memory). Per rank, not
    per host: N ranks on one host hold up to N times this, and the memory check compares each
    rank's need with its 1/N share of the host's available memory (N = LOCAL_WORLD_SIZE)."""

    # NOTE: units: kB MB GB TB (powers of 1000), KiB MiB GiB TiB (powers of 1024), B or none.
    _UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
              "gb": 10**9, "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20,
              "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}

    @property
    def cache_memory_bytes(self) -> int:
        """data.cache_memory in bytes; ConfigError naming the key when it is not a size."""
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*",
                         str(self.cache_memory))
        unit = m.group(2).lower() if m else None
        if not m or unit not in self._UNITS:
            raise ConfigError(f"config key 'data.cache_memory': expected a size such as 2GB, "
                              f"512MiB or a number of bytes, got {self.cache_memory!r}")
        n = float(m.group(1)) * self._UNITS[unit]
        if not math.isfinite(n) or n < 1 << 16:
            raise ConfigError(f"config key 'data.cache_memory': must be at least 64KiB, got "
                              f"{self.cache_memory!r}")
        return int(n)

    def __post_init__(self) -> None:
        self.cache_memory_bytes  # noqa: B018 - validates data.cache_memory
        formats = ("auto",) + SCENE_FORMATS
        _check(self.format in formats, "data.format",
               f"must be {'|'.join(formats)}, got {self.format!r}")
        _check(self.orient in ("up", "pca", "none"), "data.orient",
               f"must be up|pca|none, got {self.orient!r}")
        _check(self.downscale >= 1, "data.downscale", f"must be >= 1, got {self.downscale}")
        _check(self.llff_hold >= 2, "data.llff_hold", f"must be >= 2, got {self.llff_hold}")
        _check(str(self.ndc) in ("auto", "true", "false", "True", "False"), "data.ndc",
               f"must be auto|true|false, got {self.ndc!r}")
        _check(self.cache_shards >= 1, "data.cache_shards", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200000
    """Number of optimisation steps (global batches)."""
    max_seconds: float = 0.0
    """Wall-clock budget in seconds; stop cleanly (and checkpoint) when spent. 0 = no limit."""
    rays_per_batch: int = 1024
    """Global batch size in rays, split across ranks."""
    lr: float = 5e-4
    """Initial Adam learning rate."""
    lr_final: float = 5e-5
    """Learning rate reached after lr_decay_steps (exponential decay)."""
    lr_decay_steps: int = 250000
    """Steps over which lr decays from lr to lr_final (exponentially; continues past it)."""
    weight_decay: float = 0.0
    """Adam weight decay (fast path hash tables usually use 0)."""
    precrop_steps: int = 0
    """Centre-crop warm-up: sample only the central precrop_frac of each image for this many steps."""
    precrop_frac: float = 0.5
    """Side fraction of the centre crop used during warm-up."""
    resume: str = "none"
    """none | auto | <checkpoint URL>. auto = newest complete checkpoint in checkpoint.dir."""
    threads: int = 0
    """torch intra-op threads per rank (0 = leave torch's default)."""
    on_nonfinite: str = "stop"
    """stop | skip: on a non-finite loss or gradient, stop (no optimiser step, no checkpoint) or skip the step."""
    max_nonfinite: int = 10
    """on_nonfinite=skip: stop after this many non-finite steps in a row."""
    allow_finished: bool = False
    """Resuming a checkpoint already at (or past) train.steps is an error unless true."""

    def __post_init__(self) -> None:
        _check(self.on_nonfinite in ("stop", "skip"), "train.on_nonfinite",
               f"must be stop|skip, got {self.on_nonfinite!r}")
        _check(self.max_nonfinite >= 1, "train.max_nonfinite", "must be >= 1")
        _check(self.steps >= 0, "train.steps", f"must be >= 0, got {self.steps}")
        _check(self.max_seconds >= 0, "train.max_seconds", "must be >= 0")
        _check(self.rays_per_batch >= 1, "train.rays_per_batch", "must be >= 1")
        _check(0 < self.lr <= 10, "train.lr", f"must be in (0, 10], got {self.lr}")
        _check(self.lr_final > 0, "train.lr_final", "must be > 0")
        _check(self.lr_decay_steps >= 1, "train.lr_decay_steps", "must be >= 1")
        _check(0 < self.precrop_frac <= 1, "train.precrop_frac", "must be in (0, 1]")
        _check(self.precrop_steps >= 0, "train.precrop_steps", "must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0
    """Validation render every N steps (0 = never during training)."""
    split: str = "val"
    """Split used for validation during training."""
    n_images: int = 1
    """Validation images rendered during training."""
    test_split: str = "test"
    """Split used by `nerf-dist eval` (and at the end of the quick start)."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "eval.every", "must be >= 0")
        _check(self.n_images >= 1, "eval.n_images", "must be >= 1")


_RESOLUTION_RE = re.compile(r"^\s*\d+\s*([x*]\s*\d+\s*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class RenderConfig:
    """How `nerf-dist render` and `nerf-dist eval` (and the quick start's video) render.

    The command-line flags of those commands (--tile, --balance, --path, --frames, --resolution,
    --fps, --no-video, --save-float, --threads) are shorthands that override these keys.
    """
    tile: int = 64
    """Tile side in pixels: frames are cut into tiles spread over the ranks (--tile)."""
    balance: str = "time"
    """time | pixels: spread tiles by the time tiles at the same place took in the previous batch of
    frames, or by pixel count (--balance)."""
    path: str = "auto"
    """Camera path of `render`: auto (spiral for forward-facing scenes, orbit otherwise) | orbit |
    spiral | train | val | test | a camera-path JSON file (--path)."""
    frames: int = 36
    """Frames of a generated path (orbit, spiral) (--frames)."""
    max_frames: int = 0
    """A split or camera-file path: render only its first N cameras; 0 = all (--frames)."""
    resolution: str = ""
    """Output size WxH (or N for N x N); empty = the path's own size (the training size for
    orbit / spiral) (--resolution)."""
    fps: float = 24.0
    """Frame rate of video.mp4 / video.gif (--fps)."""
    video: bool = True
    """Write video.mp4 and video.gif after the frames (--no-video = false)."""
    save_float: bool = False
    """Also write float/NNNNN.npz (rgb, depth, acc as float32) (--save-float)."""
    threads: int = 0
    """torch CPU threads per rank while rendering or evaluating; 0 = torch's default (--threads)."""

    def __post_init__(self) -> None:
        _check(self.tile >= 1, "render.tile", f"must be >= 1 (--tile), got {self.tile}")
        _check(self.balance in ("time", "pixels"), "render.balance",
               f"must be time|pixels (--balance), got {self.balance!r}")
        _check(bool(str(self.path).strip()), "render.path", "must not be empty (--path)")
        _check(self.frames >= 1, "render.frames", f"must be >= 1 (--frames), got {self.frames}")
        _check(self.max_frames >= 0, "render.max_frames",
               f"must be >= 0 (--frames), got {self.max_frames}")
        _check(self.resolution == "" or bool(_RESOLUTION_RE.match(self.resolution)),
               "render.resolution", f"must look like WxH, e.g. 800x600 (--resolution), "
                                    f"got {self.resolution!r}")
        _check(self.resolution == "" or all(
            int(p) >= 1 for p in re.split(r"[x*]", self.resolution.lower())),
               "render.resolution", f"must be at least 1x1 (--resolution), got {self.resolution!r}")
        _check(self.fps > 0, "render.fps", f"must be > 0 (--fps), got {self.fps}")
        _check(self.threads >= 0, "render.threads", f"must be >= 0 (--threads), got {self.threads}")


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"
    """Run folder (local): resolved config, logs, eval outputs."""


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = ""
    """Checkpoint location: local path or fsspec URL (s3://bucket/prefix). Empty = <run.dir>/checkpoints."""
    every: int = 1000
    """Save every N steps (and at the end). 0 = only at the end."""
    keep: int = 3
    """Keep the newest N complete checkpoints."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "checkpoint.every", "must be >= 0")
        _check(self.keep >= 1, "checkpoint.keep", "must be >= 1")


@dataclass(frozen=True)
class LogConfig:
    dir: str = ""
    """TensorBoard folder; empty = <run.dir>/tb."""
    every: int = 50
    """Scalars are written every N steps."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""

    def __post_init__(self) -> None:
        _check(self.every >= 1, "log.every", "must be >= 1")


@dataclass(frozen=True)
class DistConfig:
    timeout_s: float = 300.0
    """Process-group timeout: a collective that waits longer fails (a frozen or dead rank). NCCL jobs
    with slow checkpoints or first-step compilation may need more (e.g. 1800)."""
    stall_warn_s: float = 60.0
    """A rank waiting longer than this on a collective or on storage logs what it waits for (0 = never)."""

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, "dist.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.stall_warn_s >= 0, "dist.stall_warn_s", "must be >= 0")


@dataclass(frozen=True)
class StorageConfig:
    timeout_s: float = 60.0
    """Timeout of one storage call (connect/read) on fsspec URLs, in seconds."""
    retries: int = 3
    """Retries of a failed storage call (with exponential backoff) before it is an error."""
    backoff_s: float = 1.0
    """First retry delay in seconds; doubled each retry."""

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, "storage.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.retries >= 0, "storage.retries", "must be >= 0")
        _check(self.backoff_s >= 0, "storage.backoff_s", "must be >= 0")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    """Seed of every random generator (per epoch, shard and rank streams derive from it)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


# ----------------------------------------------------------------------------- helpers

@functools.cache
def _class_docs(cls: type) -> dict[str, str]:
    """{field: the docstring literal written under it} of a dataclass, parsed from its source once.

    NOTE: cached: every CLI start builds `--help` epilogs from these, and parsing the source per
    field cost seconds of start-up on every rank (and every torchrun restart).
    """
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) and isinstance(
                    getattr(body[i + 1], "value", None), ast.Constant):
                docs[node.target.id] = str(body[i + 1].value.value).strip()
    return docs


def _field_doc(cls: type, name: str) -> str:
    """The docstring literal written under a dataclass field (parsed from source), in the class
    or the base that declares it (ModelConfig's fields are declared by the kinds' configs)."""
    for c in cls.__mro__:
        doc = _class_docs(c).get(name) if is_dataclass(c) else None
        if doc:
            return doc
    return ""


def describe_keys(cfg: Config | None = None) -> list[tuple[str, Any, str]]:
    """All dotted keys with their default (or given) value and one-line help.

    A model key that belongs to some kinds only says so first: ``[fast] Hash-grid levels L.``
    """
    cfg = cfg or Config()
    out: list[tuple[str, Any, str]] = []
    kinds = {f"model.{k}": v for k, v in key_kinds().items() if v}

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            v = getattr(obj, f.name)
            if is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                key, doc = prefix + f.name, _field_doc(type(obj), f.name)
                if key == "model.kind":
                    doc = f"{kinds_help()}. {doc}"
                out.append((key, v, f"[{'|'.join(kinds[key])}] {doc}" if key in kinds else doc))

    walk(cfg, "")
    return out


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Coerce a YAML value to the field's annotated type, or raise ConfigError naming key."""
    if isinstance(typ, str):
        typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in known:
            near = [n for n in known if n.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(prefix + n for n in near)}?)" if near else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        typ = hints[k]
        if is_dataclass(typ):
            kwargs[k] = _build(typ, v if v is not None else {}, key + ".")
        else:
            kwargs[k] = _coerce(key, v, typ)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"config section '{prefix}': {e}") from e


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (YAML-safe)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Build a Config from a nested dict, strictly (deprecated key spellings mapped silently:
    a checkpoint's saved config may hold them)."""
    return _build(Config, _renamed(data or {}, warn=False), "")


def parse_overrides(overrides: list[str]) -> dict:
    """['train.lr=1e-3', 'data.root=x'] -> nested dict; values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        # NOTE: keep strings such as '1e-3' numeric: YAML 1.1 reads them as str.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        cur[parts[-1]] = value
    return nested


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str) -> dict:
    """Read a YAML file safely; errors name the file."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


# Deprecated spellings of model keys: {old: (the shared name, the kinds whose key it was)}.
DEPRECATED_MODEL_KEYS = {"fast_random_background": ("random_background", ("fast",)),
                         "partition_far_bound": ("far_bound", ("partitioned",))}


def _kind_of(data: dict) -> str:
    model = data.get("model")
    kind = model.get("kind") if isinstance(model, dict) else None
    return str(kind) if kind is not None else CommonModelConfig.kind


def foreign_keys(data: dict, kind: str | None = None) -> dict[str, tuple[str, ...]]:
    """{model key set in data: the kinds it belongs to} for the keys that model.kind (`kind`,
    else data's own, else the default) does not read. Unknown keys are not listed (building the
    config names them)."""
    model = data.get("model")
    if not isinstance(model, dict):
        return {}
    kind = kind or _kind_of(data)
    owners = {**key_kinds(), **{old: ks for old, (_, ks) in DEPRECATED_MODEL_KEYS.items()}}
    return {k: owners[k] for k in model if owners.get(k) and kind not in owners[k]}


def _foreign_text(foreign: dict[str, tuple[str, ...]], kind: str) -> str:
    keys = ", ".join(f"'model.{k}' (a key of model.kind={'|'.join(v)})" for k, v in foreign.items())
    return f"{keys} {'is' if len(foreign) == 1 else 'are'} not read by model.kind={kind}"


def refuse_foreign_keys(over: dict, kind: str) -> None:
    """ConfigError naming each command-line model key that model.kind=`kind` would ignore."""
    foreign = foreign_keys(over, kind)
    if foreign:
        raise ConfigError(f"command-line config key {_foreign_text(foreign, kind)}: set "
                          f"model.kind, or drop the key")


def _renamed(data: dict, warn: bool) -> dict:
    """data with the deprecated model key spellings mapped to the shared names (one
    FutureWarning each when warn). For a kind whose key it was, the old spelling wins over the
    new one (it is what that kind read); for another kind it is dropped (a key of another kind,
    refused or warned about as such by :func:`load_config`)."""
    model = data.get("model")
    if not isinstance(model, dict) or not any(k in model for k in DEPRECATED_MODEL_KEYS):
        return data
    model, kind = dict(model), _kind_of(data)
    for old, (new, kinds) in DEPRECATED_MODEL_KEYS.items():
        if old not in model:
            continue
        value = model.pop(old)
        if kind in kinds:
            model[new] = value
            if warn:
                warnings.warn(f"config key 'model.{old}' is deprecated: it is now "
                              f"'model.{new}' (mapped)", FutureWarning, stacklevel=3)
    return {**data, "model": model}


def load_config(path: str | None, overrides: list[str] | None = None,
                saved: bool = False) -> Config:
    """Config = defaults <- YAML file <- dotted overrides, validated.

    A model key of another kind than model.kind is refused on the command line (ConfigError
    naming the key and its kind) and gives one warning line naming them in a file (the file may
    serve several kinds); a deprecated spelling is mapped with one FutureWarning.

    saved: the file is a run's own config.yaml, written by the trainer: neither warning (a run
    trained before configs were saved with model.kind's keys only holds every kind's keys and the
    old spellings; the user wrote none of them). Overrides are checked as always.
    """
    file_data = read_yaml(path) if path else {}
    over = parse_overrides(overrides or [])
    data = _merge(file_data, over)
    kind = _kind_of(data)
    refuse_foreign_keys(over, kind)
    in_file = {k: v for k, v in foreign_keys(file_data, kind).items()
               if k not in (over.get("model") or {})}
    if in_file and not saved:
        warnings.warn(f"config file {path}: {_foreign_text(in_file, kind)} (ignored)",
                      UserWarning, stacklevel=2)
    return from_dict(_renamed(data, warn=not saved))


def dump_yaml(cfg: Config) -> str:
    """The config as YAML, without the model keys of other kinds (:func:`own_keys`)."""
    return yaml.safe_dump(own_keys(to_dict(cfg)), sort_keys=False)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """cfg with dotted overrides (a model key of another kind is refused, as in load_config)."""
    over = parse_overrides(overrides)
    data = _merge(to_dict(cfg), over)
    kind = _kind_of(data)
    refuse_foreign_keys(over, kind)
    if kind != cfg.model.kind:
        # NOTE: a key whose default depends on model.kind (model.far_bound) takes the new kind's
        # default unless the overrides set it: the old kind's value may be no value for the new.
        given = over.get("model", {})
        for key in ModelConfig.PER_KIND_KEYS:
            if key not in given:
                data["model"].pop(key, None)
    return from_dict(_renamed(data, warn=True))


def own_keys(tree: dict) -> dict:
    """A config tree (:func:`to_dict`) without the model keys of kinds other than its
    model.kind: what is saved (config.yaml, checkpoints), so that reading it back warns of
    nothing."""
    foreign = foreign_keys(tree)
    if not foreign:
        return tree
    return {**tree, "model": {k: v for k, v in tree["model"].items() if k not in foreign}}


def with_section(cfg: Config, section: str, **values: Any) -> Config:
    """cfg with some keys of one section replaced, validated as a file's would be (a bad value
    raises ConfigError naming its key). E.g. ``with_section(cfg, "render", tile=32)``: how the
    CLI's shorthand flags (--tile, ...) override the config."""
    return replace(cfg, **{section: replace(getattr(cfg, section), **values)}) if values else cfg


# Resume by meaning. Refused: keys whose change makes a checkpoint incompatible (model shapes and
# sampling) or alters the scene frame or the data (everything the ray cache key holds, and
# data.orient / data.colmap_dir, which place the COLMAP cameras).
MODEL_DATA_KEYS = ("model.", "data.root", "data.format", "data.downscale", "data.white_background",
                   "data.llff_hold", "data.ndc", "data.skip_missing", "data.orient",
                   "data.colmap_dir", "data.cache_shards")
# Allowed, said in one log line: a loss weight or a schedule, which applies from the resumed step.
RESUME_SAID_KEYS = ("train.lr", "train.lr_final", "train.lr_decay_steps", "train.weight_decay",
                    "train.precrop_steps", "train.precrop_frac", "model.distortion_weight",
                    "model.interlevel_weight", "model.proposal_anneal_steps",
                    "model.raw_noise_std")
_RUNTIME_MODEL_KEYS = ("model.chunk", "model.compile", "model.precision")


def diff_keys(a: Config, b: Config, prefixes: tuple[str, ...] = MODEL_DATA_KEYS,
              exclude: tuple[str, ...] = _RUNTIME_MODEL_KEYS) -> list[str]:
    """Dotted keys (matching prefixes, not in exclude) whose values differ between a and b, as
    "key: old -> new". Model keys of kinds other than a's model.kind are not compared (a's kind
    reads none of them; a changed model.kind is listed)."""
    da = {k: v for k, v, _ in describe_keys(a)}
    db = {k: v for k, v, _ in describe_keys(b)}
    owners = key_kinds()
    out = []
    for k in da:
        if any(k == p or (p.endswith(".") and k.startswith(p)) for p in prefixes):
            if k in exclude:
                continue
            name = k[len("model."):] if k.startswith("model.") else None
            if name is not None and owners.get(name) and a.model.kind not in owners[name]:
                continue
            if da[k] != db.get(k):
                out.append(f"{k}: {da[k]!r} -> {db.get(k)!r}")
    return out


__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "EvalConfig", "RenderConfig", "RunConfig",
           "CheckpointConfig", "LogConfig", "DistConfig", "StorageConfig", "ConfigError", "load_config", "from_dict", "to_dict",
           "dump_yaml", "describe_keys", "parse_overrides", "with_overrides", "with_section", "diff_keys",
           "foreign_keys", "own_keys", "refuse_foreign_keys", "MODEL_DATA_KEYS", "RESUME_SAID_KEYS",
           "replace"]
