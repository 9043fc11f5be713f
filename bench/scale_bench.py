"""Scale benchmark (figures, not a timed test): how the ray cache and a rank's memory grow with the scene.

For each scene size (generated demo scenes of growing size, and optionally the Blender lego scene at
full resolution) it prints and saves:

    cache bytes on disk, cache build time and peak RSS (`nerf-dist cache`, 1 process),
    peak RSS per rank and training rays/s of a short run (`nerf-dist train`, a few steps, no
    validation, no intermediate checkpoints) at each world size in --ranks (torchrun, gloo on CPU).

It drives the command line in subprocesses only, so the same script measures any version of the code:
``--code DIR`` (default: this checkout) is put first on PYTHONPATH of every subprocess, and
``data.cache_memory`` is passed only where ``nerf-dist keys`` lists it.

Peak RSS per rank: VmHWM of every rank process, polled from /proc; the largest is cross-checked with
``ru_maxrss`` of the waited-for process tree (os.wait4), which cannot miss a short peak.
rays/s: ``perf/rays_per_s`` from the run's TensorBoard events, over the logged windows after the
first (the first holds start-up work such as the first occupancy-grid update).

Scenes: ``demo-scene --views B --resolution R`` is rendered once (slow: ~10 min for 100 views at
512^2 on 2 busy cores); a scene of N = k*B views repeats those B views k times (hard links, the same
poses), which is what the memory and cache figures depend on (pixel count), not on what the pixels
show. ``--generate-each`` renders every size for real instead.

Linux only (/proc). Example (the table in docs/benchmarks.md; ``--code`` another checkout for "before")::

    python bench/scale_bench.py --views 100,200,400,800 --resolution 512 --ranks 1,2 --steps 15 \\
        --cache-memory ,128MB --workdir /tmp/nerf_dist_scale --lego ../shared/data/lego --out scale.json
    python bench/scale_bench.py --table scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# NOTE: CPU-sized fast path (as configs/demo.yaml) so the short runs measure the data path and
# a model step of realistic cost on 2 cores; no validation and no checkpoint but the final one.
TRAIN_OVERRIDES = ["eval.every=0", "checkpoint.every=0", "log.progress=false",
                   "train.resume=none", "train.max_seconds=0", "data.format=blender",
                   "data.downscale=1", "data.white_background=true"]


# ----------------------------------------------------------------------------- processes

def _children() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="utf-8") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PeakWatcher:
    """Polls VmHWM (peak resident set) of a process tree until stopped: {pid: (peak_kb, cmdline)}."""

    def __init__(self, root: int, every_s: float = 0.3):
        self.root, self.every_s = root, every_s
        self.peaks: dict[int, list] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            kids, todo, tree = _children(), [self.root], []
            while todo:
                p = todo.pop()
                tree.append(p)
                todo.extend(kids.get(p, []))
            for p in tree:
                hwm = _status_kb(p, "VmHWM")
                if hwm is None:
                    continue
                # NOTE: the command line is read again every time: a rank seen between torchrun's
                # fork and its exec still shows torchrun's.
                entry = self.peaks.setdefault(p, [0, ""])
                entry[0], entry[1] = max(entry[0], hwm), _cmdline(p) or entry[1]
            self._stop.wait(self.every_s)

    def stop(self) -> dict[int, list]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def run_measured(cmd: list[str], env: dict, log_path: Path, timeout_s: float) -> dict:
    """Run cmd, return {rc, wall_s, tree_max_rss_mb, rank_rss_mb: [per rank process, MB]}."""
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
        watch = PeakWatcher(proc.pid)
        rc, usage = None, None
        deadline = time.time() + timeout_s
        while rc is None:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc, usage = os.waitstatus_to_exitcode(status), ru
                proc.returncode = rc
                break
            if time.time() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                rc = -9
                proc.returncode = rc
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    peaks = watch.stop()
    # NOTE: a rank is a process running nerf_dist that is not torchrun itself (torch.distributed.run).
    ranks = [v[0] / 1024 for p, v in sorted(peaks.items())
             if "nerf_dist" in v[1] and "torch.distributed.run" not in v[1] and "torchrun" not in v[1]]
    return {"rc": rc, "wall_s": wall, "tree_max_rss_mb": usage.ru_maxrss / 1024 if usage else None,
            "rank_rss_mb": ranks}


class Cli:
    """`nerf-dist` of one code checkout, run as `python -m nerf_dist` (or under torchrun)."""

    def __init__(self, code: Path, python: str):
        self.code, self.python = code, python
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(code) + (os.pathsep + self.env["PYTHONPATH"]
                                              if self.env.get("PYTHONPATH") else "")
        self.env.setdefault("OMP_NUM_THREADS", "1")
        where = subprocess.run([python, "-c", "import nerf_dist; print(nerf_dist.__file__)"],
                               env=self.env, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(code.resolve()):
            raise SystemExit(f"nerf_dist imports from {where}, not from --code {code}")
        keys = subprocess.run([python, "-m", "nerf_dist", "keys"], env=self.env, capture_output=True,
                              text=True, check=True).stdout
        self.has_cache_memory = "data.cache_memory" in keys
        self.commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()

    def cmd(self, args: list[str], ranks: int = 1) -> list[str]:
        if ranks == 1:
            return [self.python, "-m", "nerf_dist", *args]
        # NOTE: a free port per run: another torchrun on this machine must not collide with it.
        return [self.python, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                "--nnodes=1", f"--master_port={_free_port()}", "-m", "nerf_dist", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- scenes

def demo_scene(cli: Cli, workdir: Path, views: int, resolution: int, base_views: int,
               generate_each: bool, log=print) -> Path:
    """Folder of a demo scene with `views` training views (rendered, or repeats of a base scene)."""
    root = workdir / "scenes" / f"demo_v{views}_r{resolution}"
    if (root / "transforms_train.json").exists():
        return root
    if generate_each or views == base_views or views % base_views:
        log(f"  rendering demo scene: {views} views at {resolution}^2 (slow) -> {root}")
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(cli.cmd(["demo-scene", "--views", str(views), "--resolution", str(resolution),
                                str(tmp)]), env=cli.env, check=True, stdout=subprocess.DEVNULL)
        tmp.rename(root)
        return root
    base = demo_scene(cli, workdir, base_views, resolution, base_views, False, log)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, copy_function=os.link, ignore=shutil.ignore_patterns("train"))
    (tmp / "train").mkdir()
    meta = json.loads((base / "transforms_train.json").read_text(encoding="utf-8"))
    frames = []
    for k in range(views // base_views):
        for i, fr in enumerate(meta["frames"]):
            # NOTE: distinct file names (hard links) so a reader or cache keyed on paths sees
            # `views` images, as a real capture of that size would have.
            j = k * base_views + i
            for src_key, suffix in (("file_path", ".png"), ("depth_file", "")):
                if src_key not in fr:
                    continue
                src = base / fr[src_key].lstrip("./")
                src = src if src.suffix else src.with_suffix(suffix)
                os.link(src, tmp / "train" / src.name.replace(f"r_{i}", f"r_{j}", 1))
            new = dict(fr, file_path=f"./train/r_{j}")
            if "depth_file" in fr:
                new["depth_file"] = f"./train/r_{j}_depth.npy"
            frames.append(new)
    # NOTE: copytree hard-linked it: unlink first, or the write would change the base scene too.
    (tmp / "transforms_train.json").unlink()
    (tmp / "transforms_train.json").write_text(json.dumps(dict(meta, frames=frames), indent=1),
                                               encoding="utf-8")
    tmp.rename(root)
    return root


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- events

def train_speed(tb_dir: Path) -> dict:
    """{rays_per_s, data_s}: training rays/s over the logged windows after the first (harmonic mean:
    every window holds the same rays) and the mean time/data_s (loader time of a logged step)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    out = {}
    for tag, key in (("perf/rays_per_s", "rays_per_s"), ("time/data_s", "data_s")):
        if tag not in tags:
            continue
        vals = [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]
        vals = vals[1:] if len(vals) > 1 else vals
        if key == "rays_per_s":
            out[key] = len(vals) / sum(1.0 / v for v in vals) if vals and min(vals) > 0 else None
        else:
            out[key] = sum(vals) / len(vals) if vals else None
    return out


