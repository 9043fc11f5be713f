"""Save and resume on storage (local path or fsspec URL): atomic, verified, keep the newest k.

Layout under ``url``::

    step-00001000/state.pt     torch.save of a plain dict (tensors, containers, python scalars)
    step-00001000/COMMITTED    {"version": 1, "step": 1000, "file": "state.pt", "size": .., "sha256": ..}

``state.pt`` is written first and ``COMMITTED`` last: object stores have no rename, so a folder
without a valid marker is an interrupted save and is invisible.

A sharded checkpoint (the partitioned kind: one file per box, written by the rank that holds it)
adds part files beside ``state.pt`` and lists them in the marker, ``"parts": [{"file":
"box-0000.pt", "size": .., "sha256": ..}, ...]``. The order: rank 0 un-commits the step
(:meth:`Checkpointer.begin`), every writer writes and verifies its parts
(:meth:`Checkpointer.write_part`, any rank), then rank 0 writes ``state.pt`` and the marker
(:meth:`Checkpointer.save` with ``parts``): a part that was not written and verified is never
committed. A load reads ``state.pt`` and the parts asked for (all by default), each verified
against the marker, and merges them into one state (:func:`files.merge_part`). Loads verify the size and sha256
against the marker and always use ``torch.load(weights_only=True)``: a checkpoint holding pickled
python objects (which could run code) is refused with :class:`CheckpointError`, never executed.
"""
from __future__ import annotations

import hashlib
import json
import warnings

import torch

