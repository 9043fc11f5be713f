"""The density and radiance field of a model placed across ranks (the partitioned kind under
torchrun: each rank holds only its box group's boxes), for the mesh export.

Every rank calls :meth:`SplitField.field_at` with the same points (collective). On call i, the
ranks of replica ``i mod R`` evaluate the points their boxes own
(:meth:`PartitionedNeRF.field_at_boxes`); every other value is zero; one all-reduce (sum) over
every rank gives each rank the whole field. Each point has exactly one owner box and each box one
holder per replica, so the sum adds zeros to one value: the field is field_at's exactly, and a
rank never holds more than its own boxes. The replicas take turns call by call, so R replicas
share the evaluation.
"""
from __future__ import annotations

import torch
import torch.distributed as tdist

from ... import dist


def needs_split(model) -> bool:
    """True when this rank holds only some of the model's boxes (then field_at cannot run)."""
    lay = getattr(model, "layout", None)
    parts = getattr(getattr(model, "cfg", None), "partitions", 1)
    return lay is not None and hasattr(model, "field_at_boxes") and len(lay.owned) < parts


class SplitField:
    """``field_at`` over every rank (module docstring); the other model calls go to the model."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    @torch.no_grad()
    def field_at(self, x: torch.Tensor, viewdirs: torch.Tensor | None = None):
        """x [n, 3], viewdirs [n, 3] | None, the same on every rank -> (sigma [n], rgb [n, 3] |
        None), the whole field on every rank. Collective."""
        lay = self.model.layout
        turn = self.calls % max(1, lay.n_replicas)
        self.calls += 1
        boxes = lay.owned if lay.replica == turn else ()
        sigma, rgb = self.model.field_at_boxes(x, viewdirs, boxes)
        flat = sigma[:, None] if rgb is None else torch.cat([sigma[:, None], rgb], 1)
        flat = flat.contiguous()
        what = f"the mesh export's field exchange (call {self.calls})"
        with dist.collective(what):
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        return flat[:, 0], (None if rgb is None else flat[:, 1:])


__all__ = ["SplitField", "needs_split"]
