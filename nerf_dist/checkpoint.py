"""Save and resume on storage (local path or fsspec URL): atomic, verified, keep the newest k.

Layout under ``url``::

    step-00001000/state.pt     torch.save of a plain dict (tensors, containers, python scalars)
    step-00001000/COMMITTED    {"version": 1, "step": 1000, "file": "state.pt", "size": .., "sha256": ..}

``state.pt`` is written first and ``COMMITTED`` last: object stores have no rename, so a folder
without a valid marker is an interrupted save and is invisible. Loads verify the size and sha256
against the marker and always use ``torch.load(weights_only=True)``: a checkpoint holding pickled
python objects (which could run code) is refused with :class:`CheckpointError`, never executed.
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

from . import storage

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
MARKER_FILE = "COMMITTED"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, found, verified or safely loaded; the message names it."""


class _Damaged(Exception):
    """Internal: a committed checkpoint failed verification (load() falls back past it)."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


class Checkpointer:
    """Checkpoints under one location. Only the main rank writes; every rank may load.

    Args:
        url: folder, local path or fsspec URL (``s3://bucket/prefix``); credentials come from the
            environment, never from the URL (messages show it through ``storage.redact``).
        keep: number of newest committed checkpoints kept after each save.
        is_main: whether this process writes (rank 0); ``save`` is a no-op elsewhere.
    """

    def __init__(self, url: str, keep: int = 3, is_main: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.url = str(url).rstrip("/") if storage.is_url(url) else str(url)
        self.keep = keep
        self.is_main = is_main

    # ------------------------------------------------------------------ paths

    @property
    def _name(self) -> str:
        return storage.redact(self.url)

    def step_url(self, step: int) -> str:
        return storage.join(self.url, step_dir_name(step))

    # ------------------------------------------------------------------ checks

    def check_writable(self) -> None:
        """Raise CheckpointError if this location cannot be written (main) or reached (others)."""
        try:
            if self.is_main:
                storage.check_writable(self.url)
            else:
                storage.listdir(self.url)
        except Exception as e:  # noqa: BLE001 - any backend error means unusable
            raise CheckpointError(f"checkpoint location {self._name} is not usable: {e}") from e

    # ------------------------------------------------------------------ save

    def save(self, step: int, state: dict) -> str:
        """Write ``state`` as checkpoint ``step`` (main rank only); return the checkpoint URL.

        After the marker is written, older checkpoints beyond ``keep`` and uncommitted folders
        older than the newest committed one are deleted.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        folder = self.step_url(step)
        if not self.is_main:
            return folder
        bad = nonfinite_entries(state)
        if bad:
            raise CheckpointError(
                f"refusing to commit checkpoint {storage.redact(folder)}: non-finite values in "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (the newest good checkpoint "
                f"is kept)")
        data = _serialise(state, storage.redact(folder))
        marker = {"version": FORMAT_VERSION, "step": step, "file": STATE_FILE, "size": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "torch": torch.__version__}
        marker_url = storage.join(folder, MARKER_FILE)
        try:
            # NOTE: a re-save of an existing step (resume from an older one) un-commits it first,
            # so a crash between the two writes below never pairs an old marker with new data.
            storage.remove(marker_url)
            storage.write_bytes(storage.join(folder, STATE_FILE), data)
            storage.write_text(marker_url, json.dumps(marker, indent=1) + "\n")
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"could not write checkpoint {storage.redact(folder)}: "
                                  f"{type(e).__name__}: {e}") from e
        try:
            self._prune()
        except CheckpointError as e:  # the checkpoint is committed; retention can retry next time
            warnings.warn(f"checkpoint retention skipped: {e}", stacklevel=2)
        return folder

    def _prune(self) -> None:
        steps, committed = self._scan()
        if not committed:
            return
        doomed = committed[:-self.keep] if len(committed) > self.keep else []
        newest = committed[-1]
        doomed += [s for s in steps if s not in committed and s < newest]
        for s in sorted(doomed):
            folder = self.step_url(s)
            try:
                # NOTE: marker first, so a half-deleted folder is invisible rather than damaged.
                storage.remove(storage.join(folder, MARKER_FILE))
                storage.remove(folder, recursive=True)
            except Exception as e:  # noqa: BLE001 - retention must not fail a save
                warnings.warn(f"could not delete old checkpoint {storage.redact(folder)}: {e}",
                              stacklevel=3)

    # ------------------------------------------------------------------ list

    def _scan(self) -> tuple[list[int], list[int]]:
        """(all step folders, committed steps), both ascending."""
        try:
            names = storage.listdir(self.url)
            steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, names) if m)
            committed = [s for s in steps if self._marker(s) is not None]
        except Exception as e:  # noqa: BLE001 - unreachable or unreadable storage
            raise CheckpointError(f"could not list checkpoints under {self._name}: "
                                  f"{type(e).__name__}: {e}") from e
        return steps, committed

    def list(self) -> list[int]:
        """Committed steps, ascending."""
        return self._scan()[1]

    def _marker(self, step: int) -> dict | None:
        """The parsed COMMITTED marker of ``step``, or None if missing or invalid."""
        url = storage.join(self.step_url(step), MARKER_FILE)
        try:
            raw = storage.read_text(url)
        except FileNotFoundError:
            return None
        return _parse_marker(raw, url, expect_step=step)

    # ------------------------------------------------------------------ load

    def load(self, step: int | None = None) -> tuple[int, dict] | None:
        """Load the newest committed checkpoint (or exactly ``step``) -> ``(step, state)``.

        Returns None when there is no committed checkpoint. A damaged newest one (size or hash
        mismatch, missing state file, not a torch archive) is skipped with a warning and the
        previous one is tried (:meth:`newest_good`); if every committed checkpoint is damaged,
        CheckpointError is raised rather than silently starting over. A storage error (after
        ``storage.retries``) is CheckpointError, never a reason to fall back. A checkpoint that
        holds non-tensor python objects raises CheckpointError (tampered, not damaged: no
        fallback). An explicit ``step`` that is missing or damaged raises CheckpointError.
        """
        if step is not None:
            return int(step), self.load_step(int(step))
        found = self.newest_good()
        if found is None:
            return None
        s, state, skipped = found
        for note in skipped:
            warnings.warn(f"{note}; falling back to the previous checkpoint", stacklevel=2)
        return s, state

    def newest_good(self) -> tuple[int, dict, list[str]] | None:
        """The newest committed checkpoint that verifies -> ``(step, state, skipped)``.

        ``skipped`` holds one message per newer checkpoint found damaged (each names it and
        why). None when there is no committed checkpoint. CheckpointError when storage fails
        (unreachable, timed out after the configured retries: an error, never "damaged") or
        when every committed checkpoint is damaged.
        """
        committed = self.list()
        if not committed:
            return None
        skipped: list[str] = []
        for s in reversed(committed):
            try:
                return s, self._load_committed(s), skipped
            except _Damaged as e:
                skipped.append(str(e))
        raise CheckpointError(f"all {len(committed)} committed checkpoints under {self._name} are "
                              f"damaged ({'; '.join(skipped)}); refusing to start over silently")

    def load_step(self, step: int) -> dict:
        """The state of exactly committed checkpoint ``step`` (verified); CheckpointError if it
        is missing, damaged or unreadable."""
        committed = self.list()
        if step not in committed:
            raise CheckpointError(f"no committed checkpoint for step {step} under {self._name} "
                                  f"(committed: {committed})")
        try:
            return self._load_committed(step)
        except _Damaged as e:
            raise CheckpointError(str(e)) from e

    def _load_committed(self, step: int) -> dict:
        folder = self.step_url(step)
        marker = self._marker(step)
        if marker is None:  # deleted between list() and now
            raise _Damaged(f"checkpoint {storage.redact(folder)} lost its {MARKER_FILE} marker")
        return _read_verified(storage.join(folder, marker["file"]), marker)

    def load_url(self, url: str) -> tuple[int, dict]:
        """Load one explicit checkpoint: a step folder or its ``state.pt`` URL."""
        return load_url(url)


