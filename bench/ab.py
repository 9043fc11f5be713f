"""A/B training speed of two checkouts, run side by side in pairs on the same machine.

    python bench/ab.py A B [--pairs 3] [--seconds 120] [--lego DIR] [--out ab.json]
    python bench/ab.py 47ab47c HEAD --pairs 4 --seconds 180

A and B are each a checkout folder or a git commit of this repository (a commit is checked out
with `git worktree add --detach` into a temporary folder, removed at the end). Each side runs
*its own* bench/train_bench.py with cwd and PYTHONPATH set to its checkout, so it imports its own
nerf_dist: `lego --fast` for --seconds of training time (validation excluded), one thread
(OMP_NUM_THREADS=1 and train.threads=1), validation only at the end (2 val views). The sizes are
those of *this* checkout's configs/lego_fast_cpu.yaml (model, batch, learning-rate schedule),
passed to both sides as overrides, so both train the same model even where the two checkouts'
benchmark defaults differ; a key a side does not know (`nerf-dist keys`) is dropped for that
side, with a note.

The two runs of a pair start together and share the machine; pairs alternate which one is
started first. Before the pairs, each side runs once alone for a few seconds to build its pixel
cache (kept for the pairs, so no timed run builds one). Per pair it prints the steps done and the
final val PSNR of each side; at the end the median step ratio B/A and the median PSNR difference
B - A over the pairs. On a shared machine one pair varies by about +-15%: use several pairs of a
few minutes each (90-240 s; the first steps are the slowest, about 70 samples a ray before the
occupancy grid learns empty space, so a short run says little). Prints figures; asserts nothing.
Exit 1 when a run fails.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_sizes import lego_fast_cpu  # noqa: E402
from cpu_sizes import overrides as to_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEGO = Path(os.environ.get("NERF_DIST_LEGO", REPO.parent / "shared" / "data" / "lego"))
# NOTE: train_bench's summary line: "  fp32: 123 steps, 4567 rays/s, time to ...; curve [(t, step, psnr), ...]"
RESULT = re.compile(r"^\s+(\w+): (\d+) steps, (\d+) rays/s, .*; curve (\[.*\])\s*$")


def resolve(spec: str, tmp: Path, name: str, made: list[Path]) -> tuple[Path, str]:
    """A checkout folder as it is, or a commit checked out into tmp/name. -> (path, label)."""
    p = Path(spec)
    if p.is_dir() and (p / "nerf_dist").is_dir():
        return p.resolve(), str(p)
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", spec + "^{commit}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"{spec!r} is neither a checkout folder (with nerf_dist/) nor a commit of {REPO}")
    sha = sha.stdout.strip()
    dest = tmp / name
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(dest), sha],
                   check=True)
    made.append(dest)
    return dest, f"{spec} ({sha[:9]})"


def known_keys(checkout: Path, env: dict) -> set[str] | None:
    """Config keys the checkout's `nerf-dist keys` lists (None when it cannot say)."""
    r = subprocess.run([sys.executable, "-m", "nerf_dist", "keys"], cwd=checkout, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip() and "." in line.split()[0]}