# ----------------------------------------------------------------------------- one scene

def measure_scene(cli: Cli, name: str, root: Path, n_pixels: int, a, log=print) -> list[dict]:
    """Build the scene's cache once, then train at each world size for each --cache-memory value:
    one row per value."""
    work = Path(a.workdir) / "runs" / f"{a.tag}_{name}"
    cache_dir = work / "ray_cache"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = str(cli.code / "configs" / "demo.yaml")
    common = [f"data.root={root}", f"data.cache_dir={cache_dir}", *TRAIN_OVERRIDES,
              f"data.cache_shards={a.shards}", *a.extra]
    budgets = a.cache_memory if cli.has_cache_memory else [""]
    row = {"scene": name, "pixels": n_pixels, "code": cli.commit, "tag": a.tag,
           "cache_memory": (budgets[0] or "default") if cli.has_cache_memory else None}
    log(f"[{name}] building the cache ({n_pixels / 1e6:.1f} M pixels)")
    mem = [f"data.cache_memory={budgets[0]}"] if budgets[0] else []
    res = run_measured(cli.cmd(["cache", "--config", config, *common, *mem,
                                f"run.dir={work / 'cache_run'}"]),
                       cli.env, work / "cache.log", a.timeout)
    row.update(cache_rc=res["rc"], cache_build_s=round(res["wall_s"], 1),
               cache_build_rss_mb=round(res["tree_max_rss_mb"] or 0),
               cache_bytes=dir_bytes(cache_dir) if cache_dir.exists() else None)
    log(f"  cache: rc {res['rc']}, {res['wall_s']:.0f} s, {row['cache_bytes'] or 0:,} B, "
        f"peak RSS {row['cache_build_rss_mb']} MB")
    if res["rc"] != 0:
        log(f"  cache build failed: see {work / 'cache.log'}")
        return [row]
    rows = []
    for budget in budgets:
        rows.append(dict(row, cache_memory=(budget or "default") if cli.has_cache_memory else None))
        _train_runs(cli, config, common, budget, work, rows[-1], a, log)
    if not a.keep_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


