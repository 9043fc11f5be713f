"""Moved to :mod:`nerf_dist.models`; this module stays until the lead removes the shims."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.base import NeRFModel
from .models.chunked import render_chunked
from .models.hashgrid.model import FastNeRF
from .models.registry import KINDS, build_model, model_class
from .models.vanilla.model import VanillaNeRF

# NOTE: a snapshot of the registry as {kind: model class}; register kinds in models.registry.KINDS.
MODELS: dict[str, type[NeRFModel]] = {name: model_class(name) for name in KINDS}

__all__ = ["MODELS", "NeRFModel", "VanillaNeRF", "FastNeRF", "build_model", "render_chunked"]
