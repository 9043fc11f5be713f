#!/usr/bin/env bash
# Render a trained run on a workstation: torchrun --standalone over the visible GPUs (or N CPU
# ranks) running `nerf-dist render`, its options passed through. `launch/render.sh --help`.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/render.sh [--nproc N] [--cpu] --run-dir RUN_DIR [render options] [key=value ...]
       launch/render.sh [--nproc N] [--cpu] --checkpoint URL [render options] [key=value ...]

Render novel views of a trained run with `nerf-dist render` under torchrun --standalone: each
frame is cut into tiles spread over the ranks; rank 0 writes the frames and the video. Every
option other than those below goes to `nerf-dist render` unchanged (--run is passed on as
--run-dir). Re-running the same command continues a killed render (finished frames are skipped).

options:
  --nproc N      ranks (default: one per visible GPU; 1 on a machine without GPUs)
  --cpu          run the ranks on the CPU even where GPUs are visible
  -h, --help     this help

render options (see `nerf-dist render --help` for all):
  --run-dir RUN_DIR | --checkpoint URL    what to render (newest checkpoint of a run, or one)
  --path auto|orbit|spiral|train|val|test|FILE.json    camera path (default auto)
  --frames N  --resolution WxH  --out DIR  --tile PX  --fps F  --no-video  --save-float
  --threads N (CPU threads per rank)  --no-progress

environment: CUDA_VISIBLE_DEVICES (visible GPUs), OMP_NUM_THREADS (default CPU cores / ranks),
NERF_DIST_NO_VENV=1 (use the python on PATH as it is; otherwise launch/setup_env.sh prepares .venv)

examples:
  launch/render.sh --run-dir runs/lego --path orbit --frames 120
  launch/render.sh --nproc 2 --cpu --run-dir runs/demo --path test --resolution 64x64 --no-video
  launch/render.sh --checkpoint s3://bucket/lego/step-00200000 --path spiral --out renders/lego

exit codes:
  0    every frame rendered (outputs in --out, default RUN_DIR/render_PATH)
  1    failed (bad checkpoint, camera path or resolution, a rank died, ...): see the log
  2    usage error
EOF
}

die_usage() { echo "launch/render.sh: error: $*" >&2; echo "run launch/render.sh --help for usage" >&2; exit 2; }

n_ranks="" cpu=0 have_source=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nproc) [ $# -ge 2 ] || die_usage "--nproc needs a value"; n_ranks="$2"; shift 2 ;;
    --nproc=*) n_ranks="${1#*=}"; shift ;;
    --cpu) cpu=1; shift ;;
    # NOTE: under torchrun --run would be read as torchrun's own --run-path option.
    --run|--run-dir) [ $# -ge 2 ] || die_usage "$1 needs a run folder"; args+=(--run-dir "$2"); have_source=1; shift 2 ;;
    --run=*|--run-dir=*) args+=(--run-dir "${1#*=}"); have_source=1; shift ;;
    --checkpoint|--checkpoint=*) have_source=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "$n_ranks" ] && ! { [[ "$n_ranks" =~ ^[0-9]+$ ]] && [ "$n_ranks" -ge 1 ]; }; then
  die_usage "--nproc must be a positive integer, got '$n_ranks'"
fi
[ "$have_source" = 1 ] || die_usage "give --run-dir RUN_DIR or --checkpoint URL"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${NERF_DIST_NO_VENV:-}" ]; then
  # NOTE: pass the extras explicitly: a bare `source` would hand it this script's arguments.
  # shellcheck source=launch/setup_env.sh
  source "$root/launch/setup_env.sh" ""
  set -euo pipefail  # setup_env.sh switches these off for interactive shells
fi
[ "$cpu" = 1 ] && export CUDA_VISIBLE_DEVICES=""

n_gpus=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" | tail -n 1)
# shellcheck source=launch/ranks.sh
source "$(dirname "${BASH_SOURCE[0]}")/ranks.sh"
choose_ranks launch/render.sh
echo "launch/render.sh: $n_ranks $where rank(s), $OMP_NUM_THREADS thread(s) each" >&2
# NOTE: torchrun stops on a rank's failure and exits 1; a render keeps no state worth a restart
# (finished frames are skipped when the same command runs again).
exec python -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$n_ranks" \
  -m nerf_dist render "${args[@]}"
