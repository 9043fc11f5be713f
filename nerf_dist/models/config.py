"""The model.* config section: the keys every kind shares plus each registered kind's own keys.

Keys stay flat on the command line, in YAML and in a checkpoint's saved config (``model.width``,
``model.hash_levels``), as they were before each kind had its own dataclass. :class:`ModelConfig`
is one frozen dataclass built from :class:`CommonModelConfig` and every registered kind's config
(:data:`registry.KINDS`) as its bases, so

- a kind's code reads its keys as ``cfg.width`` and ``isinstance(cfg, VanillaConfig)`` holds;
- a config may carry keys of kinds it does not use (checkpoints and run folders saved before
  issue 24 do; :func:`nerf_dist.config.load_config` refuses them on the command line and warns of
  them in a file, and what is saved now holds model.kind's keys only), and every kind validates
  its own keys (its ``__post_init__``) whichever kind is chosen;
- :func:`key_kinds` says which kind(s) each key belongs to (``nerf-dist keys`` shows it).

NOTE: two kinds may share a key only when it means the same (same type, e.g. one kind's config
extends another's; anything else is an error when this module loads). One concept has one name:
kinds may give a shared key different defaults (model.random_background: off for fast, on for
unbounded; model.far_bound: 0 = bounded for partitioned, 1000 for unbounded), resolved by
model.kind when a config is built (:func:`model_config_class`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from types import SimpleNamespace

from ..config_check import check
from .registry import KINDS

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class CommonModelConfig:
    kind: str = "vanilla"
    """Which model to train (the registered kinds are listed first); a key marked [kind] is that
    kind's own and applies to it only."""
    chunk: int = 8192
    """Rays evaluated at once when rendering full images (memory bound)."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 autocast for the field (fp16 only on CUDA)."""
    compile: bool = False
    """Wrap the field in torch.compile."""

    def __post_init__(self) -> None:
        # NOTE: looked up when a config is built, so a kind registered later (a test's) is valid.
        check(self.kind in KINDS, "model.kind", f"must be {'|'.join(KINDS)}, got {self.kind!r}")
        check(self.precision in PRECISIONS, "model.precision",
              f"must be {'|'.join(PRECISIONS)}, got {self.precision!r}")
        check(self.chunk >= 1, "model.chunk", f"must be >= 1, got {self.chunk}")


def _kind_configs(kinds: dict) -> list[type]:
    """The kinds' config classes, each once, in registry order."""
    out: list[type] = []
    for k in kinds.values():
        if k.config not in out:
            out.append(k.config)
    return out


def _check_shared_keys(classes: list[type]) -> dict[str, dict[type, object]]:
    """TypeError unless every key that several classes declare has one type; returns the keys
    whose declarations differ in default, {key: {declaring class: its default}} (a concept two
    kinds share under one name, with each kind's own default: model.far_bound)."""
    seen: dict[str, tuple[type, dataclasses.Field]] = {}
    per_kind: dict[str, dict[type, object]] = {}
    for cls in classes:
        for f in fields(cls):
            if f.name in seen:
                other, g = seen[f.name]
                if f.type != g.type or dataclasses.MISSING not in (f.default_factory,
                                                                   g.default_factory):
                    raise TypeError(f"model.{f.name} is a key of both {other.__name__} and "
                                    f"{cls.__name__} with different types")
                if f.default != g.default:
                    per_kind.setdefault(f.name, {other: g.default})[cls] = f.default
                elif f.name in per_kind:
                    per_kind[f.name][cls] = f.default
            else:
                seen[f.name] = (cls, f)
    return per_kind


def model_config_class(kinds: dict) -> type:
    """The frozen dataclass of the model.* section for the registry `kinds` (name -> Kind): the
    common keys first, then each kind's own in registry order; it validates them all.

    A key that kinds declare with different defaults (model.far_bound: 1000 for unbounded, 0 =
    bounded for partitioned) defaults to None here, resolved when a config is built to the
    default of model.kind (of the first kind declaring it when model.kind does not); each kind
    validates its keys with its own default in such a key it does not share with model.kind.
    """
    configs = _kind_configs(kinds)
    per_kind = _check_shared_keys([CommonModelConfig, *configs])
    # NOTE: a kind's config that another's extends is inherited through it (listing both as bases
    # could make no consistent MRO); dataclass fields come from the bases in reverse MRO order.
    bases = [c for c in configs if not any(c is not o and issubclass(o, c) for o in configs)]

    def __post_init__(self) -> None:
        CommonModelConfig.__post_init__(self)
        chosen = kinds[self.kind].config
        for key, decl in per_kind.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, _own_default(chosen, key) if _declares(chosen, key)
                                   else next(iter(decl.values())))
        for cls in configs:
            post = getattr(cls, "__post_init__", None)
            if post is None:
                continue
            if issubclass(chosen, cls):
                post(self)
                continue
            # NOTE: another kind checks its keys with its own default in a key whose default
            # differs by kind (model.far_bound=0, partitioned's, is no value for unbounded).
            view = SimpleNamespace(**{f.name: getattr(self, f.name) for f in fields(self)})
            for key in per_kind:
                if _declares(cls, key):
                    setattr(view, key, _own_default(cls, key))
            post(view)

    ns = {"__post_init__": __post_init__, "__module__": __name__, "__qualname__": "ModelConfig",
          "__doc__": "The model.* section: the common keys and every registered kind's own keys.",
          "__annotations__": {},
          # NOTE: not a field (no annotation): the keys whose default depends on model.kind.
          "PER_KIND_KEYS": tuple(per_kind)}
    for key, decl in per_kind.items():
        ns["__annotations__"][key] = next(f.type for f in fields(next(iter(decl))) if f.name == key)
        ns[key] = None
    return dataclass(frozen=True)(type("ModelConfig", (*reversed(bases), CommonModelConfig), ns))


def _declares(cls: type, key: str) -> bool:
    return any(f.name == key for f in fields(cls))


def _own_default(cls: type, key: str):
    return next(f.default for f in fields(cls) if f.name == key)


ModelConfig = model_config_class(KINDS)


def kinds_help() -> str:
    """'vanilla (coarse + fine MLPs ...) | fast (...)': the registered kinds, for help texts."""
    return " | ".join(f"{name} ({k.about})" if k.about else name for name, k in KINDS.items())


def key_kinds(kinds: dict | None = None) -> dict[str, tuple[str, ...]]:
    """{key (without 'model.'): the kinds it belongs to}; () for the keys common to every kind.
    kinds: a registry (name -> Kind); None = :data:`registry.KINDS`."""
    kinds = KINDS if kinds is None else kinds
    common = {f.name for f in fields(CommonModelConfig)}
    own = {name: {f.name for f in fields(k.config)} for name, k in kinds.items()}
    out: dict[str, tuple[str, ...]] = {}
    for f in fields(CommonModelConfig):
        out[f.name] = ()
    for cls in _kind_configs(kinds):
        for f in fields(cls):
            if f.name not in common:
                out[f.name] = tuple(name for name in kinds if f.name in own[name])
    return out


__all__ = ["CommonModelConfig", "ModelConfig", "PRECISIONS", "key_kinds", "kinds_help",
           "model_config_class"]
