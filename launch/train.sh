#!/usr/bin/env bash
# Train on a workstation: torchrun --standalone with one rank per visible GPU (or N CPU ranks),
# then `nerf-dist status` decides the exit code (0 finished, 75 stopped-to-resume, 1 failed).
# Run `launch/train.sh --help` for options, examples and exit codes.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/train.sh [options] [--config FILE] [section.key=value ...]

Train nerf_dist on this machine under torchrun --standalone: one rank per visible GPU, or N
CPU ranks. The config file and overrides go to `nerf-dist train` unchanged, after a default
train.resume=auto (so a restarted or re-run job continues from its newest checkpoint; pass
train.resume=none to refuse that). When torchrun returns, `nerf-dist status` reads the run's
status.json and sets this script's exit code.

options:
  --config FILE          YAML config (e.g. configs/lego.yaml); keys: `nerf-dist keys`
  --nproc N              ranks (default: one per visible GPU; 1 on a machine without GPUs)
  --cpu                  run the ranks on the CPU even where GPUs are visible
  --max-restarts K       torchrun restarts of the whole group after a rank fails (default 0);
                         a restarted group resumes from the newest checkpoint
  --shutdown-timeout S   seconds torchrun waits, after forwarding a stop signal, for the ranks to
                         write their checkpoint before it kills them (default 300; needs a torch
                         whose torchrun has --shutdown_timeout, else torchrun's 30 s apply)
  -h, --help             this help

environment:
  CUDA_VISIBLE_DEVICES   which GPUs count as visible
  OMP_NUM_THREADS        CPU threads per rank (default: CPU cores / ranks)
  NERF_DIST_NO_VENV=1    use the python on PATH as it is (set in the Docker image); otherwise
                         launch/setup_env.sh creates or reuses .venv first
  NERF_DIST_VENV         another virtual environment folder for launch/setup_env.sh

stopping: SIGTERM or SIGUSR1 to this script (or to the torchrun agent whose pid it prints) is
forwarded to every rank; they stop together at the next step boundary, write a checkpoint there
and the script exits 75. Ctrl-C interrupts (exit 130). Re-run the same command to continue.

examples:
  launch/train.sh --config configs/lego.yaml data.root=/data/lego
  launch/train.sh --nproc 2 --cpu --config configs/demo.yaml train.max_seconds=60
  launch/train.sh --max-restarts 3 --config configs/lego_fast.yaml checkpoint.dir=s3://bucket/lego
  kill -USR1 <pid of train.sh>            # stop at the next step with a checkpoint (exit 75)

exit codes:
  0    finished (train.steps reached or train.max_seconds spent)
  1    failed (bad config or data, storage, a rank died with no restarts left, ...): see the log
  2    usage error of this script
  75   stopped at a step boundary by a signal with a checkpoint written: run again to resume
  130  interrupted by Ctrl-C
EOF
}

die_usage() { echo "launch/train.sh: error: $*" >&2; echo "run launch/train.sh --help for usage" >&2; exit 2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

n_ranks="" cpu=0 max_restarts=0 shutdown_timeout=300 config=""
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nproc|--max-restarts|--max_restarts|--shutdown-timeout|--shutdown_timeout|--config)
      [ $# -ge 2 ] || die_usage "$1 needs a value"
      opt="$1" val="$2"; shift 2 ;;
    --nproc=*|--max-restarts=*|--max_restarts=*|--shutdown-timeout=*|--shutdown_timeout=*|--config=*)
      opt="${1%%=*}" val="${1#*=}"; shift ;;
    --cpu) cpu=1; shift; continue ;;
    --) shift; overrides+=("$@"); break ;;
    -*) die_usage "unknown option $1" ;;
    *=*) overrides+=("$1"); shift; continue ;;
    *) die_usage "expected an option or a section.key=value override, got '$1'" ;;
  esac
  case "$opt" in
    --nproc) { is_uint "$val" && [ "$val" -ge 1 ]; } || die_usage "--nproc must be a positive integer, got '$val'"
             n_ranks="$val" ;;
    --max-restarts|--max_restarts) is_uint "$val" || die_usage "--max-restarts must be an integer >= 0, got '$val'"
             max_restarts="$val" ;;
    --shutdown-timeout|--shutdown_timeout) is_uint "$val" || die_usage "--shutdown-timeout must be whole seconds >= 0, got '$val'"
             shutdown_timeout="$val" ;;
    --config) [ -n "$val" ] || die_usage "--config needs a file"
              [ -f "$val" ] || { echo "launch/train.sh: error: config file '$val' not found" >&2; exit 1; }
              config="$val" ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${NERF_DIST_NO_VENV:-}" ]; then
  # NOTE: pass the extras explicitly: a bare `source` would hand it this script's arguments.
  # shellcheck source=launch/setup_env.sh
  source "$root/launch/setup_env.sh" ""
  set -euo pipefail  # setup_env.sh switches these off for interactive shells
fi
[ "$cpu" = 1 ] && export CUDA_VISIBLE_DEVICES=""

