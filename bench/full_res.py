"""The shared lego at its real size (70 views of 800x800, the NeRF paper's setting), fast kind at
the CPU sizes of configs/lego_fast_cpu.yaml: cache build, training and one 800x800 render on 1
and 2 ranks (issue 24).

    python bench/full_res.py [--steps 5] [--ranks 1,2] [--lego DIR] [--workdir DIR] [--keep]

For each world size N of --ranks, three commands in subprocesses (torchrun, gloo on CPU, when
N > 1), each timed and its peak RSS per rank polled from /proc (bench/scale_bench.py's
PeakWatcher):

    nerf-dist cache   a fresh cache of the 44.8M training pixels, built by N ranks
    nerf-dist train   --steps steps from that cache (no validation, one checkpoint at the end)
    nerf-dist render  the first val camera at 800x800 (--path val --frames 1), tiles over N ranks

Printed per world size: cache build time (the command's wall time, process start included),
s/step (rays_per_batch / the TensorBoard perf/rays_per_s of the logged steps after the first:
the first holds start-up work such as the first occupancy-grid update; the mean over all steps
when there is only one), peak RSS of each rank of each command, and render time (render.json's
seconds: the render loop, process start and checkpoint load excluded; the command's wall time
beside it). Other processes on the machine skew every figure. Asserts nothing but exit codes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from scale_bench import Cli, run_measured, train_speed

REPO = Path(__file__).resolve().parents[1]
LEGO = REPO.parent / "shared" / "data" / "lego"
CONFIG = REPO / "configs" / "lego_fast_cpu.yaml"
# NOTE: the config's own sizes (model, batch, learning rate); the run's folder, validation,
# checkpoints and logging are the bench's.
COMMON = ["data.downscale=1", "eval.every=0", "checkpoint.every=0", "log.progress=false",
          "train.resume=none", "train.max_seconds=0", "log.every=1"]


def _rss(res: dict) -> str:
    return "/".join(f"{r / 1024:.2f}" for r in res["rank_rss_mb"]) + " GiB"


def measure(cli: Cli, n: int, a, work: Path, log=print) -> dict:
    """Cache, train and render on n ranks; returns the figures (and prints them)."""
    base = [f"data.root={a.lego}", f"data.cache_dir={work / 'cache'}", f"run.dir={work / 'run'}",
            *COMMON]

    def run(name, args):
        res = run_measured(cli.cmd(args, ranks=n), cli.env, work / f"{name}.log", a.timeout)
        if res["rc"] != 0:
            raise SystemExit(f"{name} on {n} rank(s) failed (rc {res['rc']}): see "
                             f"{work / f'{name}.log'}\n"
                             + (work / f"{name}.log").read_text()[-3000:])
        return res

    cache = run("cache", ["cache", "--config", str(CONFIG), *base])
    train = run("train", ["train", "--config", str(CONFIG), *base, f"train.steps={a.steps}"])
    speed = train_speed(work / "run" / "tb")
    batch = int(next(line.split(":")[1] for line in CONFIG.read_text().splitlines()
                     if line.strip().startswith("rays_per_batch:")))
    s_step = batch / speed["rays_per_s"] if speed.get("rays_per_s") else None
    render = run("render", ["render", "--run-dir", str(work / "run"), "--path", "val",
                            "--frames", "1", "--no-video", "--no-progress",
                            "--out", str(work / "render")])
    meta = json.loads((work / "render" / "render.json").read_text())
    path = meta.get("camera_path", {})
    size = f"{path.get('width')}x{path.get('height')}"
    row = {"ranks": n, "cache_build_s": round(cache["wall_s"], 1),
           "cache_rss_gib": [round(r / 1024, 2) for r in cache["rank_rss_mb"]],
           "s_per_step": round(s_step, 2) if s_step else None, "steps": a.steps,
           "train_wall_s": round(train["wall_s"], 1),
           "train_rss_gib": [round(r / 1024, 2) for r in train["rank_rss_mb"]],
           "render_s": round(meta["last_run"]["seconds"], 1),
           "render_wall_s": round(render["wall_s"], 1),
           "render_rss_gib": [round(r / 1024, 2) for r in render["rank_rss_mb"]],
           "render_size": size}
    log(f"{n} rank(s): cache build {cache['wall_s']:.1f} s (peak RSS per rank {_rss(cache)}); "
        f"train {a.steps} steps: {row['s_per_step']} s/step, {train['wall_s']:.1f} s wall "
        f"(peak RSS per rank {_rss(train)}); render 1 val view {size}: {row['render_s']} s "
        f"({render['wall_s']:.1f} s wall, peak RSS per rank {_rss(render)})")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ranks", default="1,2", help="world sizes, comma separated")
    ap.add_argument("--lego", default=str(LEGO), help="the Blender lego folder")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--out", default=None, help="write the figures to this JSON file")
    a = ap.parse_args(argv)
    if not (Path(a.lego) / "transforms_train.json").exists():
        raise SystemExit(f"no Blender scene at {a.lego} (--lego DIR)")
    cli = Cli(REPO, sys.executable)
    root = Path(a.workdir or tempfile.mkdtemp(prefix="nerf_dist_full_res_"))
    print(f"lego 800x800 (fast kind, CPU sizes of {CONFIG.relative_to(REPO)}), {a.steps} steps, "
          f"code {cli.commit}, scratch {root}")
    rows = []
    try:
        for n in (int(x) for x in a.ranks.split(",")):
            work = root / f"{n}r"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            rows.append(measure(cli, n, a, work))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
