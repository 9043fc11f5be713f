#!/usr/bin/env bash
# One GPU, about 8 minutes: the CUDA tests, then the GPU figures. `bench/gpu_check.sh --help`.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: bench/gpu_check.sh [--lego DIR] [--out DIR] [--budget SECONDS] [--smoke]

On a machine with a CUDA GPU (the first visible one is used), in about 8 minutes:
  1. tests/test_cuda.py (fast path bf16/fp16, vanilla, renderer CUDA = CPU, 1-rank NCCL,
     checkpoint written on the GPU and loaded without one)
  2. lego 800x800, fast path with configs/lego_fast.yaml (bf16): held-out val PSNR (2 views)
     at 1, 2 and 5 minutes of training (bench/train_bench.py lego; evaluation time excluded)
  3. vanilla paper config training (and rendering) rays/s in fp32 and bf16
     (bench/train_bench.py speed)
  4. renderer frames/s: `nerf-dist render` of an 800x800 lego orbit (6 frames, one GPU rank)
     from a lego_fast run trained for 300 steps
then prints a summary of the figures. Each phase has a timeout so all of it ends by --budget.

options:
  --lego DIR        the Blender lego scene (default: $NERF_DIST_LEGO, else ../shared/data/lego)
  --out DIR         work folder: runs, renders, ray cache, gpu_check.log
                    (default /tmp/nerf_dist_gpu_check)
  --budget SECONDS  deadline for all phases (default 480)
  --smoke           check the script's plumbing on any machine, GPU or not: the same phases at
                    toy sizes (lego at 50x50, seconds of training); its figures mean nothing
  -h, --help        this help

environment: NERF_DIST_LEGO (as --lego), NERF_DIST_NO_VENV=1 (use the python on PATH, which must
have the test extras; otherwise launch/setup_env.sh test prepares .venv)

examples:
  bash bench/gpu_check.sh
  NERF_DIST_LEGO=/data/nerf_synthetic/lego bash bench/gpu_check.sh --out /scratch/gpu_check
  bash bench/gpu_check.sh --smoke --budget 300

exit codes:
  0   the tests passed and every figure was measured
  1   a test failed, a phase failed or ran out of time, or lego was not found
  2   usage error, or no CUDA GPU visible (without --smoke)
EOF
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lego="${NERF_DIST_LEGO:-$root/../shared/data/lego}"
out="/tmp/nerf_dist_gpu_check"
budget=480
smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --lego) lego="${2:?--lego needs a folder}"; shift 2 ;;
    --lego=*) lego="${1#*=}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --budget) budget="${2:?--budget needs seconds}"; shift 2 ;;
    --budget=*) budget="${1#*=}"; shift ;;
    --smoke) smoke=1; shift ;;
    *) echo "bench/gpu_check.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "bench/gpu_check.sh: error: --budget must be whole seconds" >&2; exit 2; }

# The sizes of each phase: the real ones, or toy ones for --smoke (plumbing only).
if [ "$smoke" = 0 ]; then
  minutes=5 eval_every=60 marks=(60 120 300) toy=() speed_steps=20
  render_steps=300 render_frames=6 render_res=800x800
else
  minutes=0.3 eval_every=6 marks=(6 12 18) speed_steps=1
  toy=(data.downscale=16 model.hash_log2_size=14 model.hash_max_res=128 model.grid_res=32
       model.march_steps=64 model.max_samples=32 train.rays_per_batch=512 model.chunk=4096)
  render_steps=3 render_frames=2 render_res=50x50
fi

cd "$root" || exit 2
if [ -z "${NERF_DIST_NO_VENV:-}" ]; then
  # NOTE: the tests need pytest (the test extras); pass them explicitly to setup_env.sh.
  # shellcheck source=launch/setup_env.sh
  source launch/setup_env.sh test || exit 2
  set -uo pipefail
