#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install nerf_dist into it.
# Where torch is already importable (e.g. a GPU machine's CUDA build) it is kept. Otherwise
# torch==2.13.0 is installed first: on a machine without CUDA (no working nvidia-smi) from the
# PyTorch CPU wheel index when that answers within a few seconds, so pip never pulls a multi-GB
# CUDA build; from the default index (PyPI, or pip's configured index and find-links) when it does
# not (an offline or registry-only network), or on a machine with CUDA.
# Usage: source launch/setup_env.sh [extras]   (extras: e.g. "test")
# Environment:
#   NERF_DIST_VENV              the virtual environment folder (default: .venv in the repository)
#   NERF_DIST_TORCH_CPU_INDEX   the CPU wheel index (default https://download.pytorch.org/whl/cpu;
#                               empty: always the default index)
#   NERF_DIST_PROBE_TIMEOUT_S   seconds the CPU index has to answer (default 5)
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${NERF_DIST_VENV:-$_root/.venv}"
_extras="${1:-}"
if [ ! -x "$_venv/bin/python" ]; then
  # NOTE: where the system Python already has torch (e.g. a GPU machine's CUDA build), the venv
  # sees it through --system-site-packages and keeps it; otherwise the venv is isolated.
  if python3 -c "import torch" >/dev/null 2>&1; then
    echo "[setup] creating virtual environment $_venv (keeping the system's torch)" >&2
    python3 -m venv --system-site-packages "$_venv"
  else
    echo "[setup] creating virtual environment $_venv" >&2
    python3 -m venv "$_venv"
  fi
fi
_py="$_venv/bin/python"
if ! "$_py" -c "import torch" >/dev/null 2>&1; then
  _cpu_index="${NERF_DIST_TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}"
  _index_args=()
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] installing torch==2.13.0 from the default index (CUDA is present: its build)" >&2
  elif [ -z "$_cpu_index" ]; then
    echo "[setup] installing torch==2.13.0 from the default index (NERF_DIST_TORCH_CPU_INDEX=)" >&2
  # NOTE: probe first, with a short timeout: pip itself would retry an unreachable index for
  # minutes (5 retries, 15 s timeouts) before it gives up. A HEAD of the index's torch page that
  # succeeds (a proxy's 403 does not) is what pip will need.
  elif "$_py" - "$_cpu_index" "${NERF_DIST_PROBE_TIMEOUT_S:-5}" <<'EOF' >/dev/null 2>&1
import sys
import urllib.request
url, timeout = sys.argv[1].rstrip("/") + "/torch/", float(sys.argv[2])
urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
EOF
  then
    echo "[setup] installing torch==2.13.0 (CPU build) from $_cpu_index" >&2
    _index_args=(--index-url "$_cpu_index")
  else
    echo "[setup] $_cpu_index did not answer within ${NERF_DIST_PROBE_TIMEOUT_S:-5} s:" \
         "installing torch==2.13.0 from the default index (on Linux x86_64, PyPI's is the CUDA" \
         "build)" >&2
  fi
  "$_py" -m pip install -q ${_index_args[@]+"${_index_args[@]}"} "torch==2.13.0"
fi
_stamp="$_venv/.nerf_dist_installed${_extras:+_$_extras}"
if [ ! -f "$_stamp" ] || [ "$_root/pyproject.toml" -nt "$_stamp" ]; then
  echo "[setup] installing nerf_dist${_extras:+[$_extras]} (editable)" >&2
  "$_py" -m pip install -q -e "$_root${_extras:+[$_extras]}"
  touch "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
set +euo pipefail
