"""A training job's life cycle: stop signals, stall warnings, the run's status file, exit codes.

A signal (SIGTERM from torchrun or SLURM, SIGUSR1 from SLURM's ``--signal``) only sets a flag
(:class:`StopSignals`); the trainer all-reduces that flag at every step boundary so all ranks stop
at the same step, write the checkpoint there and exit with :data:`EXIT_RESUME`. Nothing expensive
or collective ever runs inside a signal handler, so a second signal during the save changes
nothing.

Exit codes of ``nerf-dist train`` (also in the README):

- 0 finished (``train.steps`` reached, or ``train.max_seconds`` spent)
- 1 error (bad config or data, unreachable storage, a non-finite loss, a dead peer rank, ...)
- 2 usage error
- 75 stopped at a step boundary by SIGTERM/SIGUSR1 with a checkpoint written: resume to continue
  (``EX_TEMPFAIL`` of sysexits.h; SLURM scripts requeue on it)
- 130 interrupted by Ctrl-C (SIGINT)
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
import threading
import time

from . import storage

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESUME = 75
EXIT_INTERRUPTED = 130

STATUS_FILE = "status.json"
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient stopped training (the message names step and checkpoint)."""


class StopSignals:
    """Installs handlers for SIGTERM and SIGUSR1 that only record the signal.

    ``requested`` is the name of the first signal received (None before). ``restore()`` puts the
    previous handlers back. Outside the main thread nothing is installed (signals are only
    delivered to the main thread).
    """

    def __init__(self, names: tuple[str, ...] = STOP_SIGNALS):
        self.requested: str | None = None
        self.received_at: float | None = None
        self.count = 0
        self._old: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, _frame) -> None:
        # NOTE: only assignments here: the handler may run in the middle of a collective or a
        # checkpoint write, which must finish undisturbed.
        self.count += 1
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            self.received_at = time.time()

    def ignore_further(self) -> None:
        """Ignore the stop signals from now on (the process is about to exit 75).

        NOTE: CPython puts SIG_DFL back for Python-level handlers while the interpreter shuts
        down, so a repeated SIGTERM/SIGUSR1 (torchrun, SLURM) in that last instant would kill
        the process and replace exit 75 with death by signal; an ignored signal stays ignored.
        """
        for sig in list(self._old):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (ValueError, TypeError):
                pass

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old = {}