fi
mkdir -p "$out" || exit 2
lego="$(cd "$lego" 2>/dev/null && pwd || echo "$lego")"
export NERF_DIST_LEGO="$lego" PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
: > "$log"
t_start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t_start) )); }
say() { echo "$*" | tee -a "$log"; }
failed=0
summary=()

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "$smoke" = 0 ]; then
    echo "bench/gpu_check.sh: no CUDA GPU visible to torch (torch.cuda.is_available() is False); --smoke checks the script without one" >&2
    exit 2
  fi
  say "== --smoke on a machine without a GPU: CPU, toy sizes, figures meaningless"
else
  say "== $(python -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU {p.name} ({p.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} visible, CUDA {torch.version.cuda}")')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log"
fi
say "== $(date -u +%FT%TZ), torch $(python -c 'import torch; print(torch.__version__)'), out $out$([ "$smoke" = 1 ] && echo " (smoke)")"

have_lego=1
if [ ! -f "$lego/transforms_train.json" ]; then
  say "lego not found at $lego (transforms_train.json): use --lego DIR or NERF_DIST_LEGO"
  summary+=("lego: not found at $lego"); failed=1; have_lego=0
fi
cache="$out/ray_cache"
cache_pid=""
if [ "$have_lego" = 1 ]; then
  # NOTE: the lego ray cache (64M rays at 800x800) is CPU work: build it while the GPU runs the
  # tests. Phases 2 and 4 find it by the same key (same data settings, same data.cache_dir).
  python -m nerf_dist cache --config configs/lego_fast.yaml "data.root=$lego" \
    "data.cache_dir=$cache" "${toy[@]}" > "$out/cache.log" 2>&1 &
  cache_pid=$!
fi

# ------------------------------------------------------------------------------- 1. tests
say "== 1. tests/test_cuda.py"
timeout 150 python -m pytest -q -ra -p no:cacheprovider tests/test_cuda.py 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ]; then summary+=("tests/test_cuda.py: passed (see -ra above for skips)"); else summary+=("tests/test_cuda.py: FAILED (exit $rc)"); failed=1; fi

if [ -n "$cache_pid" ]; then
  t_wait=$(date +%s)
  if wait "$cache_pid"; then
    say "lego ray cache ready ($(( $(date +%s) - t_wait )) s waited after the tests): $(tail -n 1 "$out/cache.log")"
  else
    say "building the lego ray cache failed (training builds it again): $(tail -n 3 "$out/cache.log")"
  fi
fi

# ------------------------------------------------------------------------------- 2. lego PSNR
# NOTE: configs/lego_fast.yaml as overrides for bench/train_bench.py (which builds its config
# from overrides): everything that shapes the model and the optimisation, not where it writes
# nor when it stops (train_bench sets those); precision goes through --precision.
if [ "$have_lego" = 1 ]; then
  mapfile -t fast < <(python - configs/lego_fast.yaml <<'EOF'
import sys
import yaml
with open(sys.argv[1]) as f:
    cfg = yaml.safe_load(f)
skip = {"data.root", "model.precision", "train.steps", "train.resume", "train.max_seconds"}
for section, body in cfg.items():
    if not isinstance(body, dict):
        print(f"{section}={body}")
    elif section in ("data", "model", "train"):
        for k, v in body.items():
            if f"{section}.{k}" not in skip:
                print(f"{section}.{k}={v}")
EOF
  )
  # NOTE: 5 minutes of training plus start-up, the val images and 5 evaluations (~30 s);
  # phases 3 and 4 keep ~50 s.
  t2=$(( $(left) - 50 ))
  say "== 2. lego fast path (configs/lego_fast.yaml, bf16), $minutes min, val PSNR every $eval_every s (timeout ${t2} s)"
  timeout "$t2" python bench/train_bench.py lego --precision bf16 --minutes "$minutes" \
    --eval-every "$eval_every" --target 30 --extra "${fast[@]}" "data.cache_dir=$cache" "${toy[@]}" \
    2>&1 | tee "$out/lego_fast.log" | tee -a "$log"
  rc=${PIPESTATUS[0]}
  psnr=$(python - "$out/lego_fast.log" "${marks[@]}" <<'EOF'
import re
import sys
with open(sys.argv[1]) as f:
    pts = [(float(t), int(s), float(p)) for t, s, p in re.findall(
        r"t=\s*([\d.]+)s step=\s*(\d+) val PSNR=\s*([-\d.]+) dB", f.read())]
parts = []
for sec in map(int, sys.argv[2:]):
    # the first evaluation at or after the mark (they come every --eval-every s of training)
    hit = [p for p in pts if p[0] >= sec - 1.0]
    parts.append(f"{sec / 60:g} min {hit[0][2]:.2f} dB (step {hit[0][1]})" if hit
                 else f"{sec / 60:g} min n/a")
print(", ".join(parts))
EOF
  )
  summary+=("lego fast path bf16, val PSNR (2 views): $psnr")
  if [ "$rc" != 0 ] || [[ "$psnr" == *n/a* ]]; then failed=1; summary[-1]+=" [phase exit $rc]"; fi
