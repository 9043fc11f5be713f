"""Which rank holds which box, and the one exchange a forward pass makes.

A job of N ranks runs a P-box model as R replicas of G ranks each: G = P (box k on rank k of its
replica) when N is a multiple of P, or G = N, R = 1 (each rank holds P/N boxes) when N divides P;
one process (N = 1) holds every box. Rank r is member g = r % G of replica q = r // G and holds
boxes k with k % G == g. Its *box group* is its replica's G ranks (they see the same rays and
exchange segment results); its *replica group* is the R ranks holding the same boxes (they average
those boxes' gradients).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from ...dist import collective


@dataclass
class BoxLayout:
    """A rank's place in the layout of a P-box model (see the module docstring)."""
    partitions: int
    """P, the model's boxes."""
    group_size: int = 1
    """G, ranks per replica."""
    n_replicas: int = 1
    """R, data-parallel replicas."""
    member: int = 0
    """g, this rank's place in its box group."""
    replica: int = 0
    """q, this rank's replica (the loader's shard of the global batch)."""
    box_group: object = field(default=None, repr=False)
    """Process group of this replica's G ranks (None when G = 1)."""
    replica_group: object = field(default=None, repr=False)
    """Process group of the R ranks holding this rank's boxes (None when R = 1)."""
    world_group: object = field(default=None, repr=False)
    """Every rank (the shared parameters' gradient sum; None in one process)."""
    watch: Callable[[str], contextlib.AbstractContextManager] = field(
        default=lambda what: contextlib.nullcontext(), repr=False)
    """``watch(what)`` around every exchange (the trainer's StallWatchdog.waiting), so a frozen
    or dead box partner is named like any other peer."""

    def boxes_of(self, member: int) -> tuple[int, ...]:
        return tuple(k for k in range(self.partitions) if k % self.group_size == member)

    @property
    def owned(self) -> tuple[int, ...]:
        """The boxes this rank holds, ascending."""
        return self.boxes_of(self.member)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """local: [n_rays, len(owned), W] this rank's segment results -> [n_rays, P, W] every
        box's, in box order (differentiable with respect to local)."""
        if self.group_size == 1:
            return local
        if self.box_group is None:
            raise RuntimeError(f"this rank holds boxes {list(self.owned)} of {self.partitions} "
                               f"but has no box group yet: place the model across the ranks "
                               f"(distribute) under the process group before rendering")
        return _GatherBoxes.apply(local, self)


def place(partitions: int, rank: int = 0, world_size: int = 1) -> BoxLayout:
    """Rank `rank`'s place in the layout of a P-box model on `world_size` ranks, without its
    process groups (no collective: what a rank holds, known before the model is built)."""
    P, N = partitions, world_size
    if N % P == 0:
        G, R = P, N // P
    elif P % N == 0:
        G, R = N, 1
    else:
        raise ValueError(f"model.partitions={P} on {N} ranks: the ranks must be a multiple of the "
                         f"boxes (replicas of P boxes) or divide them (ranks holding several)")
    return BoxLayout(P, G, R, rank % G, rank // G)


def make_layout(partitions: int, rank: int = 0, world_size: int = 1) -> BoxLayout:
    """The layout of a P-box model on rank `rank` of `world_size`. Collective when world_size > 1
    (every rank creates every group, in the same order)."""
    lay = place(partitions, rank, world_size)
    N, G, R = world_size, lay.group_size, lay.n_replicas
    if N == 1:
        return lay
    for q in range(R):
        ranks = list(range(q * G, (q + 1) * G))
        g = tdist.new_group(ranks) if G > 1 else None
        if q == lay.replica:
            lay.box_group = g
    for m in range(G):
        ranks = list(range(m, N, G))
        g = tdist.new_group(ranks) if R > 1 else None
        if m == lay.member:
            lay.replica_group = g
    lay.world_group = tdist.group.WORLD
    return lay


class _GatherBoxes(torch.autograd.Function):
    """All-gather of the segment results within the box group.

    NOTE: every rank of the group computes the same loss from the same gathered tensor, so the
    gradient a rank sees for its own boxes' slice is already the whole gradient: the backward is a
    slice, with no communication (a reduce-scatter would add G equal copies)."""

    @staticmethod
    def forward(ctx, local, lay: BoxLayout):
        ctx.lay = lay
        parts = [torch.empty_like(local) for _ in range(lay.group_size)]
        what = f"the box group's segment exchange (boxes {list(lay.owned)} of {lay.partitions})"
        with lay.watch(what), collective(what):
            tdist.all_gather(parts, local.contiguous(), group=lay.box_group)
        out = local.new_empty(local.shape[0], lay.partitions, local.shape[2])
        for g, part in enumerate(parts):
            out[:, list(lay.boxes_of(g))] = part
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad[:, list(ctx.lay.owned)], None


__all__ = ["BoxLayout", "make_layout", "place"]
