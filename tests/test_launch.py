"""The workstation launch scripts: launch/train.sh, launch/render.sh, launch/tensorboard.sh.

They run here with NERF_DIST_NO_VENV=1 and this interpreter's bin folder first on PATH, so they
use the python under test instead of (re)building .venv. Multi-rank runs are real torchrun jobs
with 2 gloo ranks on the CPU (--cpu).
"""
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, TINY_MODEL, free_port, worker_pids
from nerf_dist import lifecycle
from nerf_dist.checkpoint import Checkpointer
from nerf_dist.cli import main

SCRIPTS = ("train.sh", "render.sh", "tensorboard.sh")


def _env(**extra) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "NERF_DIST_NO_VENV": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _script(name: str, *args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "launch" / name), *map(str, args)],
                          capture_output=True, text=True, env=_env(**env), timeout=timeout,
                          cwd=str(REPO))


def _train_args(scene, run, *extra):
    return [f"data.root={scene}", f"run.dir={run}", "train.rays_per_batch=256",
            "log.progress=false", "train.threads=1", *TINY_MODEL, *extra]


def _wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, agent: int | None) -> None:
    """Never leave a run behind when a test fails half-way (the agent has its own group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # forwarded to the agent, which stops its ranks
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if agent:
        try:
            os.killpg(agent, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ----------------------------------------------------------------------------- help and usage

@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_usage_options_examples_and_exit_codes(name):
    t0 = time.time()
    # NOTE: --help needs no python and no venv: an empty PATH besides the shell's basics.
    res = subprocess.run(["bash", str(REPO / "launch" / name), "--help"], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    for section in ("usage: launch/" + name, "options:", "examples:", "exit codes:"):
        assert section in res.stdout, section
    assert time.time() - t0 < 10
    bad = subprocess.run(["bash", str(REPO / "launch" / name), "--no-such-option"],
                         capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    if name != "render.sh":  # render.sh passes unknown options on to `nerf-dist render`
        assert bad.returncode == 2 and "--no-such-option" in bad.stderr, bad.stderr


@pytest.mark.parametrize("args,needle", [(["--nproc", "0"], "--nproc"),
                                         (["--max-restarts", "x"], "--max-restarts"),
                                         (["notakeyvalue"], "notakeyvalue")])
def test_train_usage_errors_exit_2(args, needle):
    res = _script("train.sh", *args, timeout=30)
    assert res.returncode == 2 and needle in res.stderr, res.stderr


# ----------------------------------------------------------------------------- train.sh

@pytest.fixture(scope="module")
def train_sh_run(demo_scene, tmp_path_factory):
    """(result, run folder) of `launch/train.sh --nproc 2 --cpu --config FILE overrides`."""
    tmp = tmp_path_factory.mktemp("train_sh")
    run = tmp / "run"
    # the file sets 4 steps; the override after it wins (config + overrides passed through)
    cfg = tmp / "tiny.yaml"
    cfg.write_text("train:\n  steps: 4\ncheckpoint:\n  every: 3\n")
    res = _script("train.sh", "--nproc", "2", "--cpu", "--config", cfg,
                  *_train_args(demo_scene, run, "train.steps=6"))
    return res, run


@pytest.mark.slow
def test_train_two_cpu_ranks_finishes_with_checkpoints(train_sh_run):
    res, run = train_sh_run
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "2 CPU rank(s)" in res.stderr and "over 2 rank(s)" in res.stdout, out[-4000:]
    assert Checkpointer(str(run / "checkpoints"), keep=10, is_main=False).list() == [3, 6]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 6
    # printed by `nerf-dist status`, which train.sh runs after torchrun returns
    assert '"state": "finished"' in res.stdout


def test_train_bad_override_fails_before_starting_ranks(demo_scene, tmp_path):
    run = tmp_path / "run"
    res = _script("train.sh", "--nproc", "2", "--cpu",
                  *_train_args(demo_scene, run, "train.bogus_key=1"), timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "train.bogus_key" in res.stderr
    assert "torch.distributed" not in res.stderr and not run.exists()  # no rank ever started
    missing = _script("train.sh", "--config", tmp_path / "nope.yaml", timeout=30)
    assert missing.returncode == 1 and "nope.yaml" in missing.stderr


def _train_sh_interrupted(args, log: Path, act) -> int:
    """Run `launch/train.sh --nproc 2 --cpu ARGS` with its output in ``log``; after its first
    periodic checkpoint (step 5, long before train.steps) call ``act(torchrun agent's pid)``.
    Returns train.sh's exit code."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", str(REPO / "launch" / "train.sh"), "--nproc", "2", "--cpu",
                                 *args], stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                cwd=str(REPO), start_new_session=True)
    agent = None
    try:
        _wait_for(lambda: "agent pid" in log.read_text(), proc, log, "agent pid")
        agent = int(log.read_text().split("agent pid ")[1].split()[0])
        _wait_for(lambda: "checkpoint step 5 " in log.read_text(), proc, log, "a checkpoint")
        act(agent)
        return proc.wait(timeout=120)
    finally:
        _stop(proc, agent)