fi

# ------------------------------------------------------------------------------- 3. vanilla speed
say "== 3. vanilla paper config speed (8x256, 64+128 samples, 1024 rays), fp32 and bf16"
t3=$(( $(left) - 35 )); [ "$t3" -lt 20 ] && t3=20
timeout "$t3" python bench/train_bench.py speed --precision fp32 bf16 --steps "$speed_steps" \
  2>&1 | tee "$out/speed.log" | tee -a "$log"
rc=${PIPESTATUS[0]}
while IFS= read -r line; do summary+=("vanilla $line"); done < <(
  grep "^paper config" "$out/speed.log" | sed 's/^paper config (8x256, 64+128 samples, 1024 rays), /paper config /')
if [ "$rc" != 0 ]; then failed=1; summary+=("vanilla speed: FAILED (exit $rc)"); fi

# ------------------------------------------------------------------------------- 4. renderer
if [ "$have_lego" = 1 ] && [ "$(left)" -ge 25 ]; then
  say "== 4. renderer: lego_fast run of $render_steps steps, orbit of $render_frames frames at $render_res, 1 rank (timeout $(left) s)"
  rrun="$out/render_run" rout="$out/render_orbit"
  rm -rf "$rrun" "$rout"
  # shellcheck disable=SC2016  # $1.. expand in the inner shell
  timeout "$(left)" bash -c '
    python -m nerf_dist train --config configs/lego_fast.yaml "data.root=$1" "run.dir=$2" \
      "data.cache_dir=$3" "train.steps=$5" train.resume=none checkpoint.every=0 eval.every=0 \
      log.progress=false "${@:9}" &&
    python -m nerf_dist render --run-dir "$2" --path orbit --frames "$6" --resolution "$7" \
      --no-video --no-progress --out "$4"' \
    _ "$lego" "$rrun" "$cache" "$rout" "$render_steps" "$render_frames" "$render_res" _ "${toy[@]}" \
    2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  fps=$(python -c "import json, sys; r = json.load(open(sys.argv[1]))['last_run']; print(f\"{r['frames_per_s']:.2f} frames/s, {r['rays_per_s']:.0f} rays/s\")" "$rout/render.json" 2>/dev/null || echo "n/a")
  summary+=("renderer, lego_fast at step $render_steps, $render_res orbit, 1 rank: $fps")
  if [ "$rc" != 0 ] || [ "$fps" = n/a ]; then failed=1; summary[-1]+=" [phase exit $rc]"; fi
else
  summary+=("renderer: not measured (no lego, or under 25 s of the budget left)"); failed=1
fi

say ""
say "== GPU figures$([ "$smoke" = 1 ] && echo ' (SMOKE: toy sizes, meaningless)') ($(( $(date +%s) - t_start )) s in all; log: $log)"
for line in "${summary[@]}"; do say "  $line"; done
exit "$failed"
