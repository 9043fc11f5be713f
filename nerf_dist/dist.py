"""The only module that touches ``torch.distributed`` process-group setup.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything runs as one process with
``DistInfo(rank=0, world_size=1)``. Under torchrun: NCCL on CUDA (one GPU per local rank), gloo on CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(local_rank: int = 0, prefer: str = "auto") -> torch.device:
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def restart_store(timeout: datetime.timedelta):
    """The store this restart of the worker group rendezvouses through, or None for env://.

    Under torchrun (c10d rendezvous with torch >= 2.5 unless TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1;
    the static rendezvous always) every worker is a client of the agent's TCPStore
    (TORCHELASTIC_USE_AGENT_STORE), which outlives the workers: after a restart (``--max-restarts``)
    gloo's and NCCL's address keys of the dead group are still there, and a restarted worker that
    reads one before its new peer overwrote it connects to a dead port ("connectFullMesh failed ...
    Connection refused") or hangs in init: pytorch#135712, still in torch 2.13. A race: with
    bench/restart_loop.py on a loaded 2-core machine, 3 restarts of 10 worked without the prefix
    (6 failed to connect, 1 hung), 10 of 10 with it. The keys of each restart are put under their
    own prefix, as torch < 2.5 did itself ("/worker/attempt_N").

    NOTE: TORCHELASTIC_RESTART_COUNT is the agent's count of failures, so every agent of a job with
    a fixed node count (``--nnodes=N``, what the launch scripts use) gives all its workers the same
    N. An elastic job (``--nnodes=MIN:MAX``) that admits a new node restarts the workers without
    counting; there the new node's count can differ: use TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None   # no torchrun, or a store that rank 0 hosts afresh for every restart
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    client = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                            is_master=False, timeout=timeout)
    return tdist.PrefixStore(f"/worker/attempt_{attempt}", client)


def init(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Initialise the process group when launched by torchrun (or SLURM via torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(local_rank, device)
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = datetime.timedelta(seconds=timeout_s)
        # NOTE: an explicit store only where torchrun shares its own (see restart_store); env://
        # everywhere else, as before.
        tdist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout,
                                 store=restart_store(timeout))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def close() -> None:
    """Destroy the process group if one exists (safe to call on any path)."""
    if tdist.is_available() and tdist.is_initialized():
        try:
            tdist.destroy_process_group()
        except Exception:  # noqa: BLE001 - teardown must not mask the original error
            pass


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def all_gather_object(obj, rank: int = 0, world_size: int = 1) -> list:
    """[obj of rank 0, ..., obj of rank world_size-1] on every rank (collective; small objects).

    Without a process group only this rank's slot is filled (the others are None), so sharded
    code stays callable rank by rank in one process (tests).
    """
    if not (tdist.is_available() and tdist.is_initialized()):
        box = [None] * world_size
        box[rank] = obj
        return box
    box = [None] * tdist.get_world_size()
    tdist.all_gather_object(box, obj)
    return box


def raise_together(err: str | None, rank: int, world_size: int, exc_type: type,
                   others: str = "rank {rank}: {err}") -> None:
    """Collective: when any rank has an error message, every rank raises ``exc_type``.

    A failing rank raises its own message; the others raise ``others`` formatted with the first
    failing rank and its message. NOTE: so no rank goes on into a collective that a failed rank
    never joins (and waits there until dist.timeout_s).
    """
    errs = all_gather_object(err or "", rank, world_size) if world_size > 1 else [err or ""]
    if err:
        raise exc_type(err)
    bad = [(r, e) for r, e in enumerate(errs) if e]
    if bad:
        raise exc_type(others.format(rank=bad[0][0], err=bad[0][1]))


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable python object from src to all ranks (identity without a group)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