# ---------------------------------------------------------------------- module-level helpers

def load_url(url: str) -> tuple[int, dict]:
    """Load one checkpoint folder (or ``.../state.pt``) -> ``(step, state)``; verify if committed.

    A folder without a COMMITTED marker (or a bare state file) is loaded with a warning, still
    under ``weights_only=True``. Any failure raises CheckpointError naming the (redacted) URL.
    """
    url = str(url).rstrip("/") if storage.is_url(url) else str(url)
    base = url.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if base.endswith(".pt") or base.endswith(".pth"):
        file_url, folder = url, _parent(url)
    else:
        file_url, folder = storage.join(url, STATE_FILE), url
    m = _STEP_DIR.match(_parent_name(file_url))
    name_step = int(m.group(1)) if m else None
    marker_url = storage.join(folder, MARKER_FILE)
    marker = None
    try:
        try:
            marker = _parse_marker(storage.read_text(marker_url), marker_url, expect_step=name_step)
        except FileNotFoundError:
            marker = None
        if marker is not None and marker["file"] != _basename(file_url):
            marker = None  # the marker vouches for another file of that folder
        if marker is not None:
            state = _read_verified(file_url, marker)
        elif not storage.exists(file_url):
            raise CheckpointError(f"no checkpoint at {storage.redact(url)}")
        else:
            warnings.warn(f"checkpoint {storage.redact(file_url)} has no valid {MARKER_FILE} marker; "
                          f"loading it unverified (weights only)", stacklevel=2)
            state = _torch_load(_read(file_url), file_url)
    except CheckpointError:
        raise
    except _Damaged as e:
        raise CheckpointError(str(e)) from e
    except Exception as e:  # noqa: BLE001 - e.g. unreachable storage
        raise CheckpointError(f"could not load checkpoint {storage.redact(url)}: "
                              f"{type(e).__name__}: {e}") from e
    if marker is not None:
        return int(marker["step"]), state
    if name_step is not None:
        return name_step, state
    if isinstance(state.get("step"), int):
        return int(state["step"]), state
    raise CheckpointError(f"cannot tell the step of checkpoint {storage.redact(url)}: no marker, "
                          f"no step-XXXXXXXX folder name and no integer 'step' entry")


