#!/usr/bin/env bash
# TensorBoard for a run folder, a folder of runs, or an s3:// (any fsspec URL) prefix.
# `launch/tensorboard.sh --help` for options, examples and exit codes.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tensorboard.sh [--port P] [--host H] TARGET [-- tensorboard options]

Serve TensorBoard for TARGET:
  a run folder (holds config.yaml)   its log.dir when the run set one, else RUN_DIR/tb
  any other local folder             as it is (a tb folder, or e.g. runs/ to compare runs)
  s3://bucket/prefix (or another fsspec URL)
                                     read directly by TensorBoard's own object-store support
                                     (boto3, else fsspec + s3fs: pip install -e .[s3]); new
                                     events appear as TensorBoard polls the prefix (--reload S)

Credentials for s3:// come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, AWS_ENDPOINT_URL for a non-AWS endpoint) or ~/.aws, never
from the command line. NOTE: with TensorFlow installed, TensorBoard reads through TensorFlow's
file system instead, which needs tensorflow-io for s3://.

options:
  --port P        port (default 6006)
  --host H        address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all
                  interfaces, or keep 127.0.0.1 and tunnel: ssh -L 6006:localhost:6006 HOST)
  --reload S      seconds between reloads of the event files (default 30)
  -h, --help      this help
  -- ...          anything after -- goes to tensorboard unchanged

environment: NERF_DIST_NO_VENV=1 (use the tensorboard on PATH as it is; otherwise
launch/setup_env.sh prepares .venv, with the s3 extra for s3:// targets)

examples:
  launch/tensorboard.sh runs/lego
  launch/tensorboard.sh --port 6007 runs/
  AWS_PROFILE=lab launch/tensorboard.sh s3://bucket/lego/tb
  launch/tensorboard.sh --host 0.0.0.0 runs/lego -- --samples_per_plugin images=100

exit codes:
  0    TensorBoard stopped normally (Ctrl-C)
  1    TARGET not found, TensorBoard could not start (port in use, ...), missing packages
  2    usage error
EOF
}

die_usage() { echo "launch/tensorboard.sh: error: $*" >&2; echo "run launch/tensorboard.sh --help for usage" >&2; exit 2; }

port=6006 host=127.0.0.1 reload=30 target=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --port|--host|--reload) [ $# -ge 2 ] || die_usage "$1 needs a value"; opt="$1" val="$2"; shift 2 ;;
    --port=*|--host=*|--reload=*) opt="${1%%=*}" val="${1#*=}"; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) die_usage "unknown option $1 (tensorboard's own options go after --)" ;;
    *) [ -z "$target" ] || die_usage "one TARGET only, got '$target' and '$1'"; target="$1"; shift; continue ;;
  esac
  case "$opt" in
    --port) if ! [[ "$val" =~ ^[0-9]+$ ]] || [ "$val" -lt 1 ] || [ "$val" -gt 65535 ]; then
              die_usage "--port must be 1..65535, got '$val'"
            fi
            port="$val" ;;
    --reload) if ! [[ "$val" =~ ^[0-9]+$ ]] || [ "$val" -lt 1 ]; then
                die_usage "--reload must be whole seconds >= 1, got '$val'"
              fi
              reload="$val" ;;
    --host) [ -n "$val" ] || die_usage "--host needs an address"; host="$val" ;;
  esac
done
[ -n "$target" ] || die_usage "give a run folder, a log folder or an s3:// prefix"

is_url() { [[ "$1" == *://* ]]; }
if ! is_url "$target" && [ ! -d "$target" ]; then
  echo "launch/tensorboard.sh: error: '$target' is not a folder (nor a URL such as s3://bucket/prefix)" >&2
  exit 1
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${NERF_DIST_NO_VENV:-}" ]; then
  # NOTE: object-store targets need s3fs (the s3 extra); a bare `source` would forward our args.
  extras=""
  is_url "$target" && extras=s3
  # shellcheck source=launch/setup_env.sh
  source "$root/launch/setup_env.sh" "$extras"
  set -euo pipefail  # setup_env.sh switches these off for interactive shells
fi

logdir="$target"
if ! is_url "$target" && [ -f "$target/config.yaml" ]; then
  # NOTE: a run folder: its resolved config says where its events went (log.dir, default RUN/tb).
  logdir=$(python - "$target" <<'EOF'
import os
import sys
import yaml
run = sys.argv[1]
with open(os.path.join(run, "config.yaml")) as f:
    cfg = yaml.safe_load(f) or {}
print(((cfg.get("log") or {}).get("dir") or "") or os.path.join(run, "tb"))
EOF
  )
  if ! is_url "$logdir" && [ ! -d "$logdir" ]; then
    echo "launch/tensorboard.sh: error: run folder $target has no TensorBoard folder $logdir yet (has training started?)" >&2
    exit 1
  fi
fi

fast=()
if is_url "$logdir"; then
  # NOTE: TensorBoard's fast Rust loader reads local folders only; object stores go through its
  # Python loader (boto3 when installed, else fsspec: s3fs for s3://).
  fast=(--load_fast=false)
  python - "$logdir" <<'EOF' || exit 1
import importlib.util
import sys
url = sys.argv[1]
proto = url.split("://", 1)[0]
have = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
if proto == "s3" and have("boto3"):
    sys.exit(0)
if not have("fsspec"):
    sys.exit(f"launch/tensorboard.sh: error: {url} needs fsspec (pip install -e .[s3])")
import fsspec
try:
    fsspec.get_filesystem_class(proto)
except (ImportError, ValueError) as e:
    sys.exit(f"launch/tensorboard.sh: error: no file system for {proto}:// ({e}); "
             f"for s3:// pip install -e .[s3]")
EOF
fi

echo "launch/tensorboard.sh: logdir $logdir -> http://$host:$port/" >&2
exec python -m tensorboard.main --logdir "$logdir" --host "$host" --port "$port" --reload_interval "$reload" \
  "${fast[@]}" "${extra[@]}"