class Side:
    def __init__(self, name: str, checkout: Path, label: str, work: Path, lego: Path, sizes: dict):
        self.name, self.checkout, self.label = name, checkout, label
        self.env = {**os.environ, "PYTHONPATH": str(checkout), "NERF_DIST_LEGO": str(lego),
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.cache = work / f"cache_{name}"
        self.work = work
        keys = known_keys(checkout, self.env)
        wanted = {**sizes, "train.threads": 1}
        dropped = [k for k in wanted if keys is not None and k not in keys]
        if dropped:
            print(f"[ab] {name}: {label} has no {', '.join(dropped)}: not passed to it", flush=True)
        self.sizes = {k: v for k, v in wanted.items() if k not in dropped}

    def command(self, seconds: float, run_dir: Path) -> list[str]:
        return [sys.executable, str(self.checkout / "bench" / "train_bench.py"), "lego", "--fast",
                "--precision", str(self.sizes.get("model.precision", "fp32")),
                "--batch", str(self.sizes.get("train.rays_per_batch", 2048)),
                "--minutes", repr(seconds / 60.0), "--eval-every", "1e9",
                "--extra", *to_overrides(self.sizes), f"run.dir={run_dir}",
                f"data.cache_dir={self.cache}", "log.progress=false"]

    def start(self, seconds: float, tag: str) -> subprocess.Popen:
        log = open(self.work / f"{tag}_{self.name}.log", "w")
        return subprocess.Popen(self.command(seconds, self.work / f"run_{tag}_{self.name}"),
                                cwd=self.checkout, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def result(self, proc: subprocess.Popen, tag: str) -> dict:
        rc = proc.wait()
        text = (self.work / f"{tag}_{self.name}.log").read_text()
        for line in text.splitlines()[::-1]:
            m = RESULT.match(line)
            if m:
                curve = ast.literal_eval(m.group(4))
                return {"steps": int(m.group(2)), "rays_per_s": int(m.group(3)),
                        "train_s": curve[-1][0] if curve else None,
                        "psnr": curve[-1][2] if curve else float("nan")}
        tail = "\n".join(text.splitlines()[-20:])
        raise SystemExit(f"[ab] {self.name} ({self.label}), {tag}: exit {rc}, no result line; "
                         f"log {self.work / f'{tag}_{self.name}.log'}:\n{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="baseline: a checkout folder or a commit")
    ap.add_argument("b", help="candidate: a checkout folder or a commit")
    ap.add_argument("--pairs", type=int, default=3, help="pairs of runs (default 3; at least 3 for a median)")
    ap.add_argument("--seconds", type=float, default=120.0, help="training seconds of each run (default 120)")
    ap.add_argument("--lego", type=Path, default=LEGO, help=f"lego scene folder (default {LEGO})")
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs, runs and caches here (default: a temp folder, removed)")
    ap.add_argument("--out", type=Path, default=None, help="write the per-pair results as JSON")
    a = ap.parse_args()
    if not a.lego.exists():
        raise SystemExit(f"lego not found at {a.lego} (--lego DIR or NERF_DIST_LEGO)")
    if a.pairs < 3:
        print(f"[ab] note: {a.pairs} pair(s): fewer than 3, the medians say little", flush=True)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="nerf_dist_ab_"))
    work.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        sizes = lego_fast_cpu()
        path_a, label_a = resolve(a.a, work, "checkout_A", made)
        path_b, label_b = resolve(a.b, work, "checkout_B", made)
        sides = [Side("A", path_a, label_a, work, a.lego, sizes), Side("B", path_b, label_b, work, a.lego, sizes)]
        print(f"[ab] A = {label_a}\n[ab] B = {label_b}\n[ab] {a.pairs} pairs of {a.seconds:g} s, one thread "
              f"each, sizes of {REPO / 'configs' / 'lego_fast_cpu.yaml'}; work folder {work}", flush=True)
        for s in sides:  # NOTE: alone, so each side's pixel cache exists before any timed run
            t0 = time.time()
            s.result(s.start(2.0, "warmup"), "warmup")
            print(f"[ab] warm-up {s.name}: cache built and one short run done in {time.time() - t0:.0f} s", flush=True)
        pairs = []
        for i in range(a.pairs):
            order = sides if i % 2 == 0 else sides[::-1]
            tag = f"pair{i + 1}"
            procs = {s.name: s.start(a.seconds, tag) for s in order}
            try:
                res = {s.name: s.result(procs[s.name], tag) for s in sides}
            finally:
                for p in procs.values():  # NOTE: a failed side leaves no orphan behind
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            ratio = res["B"]["steps"] / max(res["A"]["steps"], 1)
            dpsnr = res["B"]["psnr"] - res["A"]["psnr"]
            pairs.append({"first": order[0].name, **res, "step_ratio": ratio, "psnr_diff": dpsnr})
            print(f"pair {i + 1} ({order[0].name} first): A {res['A']['steps']} steps {res['A']['psnr']:.2f} dB | "
                  f"B {res['B']['steps']} steps {res['B']['psnr']:.2f} dB | B/A steps {ratio:.3f}, "
                  f"PSNR B-A {dpsnr:+.2f} dB", flush=True)
        med_r = statistics.median(p["step_ratio"] for p in pairs)
        med_d = statistics.median(p["psnr_diff"] for p in pairs)
        each = ", ".join(f"{p['step_ratio']:.3f}" for p in pairs)
        print(f"median over {len(pairs)} pairs: step ratio B/A {med_r:.3f} (pairs: {each}), "
              f"PSNR difference B-A {med_d:+.2f} dB", flush=True)
        if a.out:
            a.out.write_text(json.dumps({"a": label_a, "b": label_b, "seconds": a.seconds, "sizes": sizes,
                                         "pairs": pairs, "median_step_ratio": med_r,
                                         "median_psnr_diff": med_d}, indent=1))
    finally:
        for dest in made:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(dest)],
                           capture_output=True)
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
