"""One step that may fail on any rank, with the failure raised on every rank (:func:`together`).

NOTE: generic (only :func:`nerf_dist.dist.raise_together` underneath); it lives here because the
ray cache and the loader are its users today. It could move to dist.py.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..dist import raise_together
from .layout import RayCacheError

T = TypeVar("T")


def together(fn: Callable[[], T], rank: int, world_size: int, doing: str) -> T:
    """fn() on this rank, then one all-gather of the ranks' errors; returns fn()'s value.

    A rank whose fn raised raises that same exception (its own type: a ShardReadError or
    StorageError stays one); every other rank raises RayCacheError("rank r failed while
    <doing>: <its message>"), so the failure is named in every rank's log and no rank goes on
    into a collective the failed one never joins. Collective: every rank must call it, at the
    same point (rank-only work goes inside fn, e.g. ``lambda: work() if rank == 0 else None``).
    """
    own, value = None, None
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - raised again below, once the other ranks know
        own = e
    msg = "" if own is None else (str(own) if isinstance(own, RayCacheError) and str(own)
                                  else f"{type(own).__name__}: {own}")
    peer = None
    try:
        raise_together(msg, rank, world_size, RayCacheError,
                       others=f"rank {{rank}} failed while {doing}: {{err}}")
    except RayCacheError as e:
        peer = e
    if own is not None:
        raise own
    if peer is not None:
        raise peer
    return value
