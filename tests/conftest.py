"""Shared pytest fixtures."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


# =============================================================================================
# S3 emulator (moto_server on 127.0.0.1) — self-contained; other fixtures go below this block.
# =============================================================================================

S3_BUCKET = "nerf-ckpt"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_fsspec_caches() -> None:
    """Forget cached filesystem instances, so the next one reads the current environment.

    NOTE: fsspec caches one instance per (class, options); an s3fs instance made before
    AWS_ENDPOINT_URL changed would keep talking to the old endpoint.
    """
    try:
        import fsspec
        from fsspec.spec import AbstractFileSystem
    except ImportError:
        return
    AbstractFileSystem.clear_instance_cache()
    for proto in ("s3", "s3a", "memory"):
        try:
            fsspec.get_filesystem_class(proto).clear_instance_cache()
        except (ImportError, ValueError):
            pass


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate a server process; kill it if it has not exited after grace_s."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for_http(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {url} within {timeout_s:.0f} s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API on 127.0.0.1 (moto_server) with bucket ``nerf-ckpt``.

    Sets AWS_* variables in os.environ for the session (restored at teardown) and yields
    ``{'endpoint': 'http://127.0.0.1:PORT', 'bucket': 'nerf-ckpt', 'env': {...}}``; pass
    ``env`` to child processes. Use a unique key prefix per test.
    """
    try:
        import boto3
        import moto.server  # noqa: F401 - the S3 emulator, run as `python -m moto.server`
        import s3fs  # noqa: F401 - fsspec's s3:// backend
    except ImportError as e:
        # NOTE: CI sets NERF_DIST_REQUIRE_S3=1 so the object-store tests can never be skipped there.
        if os.environ.get("NERF_DIST_REQUIRE_S3"):
            raise
        pytest.skip(f"S3 tests need moto[server], boto3 and s3fs (pip install -e .[test]): {e}")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        _wait_for_http(endpoint + "/", proc)
        os.environ.update(env)
        clear_fsspec_caches()
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
        yield {"endpoint": endpoint, "bucket": S3_BUCKET, "env": dict(env)}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_fsspec_caches()
        stop_process(proc)


@pytest.fixture
def s3_unreachable(monkeypatch):
    """Point S3 at a closed port on 127.0.0.1 with one attempt and short timeouts; yields the endpoint."""
    pytest.importorskip("s3fs")
    endpoint = f"http://127.0.0.1:{free_port()}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                 "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
                 "AWS_RETRY_MODE": "standard"}.items():
        monkeypatch.setenv(k, v)
    clear_fsspec_caches()
    from nerf_dist import storage
    # NOTE: a refused connection is retried (transient): one quick retry keeps these tests fast.
    storage.configure(retries=1, backoff_s=0.1)
    try:
        yield endpoint
    finally:
        storage.configure()
        clear_fsspec_caches()


# ============================================================================ end S3 emulator


# =============================================================================================
# Tiny scenes and training runs shared by the end-to-end tests
# =============================================================================================

REPO = Path(__file__).resolve().parents[1]
LEGO = REPO.parent / "shared" / "data" / "lego"

# A tiny vanilla model: the pipeline is the paper's, only the sizes shrink so CPU tests are quick.
TINY_MODEL = ["model.depth=2", "model.width=32", "model.skip=0", "model.pos_freqs=4",
              "model.dir_freqs=2", "model.n_samples=16", "model.n_importance=16"]


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory) -> Path:
    """The project's procedural demo scene at 32x32 (Blender format, with ground-truth depth)."""
    from nerf_dist.scenes.demo import write_demo_scene
    root = tmp_path_factory.mktemp("demo") / "scene"
    write_demo_scene(str(root), resolution=32, views=20, seed=0)
    return root


def nerf_dist_cmd(args: list[str], nproc: int = 1) -> list[str]:
    """The command line of `nerf-dist ARGS`: this interpreter, under torchrun when nproc > 1."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), "-m", "nerf_dist", *args]
    return [sys.executable, "-m", "nerf_dist", *args]


def run_cli(args: list[str], env: dict | None = None, nproc: int = 1, timeout: float = 300):
    """Run `nerf-dist ARGS` in a subprocess (under torchrun when nproc > 1); returns the result.

    NOTE: for what needs a process of its own (several ranks, signals, a clean interpreter);
    argument and config errors are tested in-process with the ``cli`` fixture (seconds faster).
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    res = subprocess.run(nerf_dist_cmd(args, nproc), capture_output=True, text=True,
                         env=full_env, timeout=timeout, cwd=str(REPO))
    return res


def tiny_train_args(scene, run_dir, *extra) -> list[str]:
    """`nerf-dist train` arguments of a tiny CPU run of `scene` into `run_dir`: vanilla's tiny
    sizes unless `extra` names another model.kind (its keys are refused for other kinds)."""
    other_kind = any(a.startswith("model.kind=") and a != "model.kind=vanilla" for a in extra)
    return ["train", f"data.root={scene}", f"run.dir={run_dir}", "train.rays_per_batch=256",
            "log.every=5", "log.progress=false", "checkpoint.every=10", "train.threads=1",
            *([] if other_kind else TINY_MODEL), *extra]


def train_tiny(scene, run_dir, *extra, nproc: int = 1, env: dict | None = None):
    """Train a tiny run in a subprocess (torchrun when nproc > 1); fails the test unless it
    exits 0. Returns the CompletedProcess (stdout for "resumed from step N" and the like)."""
    res = run_cli(tiny_train_args(scene, run_dir, *extra), env=env, nproc=nproc)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def checkpoint_params(url: str, step: int | None = None) -> dict:
    """The model parameters of the checkpoint at `step` (default: the newest) under `url`."""
    from nerf_dist.checkpoint import Checkpointer
    loaded = Checkpointer(url, keep=10, is_main=False).load(step)
    assert loaded is not None, f"no checkpoint in {url}"
    return loaded[1]["model"]


