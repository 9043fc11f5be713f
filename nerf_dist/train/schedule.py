"""What each step draws and how fast it learns: seeds from (seed, step), the learning rate, Adam."""
from __future__ import annotations

import hashlib

import torch

from ..config import Config


def step_seed(seed: int, step: int, stream: str = "") -> int:
    """A 63-bit seed derived from (seed, step, stream)."""
    h = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF


def lr_at(cfg: Config, step: int) -> float:
    """Exponential decay from train.lr to train.lr_final over train.lr_decay_steps."""
    t = cfg.train
    return t.lr * (t.lr_final / t.lr) ** (step / t.lr_decay_steps)


def make_adam(params, lr: float, eps: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) where this torch build supports it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch / unsupported device
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)
