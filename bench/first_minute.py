"""The fast path's first minute on lego: seconds per step and held-out PSNR over time, A vs B.

    python bench/first_minute.py A B [--seconds 90] [--eval-at 15 30 60 90] [--extra k=v ...]
    python bench/first_minute.py cf17b9b HEAD --seconds 120
    python bench/first_minute.py HEAD HEAD --seconds 300 --extra-b model.density_bias_init=-2

A and B are each a checkout folder or a commit of this repository (a commit is checked out with
`git worktree add --detach` into a temporary folder, removed at the end). Both sides run *this*
script's `run` mode with cwd and PYTHONPATH set to their own checkout (so each imports its own
nerf_dist), one thread each, started together (they share the machine), with the sizes of this
checkout's configs/lego_fast_cpu.yaml; a key a side does not know is dropped for it, with a note.
Each side first builds its pixel cache alone (not timed).

Per side it prints, for each window of steps, the training seconds at its end, the mean seconds
per step (the grid update included), samples per ray and occupied fraction, and the val PSNR
(2 views, the renderer, evaluation time excluded) at each --eval-at second; then both curves side
by side. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import LEGO, REPO, Side, known_keys, resolve  # noqa: E402,F401
from cpu_sizes import lego_fast_cpu, overrides  # noqa: E402


def run(seconds: float, eval_at: list[float], extra: list[str], out: Path) -> None:
    """In-process training (imports the nerf_dist of PYTHONPATH); writes a JSON record to out."""
    import torch

    from nerf_dist.config import load_config
    from nerf_dist.dist import DistInfo
    from nerf_dist.evaluation import render_views
    from nerf_dist.metrics import psnr
    from nerf_dist.renderer.core import RenderSetup
    from nerf_dist.scenes import load_scene
    from nerf_dist.train import Trainer

    cfg = load_config(None, ["log.progress=false", "checkpoint.every=0", "train.steps=1000000",
                             *extra])
    trainer = Trainer(cfg, DistInfo(device=torch.device("cpu")))
    val = load_scene(cfg.data, "val")
    views = [0, val.n // 2]
    steps, curve, train_s, todo = [], [], 0.0, sorted(eval_at)
    while train_s < seconds:
        t0 = time.perf_counter()
        r = trainer.train_step()
        dt = time.perf_counter() - t0
        train_s += dt
        steps.append((round(train_s, 3), round(dt, 4), round(r["samples_per_ray"], 1),
                      round(trainer.model.log_scalars().get("occupied_frac", 1.0), 4)))
        while todo and train_s >= todo[0]:
            todo.pop(0)
            setup = RenderSetup.from_scene(trainer.model, val, cfg.model.chunk, torch.device("cpu"))
            p = sum(psnr(o["rgb"], val.images[i]) for i, o in render_views(setup, val, views)) / 2
            trainer.model.train()
            curve.append((round(train_s, 1), trainer.step, round(p, 2)))
    trainer.close()
    out.write_text(json.dumps({"steps": steps, "curve": curve}))


def windows(steps: list, edges: list[int]) -> list[tuple]:
    """(last step, train s at its end, mean s/step, mean samples/ray, occupied frac at end)."""
    rows, lo = [], 0
    for hi in edges:
        hi = min(hi, len(steps))
        if hi <= lo:
            break
        w = steps[lo:hi]
        rows.append((hi, w[-1][0], sum(s[1] for s in w) / len(w), sum(s[2] for s in w) / len(w),
                     w[-1][3]))
        lo = hi
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", nargs="?")
    ap.add_argument("b", nargs="?")
    ap.add_argument("--seconds", type=float, default=90.0, help="training seconds of each side")
    ap.add_argument("--eval-at", type=float, nargs="+", default=[15, 30, 60, 90],
                    help="training seconds at which to measure val PSNR")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, both sides")
    ap.add_argument("--extra-b", nargs="*", default=[],
                    help="overrides for B only (e.g. A and B the same commit, B with a setting)")
    ap.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)  # the child mode
    a = ap.parse_args()
    if a.run is not None:
        run(a.seconds, a.eval_at, a.extra, a.run)
        return
    if a.a is None or a.b is None:
        ap.error("give A and B")
    work = Path(tempfile.mkdtemp(prefix="nerf_dist_first_minute_"))
    made: list[Path] = []
    sizes = lego_fast_cpu()
    try:
        sides = []
        for name, spec in (("A", a.a), ("B", a.b)):
            path, label = resolve(spec, work, f"checkout_{name}", made)
            sides.append(Side(name, path, label, work, LEGO, sizes))
            print(f"[first_minute] {name} = {label}", flush=True)

        def side_extra(s: Side) -> list[str]:
            """--extra (and --extra-b for B) without the keys this side's checkout lacks."""
            keys = known_keys(s.checkout, s.env)
            extra = [*a.extra, *(a.extra_b if s.name == "B" else [])]
            keep = [e for e in extra if keys is None or e.split("=", 1)[0] in keys]
            for e in extra:
                if e not in keep:
                    print(f"[first_minute] {s.name}: {s.label} has no {e.split('=', 1)[0]}: "
                          f"not passed to it", flush=True)
            return keep

        extras = {s.name: side_extra(s) for s in sides}

        def cmd(s: Side, seconds: float, tag: str) -> list[str]:
            return [sys.executable, str(Path(__file__).resolve()), "--run", str(work / f"{tag}_{s.name}.json"),
                    "--seconds", repr(seconds), "--eval-at", *map(repr, a.eval_at), "--extra",
                    f"data.root={LEGO}", *overrides(s.sizes), f"run.dir={work / f'run_{tag}_{s.name}'}",
                    f"data.cache_dir={s.cache}", *extras[s.name]]

        for s in sides:  # NOTE: alone, so no timed run builds a cache
            subprocess.run(cmd(s, 1.0, "warmup"), cwd=s.checkout, env=s.env, check=True,
                           stdout=subprocess.DEVNULL)
        procs = [subprocess.Popen(cmd(s, a.seconds, "run"), cwd=s.checkout, env=s.env) for s in sides]
        if any(p.wait() for p in procs):
            raise SystemExit("[first_minute] a side failed")
        res = {s.name: json.loads((work / f"run_{s.name}.json").read_text()) for s in sides}
        edges = [10, 25, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500, 2000]
        print(f"seconds per step by window (one thread each, run together on a shared machine; "
              f"{a.seconds:g} s of training each)")
        print(f"{'steps':>11} | {'A: t_end s/step spr occ':>29} | {'B: t_end s/step spr occ':>29}")
        wa, wb = windows(res["A"]["steps"], edges), windows(res["B"]["steps"], edges)
        lo = 0
        for i in range(max(len(wa), len(wb))):
            cells = []
            for w in (wa, wb):
                cells.append(f"{w[i][1]:7.1f} {w[i][2]:6.3f} {w[i][3]:5.1f} {w[i][4]:5.3f}"
                             if i < len(w) else " " * 26)
            hi = edges[i]
            print(f"{lo:>5}-{hi:<5} | {cells[0]:>29} | {cells[1]:>29}")
            lo = hi
        print("val PSNR (train s, step, dB):")
        for s in sides:
            print(f"  {s.name}: {res[s.name]['curve']}; {len(res[s.name]['steps'])} steps")
    finally:
        for dest in made:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(dest)],
                           capture_output=True)


if __name__ == "__main__":
    main()