class StallWatchdog:
    """Warns on stderr when this rank waits on one thing longer than ``warn_s`` seconds.

    Use ``with watchdog.waiting("the gradient all-reduce of step 12"):`` around anything that can
    block on a peer rank or on storage. A background thread checks once a second and prints one
    line at warn_s, 2 x warn_s, 4 x warn_s, ... naming the wait, the rank and the process-group
    timeout that will end it. ``warn_s <= 0`` disables it.

    Waits nest: an inner ``waiting`` (a shard read inside "the ray loader's batch of step 12")
    is the one named while it lasts; when it ends, the outer wait is named again, with its own
    start time and its own next deadline (a deadline passed meanwhile gives one line, not one
    per doubling missed).
    """

    def __init__(self, rank: int, warn_s: float, timeout_s: float | None = None, stream=None,
                 poll_s: float = 1.0):
        self.rank = rank
        self.warn_s = float(warn_s)
        self.timeout_s = timeout_s
        self.stream = stream or sys.stderr
        self.poll_s = float(poll_s)
        # NOTE: a stack, innermost last: [what, since (monotonic), next warning (s after since)].
        self._waits: list[list] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.warn_s > 0:
            self._thread = threading.Thread(target=self._run, name="nerf-dist-watchdog",
                                            daemon=True)
            self._thread.start()

    def waiting(self, what: str) -> _Wait:
        return _Wait(self, what)

    @property
    def current(self) -> str | None:
        """What this rank waits for now (the innermost wait), or None."""
        with self._lock:
            return self._waits[-1][0] if self._waits else None

    def _begin(self, what: str) -> list:
        frame = [what, time.monotonic(), self.warn_s]
        with self._lock:
            self._waits.append(frame)
        return frame

    def _end(self, frame: list) -> None:
        with self._lock:
            # NOTE: by identity, so a wait that ends out of order removes itself, not another.
            self._waits = [f for f in self._waits if f is not frame]

    def _due(self) -> tuple[str, float] | None:
        """(what, seconds waited) when the innermost wait has passed its next deadline."""
        with self._lock:
            if not self._waits:
                return None
            frame = self._waits[-1]
            what, since, nxt = frame
            waited = time.monotonic() - since
            if waited < nxt:
                return None
            while nxt <= waited:  # the next deadline after now: one line per check at most
                nxt *= 2
            frame[2] = nxt
            return what, waited

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            due = self._due()
            if due is not None:
                what, waited = due
                limit = (f"; the process group gives up after dist.timeout_s={self.timeout_s:g} s"
                         if self.timeout_s else "")
                print(f"[rank {self.rank}] still waiting after {waited:.0f} s for {what} (a peer "
                      f"rank may be frozen, dead or much slower, or storage may be stalled{limit})",
                      file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()


class _Wait:
    def __init__(self, dog: StallWatchdog, what: str):
        self.dog, self.what = dog, what
        self._frame: list | None = None

    def __enter__(self):
        self._frame = self.dog._begin(self.what)
        return self

    def __exit__(self, *exc):
        if self._frame is not None:
            self.dog._end(self._frame)
            self._frame = None
        return False


# NOTE: rank 0 may die without a word (SIGKILL, the out-of-memory killer, a lost node), leaving
# "running" in status.json for good. So a "running" status names its writer (pid, host, process
# start time) and carries a heartbeat that a thread refreshes every HEARTBEAT_S; readers that find
# the writer gone (same machine: that process no longer runs; elsewhere: no heartbeat for
# STALE_AFTER_S) report the run as "died" (`nerf-dist status` also records it in the file).
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0

_status_lock = threading.Lock()
_running_docs: dict[str, dict] = {}   # status path -> the "running" doc its heartbeat refreshes


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _proc_start(pid: int) -> str | None:
    """Start of process ``pid`` in clock ticks after boot (/proc/PID/stat field 22); None when it
    does not exist (or is a zombie) or there is no /proc."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()   # NOTE: the command name (field 2) may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _machine() -> dict:
    """What tells this machine and pid namespace apart (a pid means something only there)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"host": socket.gethostname(),
            "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _writer() -> dict:
    return {"pid": os.getpid(), "start": _proc_start(os.getpid()), **_machine()}


def _write_doc(path: str, doc: dict) -> None:
    # NOTE: atomic_write's temp names are unique per call: the heartbeat thread may write too.
    with storage.atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _heartbeat(path: str, doc: dict) -> None:
    """Refresh ``doc``'s heartbeat in ``path`` until another status replaces it in this process."""
    while True:
        time.sleep(HEARTBEAT_S)
        with _status_lock:
            if _running_docs.get(path) is not doc:
                return
            doc["heartbeat"] = time.time()
            try:
                _write_doc(path, doc)
            except OSError:
                pass   # NOTE: a full or stalled disk must not kill training; readers see it stale


def write_status(run_dir: str, state: str, step: int, exit_code: int | None, reason: str,
                 checkpoint_step: int | None) -> None:
    """Write RUN_DIR/status.json atomically (rank 0 only; run.dir is local).

    The doc names its writer (``writer``: pid, host, ...) and a ``heartbeat`` (epoch seconds).
    A "running" status is refreshed every HEARTBEAT_S by a daemon thread until the next status of
    this run from this process replaces it, so :func:`resolve_status` can tell a dead writer.
    """
    os.makedirs(run_dir, exist_ok=True)
    doc = {"state": state, "step": int(step), "exit_code": exit_code, "reason": reason,
           "checkpoint_step": checkpoint_step, "time": _now_iso(), "writer": _writer(),
           "heartbeat": time.time()}
    path = os.path.join(run_dir, STATUS_FILE)
    with _status_lock:
        # NOTE: under the lock, so a heartbeat can never put "running" back over a final state.
        _write_doc(path, doc)
        if state == "running":
            _running_docs[path] = doc
            threading.Thread(target=_heartbeat, args=(path, doc), daemon=True,
                             name="nerf-dist-status-heartbeat").start()
        else:
            _running_docs.pop(path, None)


def read_status(run_dir: str) -> dict | None:
    """The parsed RUN_DIR/status.json, or None when missing or unreadable."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _writer_gone(doc: dict, ended: bool, now: float) -> str | None:
    """Why the writer of a "running" ``doc`` is known to be gone, or None (alive or unknown)."""
    w = doc.get("writer")
    if ended:
        return "the launcher reports that every process of the run has exited"
    if not isinstance(w, dict) or "pid" not in w:
        return None   # a status from before writers were recorded: nothing to judge by
    here = _machine()
    if all(w.get(k) == here[k] for k in ("host", "boot_id", "pid_ns")):
        if w.get("start") is not None and here["boot_id"] is not None:
            alive = _proc_start(int(w["pid"])) == w["start"]
        else:
            try:
                os.kill(int(w["pid"]), 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        return None if alive else f"process {w['pid']} no longer runs on {w['host']}"
    beat = doc.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat > STALE_AFTER_S:
        return f"no heartbeat from {w.get('host')} for {now - beat:.0f} s"
    return None


def resolve_status(doc: dict | None, ended: bool = False, now: float | None = None) -> dict | None:
    """``doc``, or a "died" copy of it when it says "running" but its writer is gone.

    ``ended``: the caller knows every process of the run has exited (a launcher after torchrun
    returned), so "running" can only be a writer that died.
    """
    if not doc or doc.get("state") != "running":
        return doc
    why = _writer_gone(doc, ended, time.time() if now is None else now)
    if why is None:
        return doc
    w = doc.get("writer") or {}
    who = f"pid {w['pid']} on {w.get('host')}" if "pid" in w else "pid unknown"
    return {**doc, "state": "died", "exit_code": None, "time": _now_iso(),
            "reason": f"rank 0 ({who}) died without a final status: killed (SIGKILL, the "
                      f"out-of-memory killer) or its node was lost ({why}); it had been running "
                      f"since step {doc.get('step')} ({doc.get('time')}). Run again with "
                      f"train.resume=auto to resume from its newest checkpoint"}


def record_died(run_dir: str, seen: dict, died: dict) -> bool:
    """Replace status.json by ``died`` if it still holds ``seen`` (what was judged); True if so.

    NOTE: re-read first, so a writer that came back meanwhile (a restarted rank 0) keeps its
    "running"; the window between the two is a few microseconds, and its heartbeat restores it.
    """
    with _status_lock:
        if read_status(run_dir) != seen:
            return False
        try:
            _write_doc(os.path.join(run_dir, STATUS_FILE), died)
        except OSError:
            return False   # NOTE: a run folder this reader may not write: reported, not recorded
        return True


def status_exit_code(doc: dict | None) -> int:
    """0 finished, 75 stopped (resume me), 1 anything else (failed, died, running, missing)."""
    if not doc:
        return EXIT_ERROR
    return {"finished": EXIT_OK, "stopped": EXIT_RESUME}.get(doc.get("state"), EXIT_ERROR)


__all__ = ["StopSignals", "StallWatchdog", "NonFiniteError", "write_status",
           "read_status", "resolve_status", "record_died", "status_exit_code", "EXIT_OK",
           "EXIT_ERROR", "EXIT_USAGE", "EXIT_RESUME", "EXIT_INTERRUPTED", "STATUS_FILE"]
