"""Time and peak memory of `nerf-dist export mesh` on 1 and N ranks, and that they agree.

    python bench/export_bench.py RUN_DIR [--resolution 512] [--ranks 1 2] [--block 64]

Runs the CLI (under torchrun for N > 1) into RUN_DIR/export_bench_rN, then prints per world
size: wall seconds (the command), field seconds (evaluation + marching, from mesh.json), rank 0's
peak RSS (mesh.json), vertices, faces, PLY bytes, and whether each PLY is byte-identical to the
first one's.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]



def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(run_dir: str, ranks: int, resolution: int, block: int, extra: list[str]) -> dict:
    out = os.path.join(run_dir, f"export_bench_r{ranks}")
    cmd = [sys.executable, "-m", "nerf_dist", "export", "mesh", run_dir, "--out", out,
           "--resolution", str(resolution), "--block", str(block), "--no-progress", *extra]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_port", str(free_port()), *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    with open(os.path.join(out, "mesh.json")) as f:
        s = json.load(f)
    return {"ranks": ranks, "wall_s": wall, "field_s": s["field_seconds"],
            "peak_rss_rank0_MiB": s["peak_rss_bytes"] / 2 ** 20,
            "peak_rss_per_rank_MiB": [round(b / 2 ** 20) for b in
                                      s.get("peak_rss_bytes_per_rank", [])],
            "level": s["level"], "vertices": s["vertices"],
            "faces": s["faces"], "ply_bytes": s["files"]["ply"]["bytes"],
            "ply": s["files"]["ply"]["path"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("extra", nargs="*", help="more `export mesh` flags (after --)")
    a = p.parse_args()
    rows = [run(a.run_dir, n, a.resolution, a.block, a.extra) for n in a.ranks]
    for r in rows:
        same = filecmp.cmp(rows[0]["ply"], r["ply"], shallow=False)
        print(f"{a.resolution}^3, {r['ranks']} rank(s): {r['wall_s']:.1f} s wall, "
              f"{r['field_s']:.1f} s field+march, peak RSS rank 0 {r['peak_rss_rank0_MiB']:.0f} MiB "
              f"(after the evaluation, per rank: {r['peak_rss_per_rank_MiB']} MiB), level "
              f"{r['level']:.4g}, "
              f"{r['vertices']} vertices, {r['faces']} faces, PLY {r['ply_bytes']} bytes, "
              f"identical to {rows[0]['ranks']} rank(s): {same}")
    print(json.dumps([{k: v for k, v in r.items() if k != "ply"} for r in rows]))


if __name__ == "__main__":
    main()