cfg_args=()
[ -n "$config" ] && cfg_args=(--config "$config")
# NOTE: the user's overrides come last, so an explicit train.resume wins over this default.
train_args=("${cfg_args[@]}" train.resume=auto "${overrides[@]}")

# One python start answers everything before the ranks start: whether the config and overrides
# load (a bad key fails here, once, naming the key, instead of on every rank after the process
# group is up), the run folder they name, the visible GPUs and what this torchrun supports.
probe=$(python - "${train_args[@]}" <<'EOF'
import sys
import torch
import torch.distributed.run as run
from nerf_dist.config import ConfigError, load_config
args = sys.argv[1:]
config = args[1] if args[:1] == ["--config"] else None
try:
    cfg = load_config(config, args[2:] if config else args)
except (ConfigError, ValueError, OSError) as e:
    print(f"launch/train.sh: error: {e}", file=sys.stderr)
    sys.exit(1)
helptext = run.get_args_parser().format_help()
print(torch.cuda.device_count() if torch.cuda.is_available() else 0,
      int("--signals_to_handle" in helptext), int("--shutdown_timeout" in helptext))
print(cfg.run.dir)
EOF
) || exit 1
read -r n_gpus has_signals has_shutdown <<<"$(printf '%s\n' "$probe" | tail -n 2 | head -n 1)"
run_dir="$(printf '%s\n' "$probe" | tail -n 1)"

# shellcheck source=launch/ranks.sh
source "$(dirname "${BASH_SOURCE[0]}")/ranks.sh"
choose_ranks launch/train.sh
# NOTE: dist.init already keys each restart of the group apart in torchrun's shared store
# (pytorch#135712, still in torch 2.13); with this set, worker rank 0 also hosts a fresh store for
# every restart, which holds where restart counts differ (elastic --nnodes=MIN:MAX).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

run_args=(--standalone --nnodes=1 --nproc_per_node="$n_ranks" --max_restarts="$max_restarts")
if [ "$has_signals" = 1 ]; then
  # NOTE: torchrun's agent dies on SIGUSR1 unless it handles it; handled, it forwards the signal
  # to every rank (which stop at a step boundary with a checkpoint).
  run_args+=("--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
else
  echo "launch/train.sh: note: this torchrun cannot forward SIGUSR1 (torch >= 2.9 can); SIGTERM still stops with a checkpoint" >&2
fi
[ "$has_shutdown" = 1 ] && run_args+=(--shutdown_timeout="$shutdown_timeout")

echo "launch/train.sh: $n_ranks $where rank(s), $OMP_NUM_THREADS thread(s) each, max restarts $max_restarts" >&2

status_mtime() { stat -c %y "$run_dir/status.json" 2>/dev/null || echo none; }
before="$(status_mtime)"
interrupted=0 agent=""
# shellcheck disable=SC2317  # called from the traps below
forward() { if [ -n "$agent" ]; then kill -s "$1" "$agent" 2>/dev/null || true; fi; }
trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap 'forward HUP' HUP
trap 'interrupted=1; forward INT' INT
# NOTE: torchrun runs in its own process group (set -m), so a signal reaches it exactly once: from
# the traps above. Without that, Ctrl-C would hit it twice (terminal + trap) and a background job
# would start with SIGINT ignored (its ranks would then ignore Ctrl-C).
set -m
python -m torch.distributed.run "${run_args[@]}" -m nerf_dist train "${train_args[@]}" &
agent=$!
set +m
echo "launch/train.sh: torchrun agent pid $agent (SIGUSR1/SIGTERM to it or to this script ($$): stop with a checkpoint)" >&2
while :; do
  rc=0
  wait "$agent" || rc=$?
  # NOTE: `wait` also returns when a trapped signal arrives; keep waiting while the agent lives.
  kill -0 "$agent" 2>/dev/null || break
done
trap - TERM USR1 HUP INT

# NOTE: torchrun's own exit code is 1 for a rank that exited 75 as for one that failed; the run's
# status.json (written by rank 0) tells them apart. --ended: torchrun has returned, so every rank
# has exited, and a status still saying "running" is a rank 0 that died (SIGKILL, out of memory):
# it is recorded as "died". The mtime is read first, as that record changes it.
after="$(status_mtime)"
st=0
python -m nerf_dist status --ended --run-dir "$run_dir" || st=$?
if [ "$interrupted" = 1 ]; then
  exit 130
elif [ "$after" = "$before" ]; then
  # NOTE: this run never wrote its status (it failed before training started), so what is there
  # is an earlier run's and must not turn a failure into "finished" or "resume me".
  echo "launch/train.sh: error: torchrun exited $rc before the run wrote $run_dir/status.json; see the log above" >&2
  exit 1
elif [ "$st" = 75 ]; then
  exit 75
elif [ "$st" = 0 ] && [ "$rc" = 0 ]; then
  exit 0
elif [ "$st" = 0 ]; then
  # NOTE: status.json says finished but torchrun failed (a rank failed after the end of training).
  echo "launch/train.sh: error: torchrun exited $rc although the run's status says finished; see the log above" >&2
  exit 1
else
  exit 1
fi
