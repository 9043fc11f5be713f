"""The autocast every field evaluation runs under (model.precision), for every kind."""
from __future__ import annotations

import contextlib

import torch


def autocast_context(device: torch.device, precision: str):
    """Autocast for a field evaluation (model.precision); fp32 = no autocast. fp16 falls back to
    bf16 on CPU."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" or device.type != "cuda" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["autocast_context"]