@dataclasses.dataclass
class CliResult:
    """What `nerf-dist ARGS` did, named as in subprocess.CompletedProcess."""
    returncode: int
    stdout: str
    stderr: str


def cli_main(args: list) -> int:
    """`nerf-dist ARGS` in this process; returns the exit code the shell would see.

    argparse's SystemExit (usage errors: 2, --help/--version: 0) becomes the code. NOTE: what a
    command changes process-wide is put back, so later tests run as before: torch's thread
    count (train.threads, --threads) and the SIGTERM/SIGUSR1 handlers (train, render).
    """
    import torch

    from nerf_dist.cli import main
    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> CliResult``: `nerf-dist ARGS` in this process, its output captured."""
    def run(*args) -> CliResult:
        capsys.readouterr()
        code = cli_main(list(args))
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)
    return run


@pytest.fixture(scope="session")
def tiny_run(demo_scene, tmp_path_factory) -> Path:
    """A finished 10-step tiny run of the demo scene (checkpoint at step 10), trained in this
    process. Shared by the session: copy it before anything writes into it."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    assert cli_main(tiny_train_args(demo_scene, run, "train.steps=10")) == 0
    return run


def export_cli(what: str, run, *extra, nproc: int = 1, out=None) -> int:
    """`nerf-dist export WHAT RUN --no-progress [--out OUT] EXTRA`: in this process (its exit
    code) or under torchrun with nproc ranks (fails the test unless it exits 0)."""
    args = ["export", what, str(run), "--no-progress", *map(str, extra)]
    if out is not None:
        args += ["--out", str(out)]
    if nproc == 1:
        return cli_main(args)
    res = run_cli(args, nproc=nproc)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return 0


QUICK_FAST = ["model.kind=fast", "model.hash_levels=8", "model.hash_log2_size=12",
              "model.hash_max_res=64", "model.hidden=16", "model.grid_res=32",
              "model.march_steps=48", "model.max_samples=32", "train.rays_per_batch=1024",
              "train.lr=2e-2", "train.steps=120", "checkpoint.every=120", "eval.every=0"]
"""A small fast model trained 120 steps on the 32x32 demo scene (about 20 s on one core): a
trained model for the exports' F-score floors."""


@pytest.fixture(scope="session")
def quick_fast_run(demo_scene, tmp_path_factory) -> Path:
    """A finished QUICK_FAST run of the demo scene, shared by the session (do not write in it)."""
    run = tmp_path_factory.mktemp("quick_fast") / "run"
    args = tiny_train_args(demo_scene, run)
    args = [a for a in args if not a.startswith(("model.", "train.rays_per_batch", "checkpoint."))]
    assert cli_main([*args, *QUICK_FAST]) == 0
    return run


# =============================================================================================
# Worker processes of a torchrun job (for signal and kill tests)
# =============================================================================================

def worker_pids(marker: str) -> dict[int, int]:
    """{RANK: pid} of the torchrun worker processes whose command line contains ``marker``.

    Workers are told apart from the torchrun agent by the RANK variable torchrun sets for them.
    """
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if marker not in cmd or "torch.distributed.run" in cmd or "torchrun" in cmd:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            found[int(env[b"RANK"])] = int(entry)
    return found


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the file at ``path`` contains ``text`` (fails if ``proc`` exits first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n{content[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in {path} within {timeout} s")


# =============================================================================================
# A single-node SLURM cluster (slurmctld + slurmd on 127.0.0.1) — self-contained block
# =============================================================================================

SLURM_UP = REPO / ".ci" / "slurm_up.sh"


def _slurm_problem() -> str | None:
    """None when a SLURM controller answers and a node can take jobs; otherwise why not."""
    import shutil
    for exe in ("sbatch", "scontrol", "sinfo", "scancel"):
        if shutil.which(exe) is None:
            return f"`{exe}` not found (SLURM is not installed here)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        if "UP" not in ping.stdout:
            said = (ping.stdout + ping.stderr).strip().splitlines()
            return f"no slurmctld answers `scontrol ping` ({said[0] if said else 'no output'})"
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired as e:
        return f"`{' '.join(e.cmd)}` did not answer within {e.timeout:.0f} s"
    ok = [line for line in info.stdout.split()
          if line.rstrip("*~#$@+").lower() in ("idle", "mixed", "allocated", "completing")]
    if not ok:
        return f"no node can take jobs (sinfo says: {info.stdout.strip() or info.stderr.strip()!r})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """A working SLURM cluster, or a skip saying why (a failure where CI requires one).

    CI (.ci/run) sets NERF_DIST_REQUIRE_SLURM=1 and starts the cluster with .ci/slurm_up.sh; when
    it is still not up and this runs as root, the fixture runs that script once more. Returns
    ``{'cpus': CPUs of the first node}``.
    """
    required = bool(os.environ.get("NERF_DIST_REQUIRE_SLURM"))
    problem = _slurm_problem()
    if problem and required and os.geteuid() == 0:
        res = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=900)
        problem = _slurm_problem()
        if problem:
            problem += f"\n{SLURM_UP} exited {res.returncode}:\n{res.stderr[-3000:]}"
    if problem:
        if required:
            pytest.fail(f"NERF_DIST_REQUIRE_SLURM is set but there is no usable SLURM cluster: "
                        f"{problem}")
        pytest.skip(f"no SLURM cluster: {problem}; start one with `bash .ci/slurm_up.sh` "
                    f"(as root, Debian)")
    info = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True)
    cpus = int((info.stdout.split() or ["1"])[0])
    return {"cpus": cpus}


# ============================================================================ end SLURM cluster
