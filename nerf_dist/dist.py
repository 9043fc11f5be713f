"""The only module that touches ``torch.distributed`` process-group setup.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything runs as one process with
``DistInfo(rank=0, world_size=1)``. Under torchrun: NCCL on CUDA (one GPU per local rank), gloo on CPU.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator
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


def launch_rank() -> tuple[int, int]:
    """(rank, world_size) that torchrun gave this process (``RANK``, ``WORLD_SIZE``; (0, 1)
    without torchrun), known before the process group starts: what a rank loads of a model
    placed across the ranks (``nerf-dist eval`` / ``render``) depends on it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Initialise the process group when launched by torchrun (or SLURM via torchrun)."""
    rank, world = launch_rank()
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


class CollectiveError(RuntimeError):
    """A collective with the other ranks failed (a peer died, froze or became unreachable).

    Raised by the code that wraps the collective (:func:`collective`), so callers classify a
    failure by its type, never by the backend's message text. ``what`` names the collective.
    """

    def __init__(self, what: str, cause: BaseException, hint: str = ""):
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), str(cause))
        super().__init__(f"{what}: a collective with the other ranks failed: a peer rank died, "
                         f"froze or became unreachable.{' ' + hint if hint else ''} Cause: "
                         f"{type(cause).__name__}: {first[:300]}")
        self.what, self.cause = what, cause


class ReplicaMismatchError(RuntimeError):
    """The replicas of the model differ between ranks (raised on every rank together)."""


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Run a collective call: a backend failure inside becomes :class:`CollectiveError`.

    NOTE: only wrap the collective call itself (not storage or model code), so that whatever
    fails in here is the collective, whatever the backend's message says. Errors of our own
    types (e.g. a CollectiveError of a nested call) pass through unchanged.
    """
    try:
        yield
    except CollectiveError:
        raise
    except (RuntimeError, ConnectionError, TimeoutError) as e:
        raise CollectiveError(what, e) from e


def _group() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def all_gather_object(obj, rank: int = 0, world_size: int = 1) -> list:
    """[obj of rank 0, ..., obj of rank world_size-1] on every rank (collective; small objects).

    Without a process group only this rank's slot is filled (the others are None), so sharded
    code stays callable rank by rank in one process (tests).
    """
    if not _group():
        box = [None] * world_size
        box[rank] = obj
        return box
    box = [None] * tdist.get_world_size()
    with collective("all_gather_object"):
        tdist.all_gather_object(box, obj)
    return box


def gather_object(obj, rank: int = 0, world_size: int = 1, dst: int = 0) -> list | None:
    """[obj of rank 0, ..., obj of rank world_size-1] on rank dst, None elsewhere (collective).

    Unlike :func:`all_gather_object`, only dst holds every rank's object (a large result, such as
    the pieces of a mesh, is not copied to every rank). Without a process group: [obj] slots as
    in all_gather_object on rank dst.
    """
    if not _group():
        box = [None] * world_size
        box[rank] = obj
        return box if rank == dst else None
    box = [None] * tdist.get_world_size() if rank == dst else None
    with collective("gather_object"):
        tdist.gather_object(obj, box, dst=dst)
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
    if not _group():
        return obj
    box = [obj]
    with collective(f"broadcast from rank {src}"):
        tdist.broadcast_object_list(box, src=src)
    return box[0]


def tensor_digests(module: torch.nn.Module) -> list[tuple[str, str]]:
    """[(name, 16-hex blake2b of the tensor's bytes)] of every parameter and buffer of module.

    Bit-level: two replicas agree exactly when every tensor's bytes do. NOTE: hashed on the CPU
    (one device-to-host copy per tensor on CUDA); about 1 ms per 10 MB here.
    """
    out = []
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        a = t.detach().contiguous().cpu().reshape(-1)
        raw = a.view(torch.uint8) if a.dtype != torch.bool else a.to(torch.uint8)
        h = hashlib.blake2b(raw.numpy().tobytes() if raw.numel() else b"", digest_size=8)
        h.update(f"{tuple(t.shape)}/{t.dtype}".encode())
        out.append((name, h.hexdigest()))
    return out


def combined_digest(digests: list[tuple[str, str]]) -> str:
    """One 16-hex digest of a :func:`tensor_digests` list (names and hashes, in order)."""
    return hashlib.blake2b("\n".join(f"{n}={h}" for n, h in digests).encode(),
                           digest_size=8).hexdigest()


def check_replicas(module: torch.nn.Module, rank: int, world_size: int, when: str,
                   key: int = 0) -> str:
    """Collective: every tensor that several ranks hold is bit-identical on all of them, or
    every rank raises.

    The ranks all-gather their :func:`tensor_digests`. Each tensor (by name) is compared
    between every rank holding it: a replicated model's tensors between all ranks; a model
    placed across ranks (the partitioned kind) compares its shared colour head and partition
    buffers between all ranks (the members of a box group and the replicas), and box k's
    parameters between the ranks holding box k (its replicas). key: ranks with equal keys must
    also hold the same tensor names (the same boxes). A difference raises
    :class:`ReplicaMismatchError` on every rank, naming the ranks that differ, the rank they
    were compared with and the first differing tensor. Returns the combined digest of every
    tensor held anywhere (the same on every rank; with every rank holding every tensor, this
    rank's own).
    """
    mine = tensor_digests(module)
    if world_size == 1 or not _group():
        return combined_digest(mine)
    every = all_gather_object((key, mine), rank, world_size)
    holder: dict[str, tuple[int, str]] = {}       # name -> (first rank holding it, its hash)
    names_of_key: dict[int, tuple[int, list[str]]] = {}
    bad = []
    for r, (k, d) in enumerate(every):
        ref_rank, ref_names = names_of_key.setdefault(k, (r, [n for n, _ in d]))
        names = [n for n, _ in d]
        if names != ref_names:
            odd = next((n for n in names if n not in ref_names),
                       next((n for n in ref_names if n not in names), "?"))
            bad.append((r, ref_rank, odd))
            continue
        for n, h in d:
            first, ref = holder.setdefault(n, (r, h))
            if h != ref:
                bad.append((r, first, n))
                break
    if bad:
        ranks = ", ".join(str(r) for r, _, _ in bad)
        refs = " / ".join(sorted({str(f) for _, f, _ in bad}))
        raise ReplicaMismatchError(
            f"{when}: the model replicas differ: rank(s) {ranks} differ from rank {refs}; first "
            f"differing tensor: {bad[0][2]!r} (rank {bad[0][0]}). The ranks no longer train the "
            f"same model; resume from the newest checkpoint (train.resume=auto)")
    # NOTE: every tensor once, in the order of first appearance (rank 0's first): with every
    # rank holding every tensor this is combined_digest(mine), the digest of earlier versions.
    return combined_digest([(n, h) for n, (_, h) in holder.items()])
