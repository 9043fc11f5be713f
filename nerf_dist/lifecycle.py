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
import sys
import threading
import time

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESUME = 75
EXIT_INTERRUPTED = 130

STATUS_FILE = "status.json"
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class TrainingStopped(Exception):
    """Training stopped on a signal at a step boundary, after its checkpoint was committed."""


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

    def waiting(self, what: str) -> "_Wait":
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


def write_status(run_dir: str, state: str, step: int, exit_code: int | None, reason: str,
                 checkpoint_step: int | None) -> None:
    """Write RUN_DIR/status.json atomically (rank 0 only; run.dir is local)."""
    os.makedirs(run_dir, exist_ok=True)
    doc = {"state": state, "step": int(step), "exit_code": exit_code, "reason": reason,
           "checkpoint_step": checkpoint_step,
           "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path = os.path.join(run_dir, STATUS_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_status(run_dir: str) -> dict | None:
    """The parsed RUN_DIR/status.json, or None when missing or unreadable."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def status_exit_code(doc: dict | None) -> int:
    """0 finished, 75 stopped (resume me), 1 anything else (failed, running, missing)."""
    if not doc:
        return EXIT_ERROR
    return {"finished": EXIT_OK, "stopped": EXIT_RESUME}.get(doc.get("state"), EXIT_ERROR)


__all__ = ["StopSignals", "StallWatchdog", "TrainingStopped", "NonFiniteError", "write_status",
           "read_status", "status_exit_code", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE",
           "EXIT_RESUME", "EXIT_INTERRUPTED", "STATUS_FILE"]