def _train_runs(cli: Cli, config: str, common: list[str], budget: str, work: Path, row: dict, a,
                log) -> None:
    """Short training runs at each world size of --ranks; results go into row['train_{n}r']."""
    mem = [f"data.cache_memory={budget}"] if budget else []
    if budget:
        log(f"  data.cache_memory={budget}")
    for n in a.ranks:
        label = f"{n}r" + (f"_{budget}" if budget else "")
        run_dir = work / f"train_{label}"
        res = run_measured(cli.cmd(["train", "--config", config, *common, *mem, f"run.dir={run_dir}",
                                    f"train.steps={a.steps}", f"log.every={a.log_every}",
                                    f"train.rays_per_batch={a.batch}"], ranks=n),
                           cli.env, work / f"train_{label}.log", a.timeout)
        speed = train_speed(run_dir / "tb") if res["rc"] == 0 else {}
        rps = speed.get("rays_per_s")
        ranks = res["rank_rss_mb"]
        row[f"train_{n}r"] = {"rc": res["rc"], "wall_s": round(res["wall_s"], 1),
                              "rss_per_rank_mb": [round(r) for r in ranks],
                              "max_rss_mb": round(max([res["tree_max_rss_mb"] or 0, *ranks])),
                              "rays_per_s": round(rps) if rps else None,
                              "data_s": (round(speed["data_s"], 4) if speed.get("data_s") is not None
                                         else None)}
        log(f"  train {n} rank(s): rc {res['rc']}, {res['wall_s']:.0f} s, peak RSS per rank "
            f"{[round(r) for r in ranks]} MB (tree max {res['tree_max_rss_mb'] or 0:.0f} MB), "
            f"{rps or 0:.0f} rays/s, loader {speed.get('data_s') or 0:.3f} s/step")
        if res["rc"] != 0:
            log(f"  training failed: see {work / f'train_{label}.log'}")
        if not a.keep_runs:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def table(rows: list[dict], ranks: list[int]) -> str:
    head = ["code", "scene", "pixels", "cache", "B/px", "build s", "build peak RSS", "cache_memory"]
    head += [h for n in ranks for h in (f"peak RSS/rank, {n} rank{'s' * (n > 1)}",
                                        f"rays/s, {n} rank{'s' * (n > 1)}")]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cb = r.get("cache_bytes")
        cells = [r.get("tag") or r.get("code", "?"), r["scene"], f"{r['pixels'] / 1e6:.1f} M", f"{cb / 1e9:.2f} GB" if cb else "-",
                 f"{cb / r['pixels']:.1f}" if cb else "-", str(r.get("cache_build_s", "-")),
                 f"{r.get('cache_build_rss_mb', 0) / 1024:.2f} GiB", r.get("cache_memory") or "(none)"]
        for n in ranks:
            t = r.get(f"train_{n}r")
            if not t:
                cells += ["-", "-"]
                continue
            rss = "/".join(f"{x / 1024:.2f}" for x in t["rss_per_rank_mb"]) or "?"
            cells += [f"{rss} GiB" + ("" if t["rc"] == 0 else f" (rc {t['rc']})"),
                      str(t["rays_per_s"] or "-")]
        lines.append(" | ".join(cells))
    return "\n".join("| " + ln + " |" for ln in lines)


