"""How often does plain `torchrun --max-restarts=1` restart a training group that lost a rank?

Runs the README's command line N times (torchrun --standalone, 2 CPU ranks, tiny model, nothing
set in the environment: TORCH_DISABLE_SHARE_RDZV_TCP_STORE is removed from it unless --env sets
it), SIGKILLs one rank after the first checkpoint, and counts the runs whose restarted group
resumed and finished (torchrun exit 0). A restart that fails to connect or hangs in init
(pytorch#135712) counts as a failure. Prints each run and then "restarts that worked: K/N".

    PYTHONPATH=$PWD python bench/restart_loop.py --runs 10
    PYTHONPATH=/path/to/other/checkout python bench/restart_loop.py --runs 10   # another version
    python bench/restart_loop.py --runs 10 --env TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

The workers run the nerf_dist that this script imports (PYTHONPATH or the installed one).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nerf_dist
from nerf_dist.scenes.demo import write_demo_scene

# NOTE: the tests' tiny model and worker lookup, so the bench measures what test_elastic runs
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_MODEL, worker_pids  # noqa: E402

EVERY = 50


def kill_all(marker: str) -> None:
    """SIGKILL, by pid, whatever this run started that still lives (agent and workers)."""
    res = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    for pid in res.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def one_run(i: int, work: Path, data: list[str], args, env: dict) -> tuple[bool, str]:
    """(restart worked, one line saying what happened)."""
    run = work / f"run{i}"
    log = work / f"run{i}.log"
    marker = f"run.dir={run}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "--max-restarts=1", "-m", "nerf_dist", "train",
           *data, marker, "train.rays_per_batch=256", "log.every=50", "log.progress=false",
           f"checkpoint.every={EVERY}", "train.threads=1", f"train.steps={args.steps}",
           "train.resume=auto", *TINY_MODEL]
    t0 = time.monotonic()
    # NOTE: cwd=work: with `-m`, the workers' sys.path starts with their cwd, which would
    # otherwise put a checkout's nerf_dist ahead of PYTHONPATH's
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(work),
                                start_new_session=True)
    try:
        deadline = t0 + args.timeout
        while f"checkpoint step {EVERY} " not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                return False, f"never reached checkpoint step {EVERY} (exit {proc.poll()}): " \
                              "not a restart failure, see " + str(log)
            time.sleep(0.05)
        pids = worker_pids(marker)
        os.kill(pids[args.kill_rank], signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
    finally:
        kill_all(marker)
    text = log.read_text()
    took = time.monotonic() - t_kill
    if rc == 0 and "resumed from step" in text and f"done: step {args.steps}" in text:
        return True, f"restarted, resumed and finished ({took:.1f} s after the kill)"
    lines = text.splitlines()
    why = next((ln.strip() for needle in ("connectFullMesh", "Connection refused", "Timed out")
                for ln in lines if needle in ln), "no restart error line")
    return False, (f"hung: still running {took:.0f} s after the kill" if rc is None
                   else f"torchrun exit {rc}") + f"; {why[:200]} (log {log})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="restart loops (default 10)")
    ap.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--steps", type=int, default=400, help="train.steps (default 400)")
    ap.add_argument("--kill-rank", type=int, default=0, help="rank to SIGKILL (default 0)")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per run (default 240)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in the runs' environment (repeatable)")
    ap.add_argument("--keep", help="folder for the runs and logs (default: a temporary one)")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}
    # NOTE: the workers import the nerf_dist this script imported
    pkg = str(Path(nerf_dist.__file__).resolve().parents[1])
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(dict.fromkeys(
                    [pkg, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]))})
    env.update(kv.split("=", 1) for kv in args.env)
    work = Path(args.keep or tempfile.mkdtemp(prefix="restart_loop_"))
    work.mkdir(parents=True, exist_ok=True)
    write_demo_scene(str(work / "scene"), resolution=32, views=20, seed=0)
    data = [f"data.root={work / 'scene'}", f"data.cache_dir={work / 'rays'}"]
    print(f"[restart_loop] {args.runs} run(s) of torchrun --standalone --nproc_per_node="
          f"{args.nproc} --max-restarts=1, SIGKILL of rank {args.kill_rank} after checkpoint "
          f"step {EVERY}; TORCH_DISABLE_SHARE_RDZV_TCP_STORE="
          f"{env.get('TORCH_DISABLE_SHARE_RDZV_TCP_STORE', '(unset)')}; nerf_dist from {pkg}; "
          f"work {work}", flush=True)
    ok = 0
    for i in range(args.runs):
        good, what = one_run(i, work, data, args, env)
        ok += good
        print(f"[restart_loop] run {i + 1}/{args.runs}: {'ok ' if good else 'FAIL'} {what}",
              flush=True)
    print(f"restarts that worked: {ok}/{args.runs}", flush=True)
    return 0 if ok == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