def nonfinite_entries(obj, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors (or floats) in a nested state holding NaN/inf."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            return [prefix.rstrip(".") or "<tensor>"]
        return []
    if isinstance(obj, float):
        return [] if obj == obj and abs(obj) != float("inf") else [prefix.rstrip(".") or "<float>"]
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in nonfinite_entries(v, f"{prefix}{k}.")]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in nonfinite_entries(v, f"{prefix}{i}.")]
    return []


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
    try:
        m = json.loads(raw)
        ok = (isinstance(m, dict) and m.get("version") == FORMAT_VERSION
              and isinstance(m.get("step"), int) and isinstance(m.get("size"), int)
              and isinstance(m.get("file"), str) and "/" not in m["file"] and m["file"] not in ("", ".", "..")
              and isinstance(m.get("sha256"), str) and len(m["sha256"]) == 64)
    except ValueError:
        ok = False
    if not ok or (expect_step is not None and m["step"] != expect_step):
        warnings.warn(f"ignoring invalid checkpoint marker {storage.redact(url)}", stacklevel=3)
        return None
    return m


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


def _read_verified(url: str, marker: dict) -> dict:
    data = _read(url)
    name = storage.redact(url)
    if len(data) != marker["size"]:
        raise _Damaged(f"checkpoint {name} is damaged: {len(data)} bytes, marker says {marker['size']}")
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        raise _Damaged(f"checkpoint {name} is damaged: sha256 does not match its {MARKER_FILE} marker")
    return _torch_load(data, url)


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


__all__ = ["Checkpointer", "CheckpointError", "load_url", "step_dir_name", "FORMAT_VERSION"]