def load_table(paths: list[str], ranks: list[int]) -> str:
    """The table of rows saved by earlier runs (--out files)."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text(encoding="utf-8"))]
    return table(rows, ranks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", default="100,200,400,800", help="training views per demo scene, "
                    "comma-separated ('' = none)")
    ap.add_argument("--resolution", type=int, default=512, help="demo scene image side")
    ap.add_argument("--base-views", type=int, default=0, help="views rendered once and repeated "
                    "to make the larger scenes (default: the smallest of --views)")
    ap.add_argument("--generate-each", action="store_true", help="render every scene size")
    ap.add_argument("--lego", default="", help="also measure this Blender scene at full resolution")
    ap.add_argument("--ranks", default="1,2", help="world sizes of the training runs")
    ap.add_argument("--steps", type=int, default=15, help="training steps per run")
    ap.add_argument("--log-every", type=int, default=5, help="steps per rays/s window")
    ap.add_argument("--batch", type=int, default=1024, help="train.rays_per_batch")
    ap.add_argument("--shards", type=int, default=64, help="data.cache_shards")
    ap.add_argument("--cache-memory", default="", help="data.cache_memory values, comma-separated "
                    "(e.g. 2GB,128MB; '' = the default), each trained on the same cache; only passed "
                    "where the code has that key")
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    ap.add_argument("--code", default=str(REPO), help="checkout whose nerf_dist is measured")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "nerf_dist_scale"))
    ap.add_argument("--tag", default="", help="label of this code version in run folders and output")
    ap.add_argument("--keep-cache", action="store_true")
    ap.add_argument("--keep-runs", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    ap.add_argument("--out", default="", help="append rows to this JSON file")
    ap.add_argument("--table", nargs="*", default=None, help="only print the table of these --out "
                    "files")
    a = ap.parse_args(argv)
    if a.table is not None:
        print(load_table(a.table, [int(x) for x in a.ranks.split(",") if x]))
        return 0
    a.ranks = [int(x) for x in a.ranks.split(",") if x]
    a.cache_memory = [x.strip() for x in a.cache_memory.split(",")] or [""]
    views = [int(x) for x in a.views.split(",") if x]
    a.base_views = a.base_views or (min(views) if views else 0)
    cli = Cli(Path(a.code), a.python)
    a.tag = a.tag or cli.commit
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    budgets = (",".join(x or "default" for x in a.cache_memory) if cli.has_cache_memory
               else "not a key of this version")
    print(f"code {a.code} ({cli.commit}), data.cache_memory {budgets}"
          f", {a.steps} steps of {a.batch} rays, configs/demo.yaml (CPU fast path)", flush=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    rows = []
    todo = [(f"demo {v}x{a.resolution}^2", v) for v in views]
    if a.lego:
        todo.append(("lego", None))
    for name, v in todo:
        if v is None:
            root = Path(a.lego).resolve()
            meta = json.loads((root / "transforms_train.json").read_text(encoding="utf-8"))
            first = root / (meta["frames"][0]["file_path"].lstrip("./") + ".png")
            with open(first, "rb") as f:  # NOTE: PNG header: width, height at bytes 16..24
                head = f.read(24)
            w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            n_pixels = len(meta["frames"]) * w * h
            name = f"lego {w}x{h}"
        else:
            root = demo_scene(cli, Path(a.workdir), v, a.resolution, a.base_views, a.generate_each, log)
            n_pixels = v * a.resolution ** 2
        new = measure_scene(cli, name.replace(" ", "_").replace("^", ""), root, n_pixels, a, log)
        for r in new:
            r["scene"] = name
        rows += new
        print("\n".join(table(new, a.ranks).splitlines()[2:]), flush=True)
        if a.out:
            old = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else []
            Path(a.out).write_text(json.dumps(old + new, indent=1))
    print(table(rows, a.ranks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