@pytest.mark.slow
def test_train_sigusr1_to_torchrun_agent_stops_with_checkpoint_exit_75(demo_scene, tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    args = _train_args(demo_scene, run, "train.steps=100000", "checkpoint.every=5")
    rc = _train_sh_interrupted(args, log, lambda agent: os.kill(agent, signal.SIGUSR1))
    text = log.read_text()
    assert rc == 75, text[-4000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and "SIGUSR1" in status["reason"], status
    stop_step = status["step"]
    assert 5 <= stop_step < 100000 and status["checkpoint_step"] == stop_step
    assert Checkpointer(str(run / "checkpoints"), keep=10, is_main=False).list()[-1] == stop_step


@pytest.mark.slow
def test_train_sigkill_of_rank_0_with_no_restarts_left_exits_1_with_status_died(demo_scene,
                                                                               tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    args = _train_args(demo_scene, run, "train.steps=100000", "checkpoint.every=5")
    pids = {}

    def kill_rank_0(_agent):
        pids.update(worker_pids(f"run.dir={run}"))
        os.kill(pids[0], signal.SIGKILL)
    rc = _train_sh_interrupted(["--max-restarts", "0", *args], log, kill_rank_0)
    text = log.read_text()
    assert rc == 1, text[-4000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "died" and status["writer"]["pid"] == pids[0], status
    assert '"state": "died"' in text               # printed by `nerf-dist status --ended`


# ----------------------------------------------------------------------------- render.sh

@pytest.mark.slow
def test_render_two_cpu_ranks_passes_options_through(train_sh_run, tmp_path):
    res, run = train_sh_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "frames"
    # --run (not --run-dir) must reach nerf-dist render as --run-dir under torchrun
    res = _script("render.sh", "--nproc", "2", "--cpu", "--run", run, "--path", "orbit",
                  "--frames", "2", "--resolution", "12x10", "--no-video", "--no-progress",
                  "--out", out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "on 2 rank(s)" in res.stdout
    assert sorted(p.name for p in (out / "rgb").iterdir()) == ["00000.png", "00001.png"]
    import imageio.v3 as iio
    assert iio.imread(out / "rgb" / "00000.png").shape[:2] == (10, 12)


# ----------------------------------------------------------------------------- tensorboard.sh

def _serve_until_runs(args, tmp_path, env=None, timeout=90) -> list:
    """Start tensorboard.sh, poll /data/runs until it lists a run; returns the list."""
    port = free_port()
    log = tmp_path / f"tb_{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", str(REPO / "launch" / "tensorboard.sh"), "--port",
                                 str(port), "--reload", "1", *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(**(env or {})),
                                cwd=str(REPO), start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                    runs = json.loads(r.read())
                if runs:
                    return runs
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"no runs served within {timeout} s:\n{log.read_text()[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _events(tmp_path) -> Path:
    """A run folder with one TensorBoard event file (as the trainer writes it) in RUN/tb."""
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text("log:\n  dir: ''\n")
    w = SummaryWriter(str(run / "tb"))
    w.add_scalar("train/loss", 0.5, 1)
    w.close()
    return run


def test_tensorboard_serves_a_run_folder(tmp_path):
    run = _events(tmp_path)
    assert _serve_until_runs([run], tmp_path) == ["."]  # RUN/tb itself, found from the run folder
    assert _script("tensorboard.sh", tmp_path / "missing", timeout=30).returncode == 1


def test_tensorboard_reads_an_s3_prefix(tmp_path, s3_server):
    import fsspec
    run = _events(tmp_path)
    prefix = f"{s3_server['bucket']}/launch-tb/lego"
    fsspec.filesystem("s3").put(str(run / "tb"), f"{prefix}/tb", recursive=True)
    runs = _serve_until_runs([f"s3://{prefix}"], tmp_path, env=s3_server["env"])
    assert runs == ["tb"]


# ----------------------------------------------------------------------------- setup_env.sh

_FAKE_PYTHON = """#!/usr/bin/env bash
# A venv python whose pip only writes down what it was asked, and whose torch is missing.
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then printf '%s\\n' "$*" >> "$FAKE_PIP_LOG"; exit 0; fi
if [ "$1" = "-c" ] && [ "$2" = "import torch" ]; then exit "${FAKE_TORCH_RC:-1}"; fi
exec {real} "$@"
"""


class _Index(http.server.BaseHTTPRequestHandler):
    """A wheel index that answers HEAD /torch/ (and records every request)."""
    seen: list = []

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self.seen.append(self.path)
        self.send_response(200 if self.path == "/torch/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_venv(tmp_path):
    """(run setup_env.sh with env overrides -> (result, pip calls, seconds), index URL)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(_FAKE_PYTHON.replace("{real}", sys.executable))
    (venv / "bin" / "python").chmod(0o755)
    tools = tmp_path / "tools"
    tools.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    _Index.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def run(cuda: bool, **env):
        # NOTE: a fake nvidia-smi decides "CUDA or not", whatever this machine has
        (tools / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if cuda else 1}\n")
        (tools / "nvidia-smi").chmod(0o755)
        log = tmp_path / "pip.log"
        log.unlink(missing_ok=True)
        (venv / ".nerf_dist_installed").unlink(missing_ok=True)
        t0 = time.monotonic()
        res = subprocess.run(["bash", str(REPO / "launch" / "setup_env.sh")], capture_output=True,
                             text=True, timeout=120, cwd=str(REPO),
                             env={**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
                                  "NERF_DIST_VENV": str(venv), "FAKE_PIP_LOG": str(log), **env})
        took = time.monotonic() - t0
        assert res.returncode == 0, res.stderr
        calls = log.read_text().splitlines() if log.exists() else []
        return res, calls, took

    try:
        yield run, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_setup_env_takes_torch_from_the_cpu_index_when_it_answers(fake_venv):
    run, index = fake_venv
    res, calls, _ = run(cuda=False, NERF_DIST_TORCH_CPU_INDEX=index)
    assert calls[0] == f"-m pip install -q --index-url {index} torch==2.13.0", calls
    assert calls[1].startswith("-m pip install -q -e ") and len(calls) == 2, calls
    assert _Index.seen == ["/torch/"] and "(CPU build) from" in res.stderr


def test_setup_env_falls_back_to_the_default_index_quickly(fake_venv, tmp_path):
    """An index host that accepts connections and never answers (the slowest way to be
    unreachable): the probe gives up after NERF_DIST_PROBE_TIMEOUT_S and pip gets no index."""
    run, _ = fake_venv
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)                       # NOTE: never accepted: the request hangs
        probe_s = 2
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}/whl/cpu"
        res, calls, took = run(cuda=False, NERF_DIST_TORCH_CPU_INDEX=url,
                               NERF_DIST_PROBE_TIMEOUT_S=str(probe_s))
    # for comparison, the same script when the index answers at once
    _, _, took_answered = run(cuda=False, NERF_DIST_TORCH_CPU_INDEX=fake_venv[1])
    print(f"\n[setup_env] stalled index: {took:.1f} s with a {probe_s} s probe; an index that "
          f"answers: {took_answered:.1f} s")
    assert calls[0] == "-m pip install -q torch==2.13.0", calls      # the default index
    assert "did not answer within 2 s" in res.stderr, res.stderr
    # orderings, not a bound: the stalled probe waited for its timeout, then went on
    assert took >= probe_s and took_answered < took, (took, took_answered)


def test_setup_env_with_cuda_or_torch_does_not_probe(fake_venv):
    run, index = fake_venv
    _, calls, _ = run(cuda=True, NERF_DIST_TORCH_CPU_INDEX=index)
    assert calls[0] == "-m pip install -q torch==2.13.0" and _Index.seen == [], calls
    _, calls, _ = run(cuda=False, NERF_DIST_TORCH_CPU_INDEX=index, FAKE_TORCH_RC="0")
    assert len(calls) == 1 and " -e " in calls[0] and _Index.seen == [], calls  # torch kept
    assert "torch==2.13.0" in (REPO / "launch" / "setup_env.sh").read_text()      # the CI pin


# ----------------------------------------------------------------------------- status.json

def _remote_running(run_dir, beat_age_s):
    """A "running" status written by a process on another machine, last heartbeat beat_age_s ago."""
    lifecycle.write_status(str(run_dir), "finished", 4, 0, "", None)   # any doc, then made remote
    doc = lifecycle.read_status(str(run_dir))
    doc.update(state="running", exit_code=None, heartbeat=time.time() - beat_age_s,
               writer={**doc["writer"], "host": "some-other-node", "pid": 1})
    (run_dir / "status.json").write_text(json.dumps(doc))
    return doc


def test_status_judges_a_running_status_by_its_writer(tmp_path):
    run = tmp_path / "run"
    lifecycle.write_status(str(run), "running", 3, None, "", None)   # this process: alive
    assert main(["status", "--run-dir", str(run)]) == 1
    assert lifecycle.read_status(str(run))["state"] == "running"
    # on another machine: judged by the heartbeat
    _remote_running(run, beat_age_s=10)
    assert main(["status", "--run-dir", str(run)]) == 1
    assert lifecycle.read_status(str(run))["state"] == "running"
    _remote_running(run, beat_age_s=lifecycle.STALE_AFTER_S + 60)
    assert main(["status", "--run-dir", str(run)]) == 1
    doc = lifecycle.read_status(str(run))
    assert doc["state"] == "died" and "no heartbeat from some-other-node" in doc["reason"], doc
    # --ended: the launcher knows every rank has exited, heartbeat or not
    _remote_running(run, beat_age_s=1)
    assert main(["status", "--ended", "--run-dir", str(run)]) == 1
    doc = lifecycle.read_status(str(run))
    assert doc["state"] == "died" and "every process of the run has exited" in doc["reason"]
    lifecycle.write_status(str(run), "stopped", 5, 75, "stopped by SIGUSR1", 5)
    assert main(["status", "--ended", "--run-dir", str(run)]) == 75     # final states stay
    assert lifecycle.read_status(str(run))["state"] == "stopped"


def test_running_status_heartbeat_stops_at_the_final_status(tmp_path, monkeypatch):
    monkeypatch.setattr(lifecycle, "HEARTBEAT_S", 0.2)
    lifecycle.write_status(str(tmp_path), "running", 0, None, "", None)
    first = lifecycle.read_status(str(tmp_path))["heartbeat"]
    time.sleep(1.0)
    assert lifecycle.read_status(str(tmp_path))["heartbeat"] > first       # refreshed
    lifecycle.write_status(str(tmp_path), "finished", 9, 0, "train.steps reached", 9)
    time.sleep(1.0)
    assert lifecycle.read_status(str(tmp_path))["state"] == "finished"   # never put back
    # a status judged "died" is not recorded over one that changed meanwhile (a restarted rank 0)
    seen = _remote_running(tmp_path, beat_age_s=lifecycle.STALE_AFTER_S + 60)
    died = lifecycle.resolve_status(seen)
    lifecycle.write_status(str(tmp_path), "running", 9, None, "", 9)
    assert died["state"] == "died" and not lifecycle.record_died(str(tmp_path), seen, died)
    assert lifecycle.read_status(str(tmp_path))["state"] == "running"
    lifecycle.write_status(str(tmp_path), "finished", 9, 0, "", 9)      # stop that heartbeat