from .. import storage
from .files import (_STEP_DIR, FORMAT_VERSION, MARKER_FILE, STATE_FILE, CheckpointError,
                    DamagedCheckpointError, _Damaged,
                    _parent, _parent_name, _parse_marker, _read, _read_verified, _serialise,
                    _torch_load, _basename, merge_part, part_entry, PART_NAME)


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

    def begin(self, step: int) -> None:
        """Main rank, before the part files of a sharded save of ``step``: un-commit ``step`` (a
        re-save of an existing step), so no marker ever vouches for a mix of old and new files."""
        if self.is_main:
            try:
                storage.remove(storage.join(self.step_url(int(step)), MARKER_FILE))
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"could not begin checkpoint "
                                      f"{storage.redact(self.step_url(int(step)))}: "
                                      f"{type(e).__name__}: {e}") from e

    def write_part(self, step: int, name: str, state: dict) -> dict:
        """Any rank: write part file ``name`` of checkpoint ``step`` (after :meth:`begin`), read
        it back and verify it; return its marker entry (file, size, sha256) for :meth:`save`.
        CheckpointError when the state is non-finite or unsafe, or the write does not verify."""
        folder = self.step_url(int(step))
        url = storage.join(folder, name)
        if not PART_NAME.match(name) or name in (STATE_FILE, MARKER_FILE, ".", ".."):
            raise CheckpointError(f"checkpoint part name {name!r} is not a plain file name")
        _refuse_nonfinite(state, url)
        data = _serialise(state, storage.redact(url))
        entry = part_entry(data, name)
        try:
            storage.write_bytes(url, data)
            _read_verified(url, entry, load=False)
        except Exception as e:  # noqa: BLE001 - _Damaged included: the write did not verify
            raise CheckpointError(f"could not write checkpoint part {storage.redact(url)}: "
                                  f"{type(e).__name__}: {e}") from e
        return entry

    def save(self, step: int, state: dict, parts: list[dict] | None = None) -> str:
        """Write ``state`` as checkpoint ``step`` (main rank only); return the checkpoint URL.

        parts: the entries :meth:`write_part` returned (on any rank) for a sharded checkpoint;
        each must exist, and is listed in the marker. After the marker is written, older checkpoints beyond ``keep`` and uncommitted folders
        older than the newest committed one are deleted.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        folder = self.step_url(step)
        if not self.is_main:
            return folder
        _refuse_nonfinite(state, folder)
        data = _serialise(state, storage.redact(folder))
        marker = {"version": FORMAT_VERSION, "step": step, "file": STATE_FILE, "size": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "torch": torch.__version__}
        if parts is not None:
            names = [p["file"] for p in parts]
            if len(set(names)) != len(names) or STATE_FILE in names:
                raise CheckpointError(f"checkpoint {storage.redact(folder)}: part files named "
                                      f"twice or as the state file: {sorted(names)}")
            marker["parts"] = [{k: p[k] for k in ("file", "size", "sha256")}
                               for p in sorted(parts, key=lambda p: p["file"])]
        marker_url = storage.join(folder, MARKER_FILE)
        try:
            # NOTE: a re-save of an existing step (resume from an older one) un-commits it first,
            # so a crash between the two writes below never pairs an old marker with new data.
            storage.remove(marker_url)
            for p in parts or ():
                if not storage.exists(storage.join(folder, p["file"])):
                    raise FileNotFoundError(f"part {p['file']} is missing")
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

    def load(self, step: int | None = None, parts: set[str] | None = None
             ) -> tuple[int, dict] | None:
        """Load the newest committed checkpoint (or exactly ``step``) -> ``(step, state)``.

        Returns None when there is no committed checkpoint. A damaged newest one (size or hash
        mismatch, missing state file, not a torch archive) is skipped with a warning and the
        previous one is tried (:meth:`newest_good`); if every committed checkpoint is damaged,
        CheckpointError is raised rather than silently starting over. A storage error (after
        ``storage.retries``) is CheckpointError, never a reason to fall back. A checkpoint that
        holds non-tensor python objects raises CheckpointError (tampered, not damaged: no
        fallback). An explicit ``step`` that is missing or damaged raises CheckpointError.
        parts: the part files of a sharded checkpoint to read (None: all; see :meth:`read`).
        """
        if step is not None:
            return int(step), self.load_step(int(step), parts)
        found = self.newest_good(parts)
        if found is None:
            return None
        s, state, skipped = found
        for note in skipped:
            warnings.warn(f"{note}; falling back to the previous checkpoint", stacklevel=2)
        return s, state

    def newest_good(self, parts: set[str] | None = None, below: int | None = None
                    ) -> tuple[int, dict, list[str]] | None:
        """The newest committed checkpoint that verifies -> ``(step, state, skipped)``.

        ``skipped`` holds one message per newer checkpoint found damaged (each names it and
        why). None when there is no committed checkpoint. CheckpointError when storage fails
        (unreachable, timed out after the configured retries: an error, never "damaged") or
        when every committed checkpoint is damaged. below: only steps before it (another rank
        found step `below` damaged); CheckpointError when there is none.
        """
        committed = [s for s in self.list() if below is None or s < below]
        if not committed:
            if below is not None:
                raise CheckpointError(f"no committed checkpoint under {self._name} before the "
                                      f"damaged step {below}; refusing to start over silently")
            return None
        skipped: list[str] = []
        for s in reversed(committed):
            try:
                return s, self._load_committed(s, parts), skipped
            except _Damaged as e:
                skipped.append(str(e))
        raise CheckpointError(f"all {len(committed)} committed checkpoints under {self._name} are "
                              f"damaged ({'; '.join(skipped)}); refusing to start over silently")

    def load_step(self, step: int, parts: set[str] | None = None) -> dict:
        """The state of exactly committed checkpoint ``step`` (verified); CheckpointError if it
        is missing or unreadable, DamagedCheckpointError (a CheckpointError) if it is damaged.
        parts: as in :meth:`load`."""
        committed = self.list()
        if step not in committed:
            raise CheckpointError(f"no committed checkpoint for step {step} under {self._name} "
                                  f"(committed: {committed})")
        try:
            return self._load_committed(step, parts)
        except _Damaged as e:
            raise DamagedCheckpointError(str(e)) from e

    def _load_committed(self, step: int, parts: set[str] | None = None) -> dict:
        folder = self.step_url(step)
        marker = self._marker(step)
        if marker is None:  # deleted between list() and now
            raise _Damaged(f"checkpoint {storage.redact(folder)} lost its {MARKER_FILE} marker")
        return _read_committed(folder, marker, parts)

    def load_url(self, url: str, parts: set[str] | None = None) -> tuple[int, dict]:
        """Load one explicit checkpoint: a step folder or its ``state.pt`` URL."""
        return load_url(url, parts)


# ---------------------------------------------------------------------- module-level helpers

def load_url(url: str, parts: set[str] | None = None) -> tuple[int, dict]:
    """Load one checkpoint folder (or ``.../state.pt``) -> ``(step, state)``; verify if committed.
    parts: the part files of a sharded checkpoint to read (None: all its parts).

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
            state = _read_committed(folder, marker, parts)
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


def _read_committed(folder: str, marker: dict, parts: set[str] | None) -> dict:
    """The verified state of a committed folder, merged with its verified parts in `parts` (all
    when None). NOTE: a sharded checkpoint read in one place (eval, render, a gathered-layout
    resume) is the state a gathered checkpoint holds."""
    state = _read_verified(storage.join(folder, marker["file"]), marker)
    for p in marker.get("parts", ()):
        if parts is None or p["file"] in parts:
            merge_part(state, _read_verified(storage.join(folder, p["file"]), p), p["file"])
    return state


def _refuse_nonfinite(state: dict, url: str) -> None:
    bad = nonfinite_entries(state)
    if bad:
        raise CheckpointError(
            f"refusing to commit checkpoint {storage.redact(url)}: non-finite values in "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (the newest good checkpoint "
            f"is kept)")


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


__all__ = ["Checkpointer", "CheckpointError", "DamagedCheckpointError", "load_url", "step_dir_name",
           "FORMAT_VERSION"]
