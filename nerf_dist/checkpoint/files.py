"""The files of a checkpoint: serialising a state, its COMMITTED marker, verified weights-only
reads, and the part files of a sharded checkpoint (merged back into one state on load).

A part file (``box-0003.pt``: one box of a partitioned model) holds a dict of the same shape as
the main state, with keys of its own: :func:`merge_part` deep-merges it into the main state, so a
sharded checkpoint loads as the one state a gathered checkpoint holds (or the part of it a rank
needs: only the parts asked for are read).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings

import torch

from .. import storage

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
MARKER_FILE = "COMMITTED"
PART_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, found, verified or safely loaded; the message names it."""


class DamagedCheckpointError(CheckpointError):
    """A committed checkpoint (or one of its part files) failed verification: damage at rest,
    not a storage error. A resume that finds it on any rank falls back, on every rank together,
    to the previous committed checkpoint (:mod:`nerf_dist.train.resume`)."""


class _Damaged(Exception):
    """Internal: a committed checkpoint failed verification (load() falls back past it)."""


def _serialise(state: dict, name: str) -> bytes:
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name}: state must be a dict, got {type(state).__name__}")
    buf = io.BytesIO()
    try:
        torch.save(state, buf)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not serialise checkpoint {name}: {type(e).__name__}: {e}") from e
    # NOTE: refuse at save time what weights_only would refuse at load time, naming the culprits,
    # instead of discovering an unloadable checkpoint on resume.
    buf.seek(0)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(buf)
    if unsafe:
        raise CheckpointError(f"checkpoint {name}: state holds non-tensor python objects "
                              f"({', '.join(sorted(unsafe))}) that weights-only loading refuses; "
                              f"store tensors, containers and python scalars only")
    return buf.getvalue()


def _parse_marker(raw: str, url: str, expect_step: int | None) -> dict | None:
    """The marker's dict, or None (with a warning) when it is not a valid marker of expect_step.
    Its optional "parts" (a sharded checkpoint) is a list of entries like the marker's own
    (file, size, sha256), none naming the main file or another part's."""
    try:
        m = json.loads(raw)
        ok = isinstance(m, dict) and m.get("version") == FORMAT_VERSION and \
            isinstance(m.get("step"), int) and _valid_entry(m)
        if ok and "parts" in m:
            files = [p.get("file") if isinstance(p, dict) else None for p in m["parts"]] \
                if isinstance(m["parts"], list) else [None]
            ok = all(isinstance(p, dict) and _valid_entry(p) for p in m["parts"]) and \
                len(set(files) | {m["file"]}) == len(files) + 1
    except ValueError:
        ok = False
    if not ok or (expect_step is not None and m["step"] != expect_step):
        warnings.warn(f"ignoring invalid checkpoint marker {storage.redact(url)}", stacklevel=3)
        return None
    return m


def _valid_entry(e: dict) -> bool:
    """A marker's (or a part's) {file, size, sha256}: a plain file name of this folder."""
    return (isinstance(e.get("size"), int) and isinstance(e.get("file"), str)
            and PART_NAME.match(e["file"]) is not None and e["file"] not in (".", "..")
            and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64)


def part_entry(data: bytes, name: str) -> dict:
    """The marker entry of a part file holding data."""
    return {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def merge_part(state: dict, part: dict, name: str, where: str = "") -> dict:
    """Deep-merge part file `name`'s dict into state (in place; returned): nested dicts are
    merged key by key; a key both hold with a non-dict value is a CheckpointError (the parts of
    a sharded checkpoint never overlap)."""
    for k, v in part.items():
        if k not in state:
            state[k] = v
        elif isinstance(state[k], dict) and isinstance(v, dict):
            merge_part(state[k], v, name, f"{where}{k}.")
        else:
            raise CheckpointError(f"checkpoint part {name} overlaps the state at {where}{k}")
    return state


def _read(url: str) -> bytes:
    """The bytes at url. A missing file under a committed marker is damage (:class:`_Damaged`);
    any other failure is storage's (CheckpointError): retried by the storage layer as
    configured, and never a reason to fall back to an older checkpoint."""
    try:
        return storage.read_bytes(url)
    except FileNotFoundError as e:
        raise _Damaged(f"checkpoint {storage.redact(url)} is missing its state file: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read checkpoint {storage.redact(url)} (a storage error, "
                              f"after storage.retries={storage.settings()['retries']}): "
                              f"{type(e).__name__}: {e}") from e


def _read_verified(url: str, marker: dict, load: bool = True) -> dict | None:
    """The dict at url once its size and sha256 match marker's; load=False: verify only."""
    data = _read(url)
    name = storage.redact(url)
    if len(data) != marker["size"]:
        raise _Damaged(f"checkpoint {name} is damaged: {len(data)} bytes, marker says {marker['size']}")
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        raise _Damaged(f"checkpoint {name} is damaged: sha256 does not match its {MARKER_FILE} marker")
    return _torch_load(data, url) if load else None


def _torch_load(data: bytes, url: str) -> dict:
    name = storage.redact(url)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprits = ""
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
            culprits = f" ({', '.join(sorted(unsafe))})" if unsafe else ""
        except Exception:  # noqa: BLE001 - e.g. a bare pickle, not a torch zip archive
            pass
        raise CheckpointError(f"checkpoint {name} contains non-tensor objects{culprits}; refusing to "
                              f"execute it (loaded with weights_only=True). Do not load it unless "
                              f"you trust its origin.") from e
    except Exception as e:  # noqa: BLE001
        raise _Damaged(f"checkpoint {name} is damaged: {type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(state, dict):
        raise _Damaged(f"checkpoint {name} does not hold a dict (got {type(state).__name__})")
    return state


def _basename(url: str) -> str:
    return url.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _parent(url: str) -> str:
    u = url.rstrip("/")
    if storage.is_url(u):
        return u.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(u))


def _parent_name(url: str) -> str:
    return _basename(_parent(url))
