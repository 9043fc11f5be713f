#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install nerf_dist into it.
# On a machine without CUDA it installs the CPU wheel torch==2.13.0 first, so pip never pulls a
# multi-GB CUDA build; where torch is already importable (e.g. a GPU machine's CUDA build) it is kept.
# Usage: source launch/setup_env.sh [extras]   (extras: e.g. "test")
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
  echo "[setup] installing torch==2.13.0 (CPU build; on a GPU machine install a CUDA build first)" >&2
  "$_py" -m pip install -q "torch==2.13.0"
fi
_stamp="$_venv/.nerf_dist_installed${_extras:+_$_extras}"
if [ ! -f "$_stamp" ] || [ "$_root/pyproject.toml" -nt "$_stamp" ]; then
  echo "[setup] installing nerf_dist${_extras:+[$_extras]} (editable)" >&2
  "$_py" -m pip install -q -e "$_root${_extras:+[$_extras]}"
  touch "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
set +euo pipefail
