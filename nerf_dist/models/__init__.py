"""Model kinds: the one place a kind is named.

    registry.py   KINDS: name -> (config dataclass, model class); build_model, model_class,
                  memory_estimate (torch-free until a model class is needed)
    config.py     the model.* section: common keys + every kind's own, flat (ModelConfig)
    base.py       the protocol, NeRFModel: forward, losses, before_step, optimizer_settings,
                  log_scalars, rgb_keys, memory_estimate (-> MemoryEstimate)
    precision.py  the autocast a field evaluation runs under (model.precision)
    chunked.py    render_chunked: any model over many rays in bounded memory
    vanilla/      the NeRF paper's coarse + fine MLPs (model.kind=vanilla)
    hashgrid/     hash grid + occupancy grid, instant-ngp style (model.kind=fast)
    partitioned/  P hash-grid boxes of space, shared colour head, boxes on different ranks
                  trained jointly and exactly (model.kind=partitioned, model.partitions=P)
    unbounded/    contracted hash grid + proposal networks, nerfacto style (model.kind=unbounded)

A new kind: a folder ``<kind>/`` with ``config.py`` (a frozen dataclass of its own keys) and
``model.py`` (a NeRFModel subclass), and one line in :data:`registry.KINDS`.

NOTE: this package's top level loads without torch (nerf_dist.config reads the registry), so the
torch modules (base, chunked, the kinds' models) are imported from their own modules.
"""
from __future__ import annotations

from .config import ModelConfig
from .registry import KINDS, Kind, build_model, memory_estimate, model_class

__all__ = ["KINDS", "Kind", "ModelConfig", "build_model", "memory_estimate", "model_class"]
