"""What every config dataclass validates with: :class:`ConfigError` and :func:`check`.

NOTE: apart from nerf_dist.config so that the model kinds' own config dataclasses
(nerf_dist/models/<kind>/config.py), which nerf_dist.config assembles into the model.* section,
can validate their keys without importing it (that would be an import cycle).
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names the key."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ConfigError naming the dotted `key` unless `cond`."""
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


__all__ = ["ConfigError", "check"]
