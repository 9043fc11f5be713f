#!/usr/bin/env bash
# Run the test suite in .venv (created and filled on first use). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh test
exec python -m pytest -q -ra "$@"
