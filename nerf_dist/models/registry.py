"""The registry of model kinds: the one table that names them.

A kind is a name (``model.kind``), its config dataclass (its own ``model.*`` keys) and its model
class, a :class:`nerf_dist.models.base.NeRFModel` subclass. A new kind is a new folder
``nerf_dist/models/<kind>/`` (``config.py`` with its dataclass, ``model.py`` with its class) and one
line in :data:`KINDS`; nothing outside the folder branches on the kind.

NOTE: this module, and with it nerf_dist.config, loads without torch (``nerf-dist status`` and
``keys`` answer at once): a registered model class is named by ``"module:Class"`` and imported on
first use. A class may also be registered directly (a kind defined in a test, say).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .hashgrid.config import HashGridConfig
from .partitioned.config import PartitionedConfig
from .unbounded.config import UnboundedConfig
from .vanilla.config import VanillaConfig

if TYPE_CHECKING:  # NOTE: annotations only: importing these at run time would import torch
    import torch

    from .base import MemoryEstimate, NeRFModel


@dataclass(frozen=True)
class Kind:
    """One registered model kind."""
    config: type
    """Its config dataclass (frozen; its fields are the kind's own model.* keys, each with a
    docstring and validated in __post_init__); a kind without keys of its own names
    :class:`NoKeys`."""
    model: Any
    """Its NeRFModel subclass, or "package.module:Class" naming it (imported on first use)."""
    about: str = ""
    """A few words for `nerf-dist keys` and error messages."""


@dataclass(frozen=True)
class NoKeys:
    """The config of a kind with no model.* keys of its own (only the common ones)."""


KINDS: dict[str, Kind] = {
    "vanilla": Kind(VanillaConfig, "nerf_dist.models.vanilla.model:VanillaNeRF",
                    "coarse + fine MLPs, the NeRF paper"),
    "fast": Kind(HashGridConfig, "nerf_dist.models.hashgrid.model:FastNeRF",
                 "hash grid + occupancy grid, instant-ngp style"),
    "partitioned": Kind(PartitionedConfig, "nerf_dist.models.partitioned.model:PartitionedNeRF",
                        "P hash-grid boxes of space (model.partitions), shared colour head, "
                        "boxes on different ranks trained jointly"),
    "unbounded": Kind(UnboundedConfig, "nerf_dist.models.unbounded.model:UnboundedNeRF",
                      "contracted hash grid + proposal sampling, nerfacto style"),
}


def kind(name: str) -> Kind:
    """The registered kind `name`; ValueError listing the registered ones otherwise."""
    if name not in KINDS:
        raise ValueError(f"model.kind={name!r} is not a registered model: {' | '.join(KINDS)}")
    return KINDS[name]


def model_class(name: str) -> type:
    """The model class of kind `name` (imports its module on first use: torch)."""
    model = kind(name).model
    if isinstance(model, str):
        module, _, attr = model.partition(":")
        model = getattr(importlib.import_module(module), attr)
    return model


def build_model(cfg, aabb: torch.Tensor | None = None, rank: int = 0,
                world_size: int = 1) -> NeRFModel:
    """The model named by cfg.kind, built from the model config cfg (:class:`ModelConfig`).

    aabb: [2, 3] scene box (min, max) tensor or None; the kinds that need it (fast) raise
    ValueError on None. rank, world_size: only what rank `rank` of `world_size` holds once
    placed (:meth:`~nerf_dist.models.base.NeRFModel.build_placed`; for loading a checkpoint).
    """
    cls = model_class(cfg.kind)
    return cls(cfg, aabb) if world_size == 1 else cls.build_placed(cfg, aabb, rank, world_size)


def memory_estimate(cfg) -> MemoryEstimate:
    """The memory the kind cfg.kind says a model of this config needs
    (:class:`nerf_dist.models.base.MemoryEstimate`), without building it."""
    return model_class(cfg.kind).memory_estimate(cfg)


__all__ = ["KINDS", "Kind", "NoKeys", "kind", "model_class", "build_model", "memory_estimate"]
