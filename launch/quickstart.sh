#!/usr/bin/env bash
# Quick start: set up .venv, then generate the demo scene (if absent), train on it with
# configs/demo.yaml, evaluate the test split, and print where the report, images and video are.
# Extra arguments are config overrides, e.g. train.steps=500 (the quick start stops on train.steps).
set -euo pipefail
cd "$(dirname "$0")/.."
# NOTE: pass the extras explicitly: a bare `source` would hand it this script's arguments.
source launch/setup_env.sh video
exec nerf-dist demo --config configs/demo.yaml "$@"
