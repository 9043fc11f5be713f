"""A training job's life cycle: stop signals agreed by all ranks, exit 75, status.json, stalls.

Multi-rank behaviour runs under real torchrun (2 gloo ranks on CPU).
"""
import io
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import REPO, TINY_MODEL, nerf_dist_cmd, wait_for_text, worker_pids
from nerf_dist.checkpoint import Checkpointer
from nerf_dist.cli import main
from nerf_dist.lifecycle import (EXIT_RESUME, StallWatchdog, StopSignals, read_status,
                                 write_status)

STEPS = 40


def _args(scene, run, *extra):
    return ["train", f"data.root={scene}", f"run.dir={run}", "train.rays_per_batch=256",
            "log.every=1", "log.progress=false", "train.threads=1", f"train.steps={STEPS}",
            "train.resume=auto", *TINY_MODEL, *extra]


def _start(args, log, nproc=2):
    out = open(log, "w")
    proc = subprocess.Popen(nerf_dist_cmd(args, nproc), stdout=out, stderr=subprocess.STDOUT,
                            cwd=str(REPO), start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    out.close()
    return proc


def _finish(proc, timeout=240):
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        marker = next(a for a in proc.args if a.startswith("run.dir="))
        for pid in worker_pids(marker).values():  # left-over workers (own sessions)
            os.kill(pid, signal.SIGKILL)


def _model(run, step=None):
    loaded = Checkpointer(str(run / "checkpoints"), keep=10, is_main=False).load(step)
    assert loaded is not None, run
    return loaded[0], loaded[1]["model"]


@pytest.fixture(scope="module")
def reference_two_ranks(demo_scene, tmp_path_factory):
    """An uninterrupted 2-rank run of STEPS steps (the trajectory every stopped run must match)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    log = run.parent / "log.txt"
    proc = _start(_args(demo_scene, run, "checkpoint.every=1000"), log)
    assert _finish(proc) == 0, log.read_text()[-3000:]
    step, params = _model(run)
    assert step == STEPS
    return params


@pytest.mark.slow
def test_usr1_on_one_rank_stops_every_rank_at_one_step_and_resume_is_bit_identical(
        demo_scene, tmp_path, reference_two_ranks):
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    # NOTE: checkpoint.every=5 only tells the test when training is under way; the stop
    # checkpoint itself must come from the signal.
    proc = _start(_args(demo_scene, run, "checkpoint.every=5"), log)
    wait_for_text(log, "checkpoint step 10 ", proc)
    pids = worker_pids(f"run.dir={run}")
    assert sorted(pids) == [0, 1], pids
    t_signal = time.time()
    os.kill(pids[1], signal.SIGUSR1)          # rank 1 only: rank 0 must learn it by all-reduce
    rc = _finish(proc)
    text = log.read_text()
    assert rc != 0, text[-3000:]               # torchrun reports the workers' exit 75 as a failure
    assert "stopped by a signal on another rank at step" in text, text[-3000:]
    status = read_status(str(run))
    assert status["state"] == "stopped" and status["exit_code"] == EXIT_RESUME, status
    stop_step = status["step"]
    assert 10 <= stop_step < STEPS and status["checkpoint_step"] == stop_step
    step, _ = _model(run)
    assert step == stop_step                   # the newest checkpoint is the stop step's
    print(f"\nSIGUSR1 -> stopped at step {stop_step}, checkpoint committed, exit in "
          f"{time.time() - t_signal:.1f} s")
    # `nerf-dist status` turns the status into the exit code scripts requeue on
    assert main(["status", "--run-dir", str(run)]) == EXIT_RESUME
    # resume on 2 ranks: same trajectory, bit for bit
    proc = _start(_args(demo_scene, run, "checkpoint.every=1000"), tmp_path / "log2.txt")
    assert _finish(proc) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    assert f"resumed from step {stop_step}" in (tmp_path / "log2.txt").read_text()
    step, params = _model(run)
    assert step == STEPS
    for k, v in reference_two_ranks.items():
        assert torch.equal(v, params[k]), k
    assert main(["status", "--run-dir", str(run)]) == 0


def test_sigterm_single_process_exits_75_and_a_second_signal_harms_nothing(demo_scene, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    proc = _start(_args(demo_scene, run, "checkpoint.every=5"), log, nproc=1)
    wait_for_text(log, "checkpoint step 5 ", proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)           # a second signal while it stops and saves
    for _ in range(20):                        # ... and more while it exits (torchrun, SLURM)
        time.sleep(0.02)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == EXIT_RESUME, log.read_text()[-3000:]
    status = read_status(str(run))
    assert status["state"] == "stopped" and "SIGTERM" in status["reason"]
    steps = Checkpointer(str(run / "checkpoints"), keep=10, is_main=False).list()
    assert steps[-1] == status["step"]
    assert _model(run)[0] == status["step"]    # committed and verified (sha256 of its marker)


def test_status_command_exit_codes(tmp_path, capsys):
    assert main(["status", "--run-dir", str(tmp_path)]) == 1
    assert "no readable status.json" in capsys.readouterr().out
    for state, code in (("finished", 0), ("stopped", 75), ("failed", 1), ("running", 1)):
        write_status(str(tmp_path), state, 7, None, "", None)
        assert main(["status", "--run-dir", str(tmp_path)]) == code
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run:\n  dir: {tmp_path}\n")
    assert main(["status", "--config", str(cfg)]) == 1
    assert main(["status", "--config", str(cfg), "run.dir=" + str(tmp_path / "x")]) == 1


def test_stop_signals_only_record_and_restore():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested == "SIGUSR1" and stop.count == 2
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_watchdog_names_what_it_waits_for():
    buf = io.StringIO()
    dog = StallWatchdog(rank=3, warn_s=0.5, timeout_s=42, stream=buf)
    try:
        with dog.waiting("the gradient all-reduce of step 7"):
            time.sleep(1.6)
        with dog.waiting("something quick"):
            pass
        time.sleep(1.2)
    finally:
        dog.close()
    text = buf.getvalue()
    assert "[rank 3] still waiting after" in text and "all-reduce of step 7" in text
    assert "dist.timeout_s=42" in text and "something quick" not in text


class _Lines:
    """A stream that keeps each printed line with the time it arrived."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []

    def write(self, text):
        if text.strip():
            self.lines.append((time.monotonic(), text))

    def flush(self):
        pass

    def about(self, what: str) -> list[float]:
        return [t for t, line in self.lines if f"for {what} (" in line]


def test_watchdog_waits_nest():
    """An inner wait is named while it lasts, with deadlines from its own start; then the outer
    is named again, keeping its own start, and a deadline it passed meanwhile gives one line."""
    out = _Lines()
    dog = StallWatchdog(rank=0, warn_s=0.25, stream=out, poll_s=0.02)
    try:
        with dog.waiting("outer"):
            t_outer = time.monotonic()
            time.sleep(0.35)  # outer warned once (at 0.25 s); its next deadline is 0.5 s
            assert len(out.about("outer")) == 1 and dog.current == "outer"
            with dog.waiting("inner"):
                t_inner = time.monotonic()
                assert dog.current == "inner"
                time.sleep(0.7)  # inner warned at 0.25 s and 0.5 s of ITS wait; outer passes 0.5 and 1.0 s
            t_back = time.monotonic()
            assert dog.current == "outer"
            time.sleep(0.15)
        assert dog.current is None
        time.sleep(0.3)
    finally:
        dog.close()
    inner, outer = out.about("inner"), out.about("outer")
    assert len(inner) == 2 and inner[0] - t_inner >= 0.25 and inner[1] - t_inner >= 0.5
    # nothing named the outer while the inner ran; then exactly one line for it (the deadlines
    # it passed meanwhile), and none after it ended
    assert outer[0] - t_outer >= 0.25 and len(outer) == 2 and outer[1] >= t_back
    (line,) = [line for t, line in out.lines if t == outer[1]]
    assert int(line.split("after ")[1].split(" s")[0]) >= 1  # the outer's whole wait, not the inner's
    # a wait that ends out of order removes itself, not the other
    a, b = dog.waiting("a"), dog.waiting("b")
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert dog.current == "b"
    b.__exit__(None, None, None)
    assert dog.current is None
