#!/usr/bin/env bash
# Sourced by launch/train.sh and launch/render.sh: how many ranks to start on this machine.
# choose_ranks SCRIPT_NAME: reads n_gpus (visible GPUs) and n_ranks (--nproc, may be empty);
# sets n_ranks (one per GPU by default, else 1 CPU rank), where (GPU|CPU) and OMP_NUM_THREADS
# (the cores shared out between the ranks, unless already set). Exits 2 on more ranks than GPUs.
# shellcheck disable=SC2034,SC2154  # inputs and outputs are the caller's variables
choose_ranks() {
  local me="$1"
  if [ "$n_gpus" -gt 0 ]; then
    [ -n "$n_ranks" ] || n_ranks="$n_gpus"
    if [ "$n_ranks" -gt "$n_gpus" ]; then
      echo "$me: error: --nproc $n_ranks but only $n_gpus GPU(s) visible (NCCL needs one GPU per rank); use --nproc $n_gpus, or --cpu for CPU ranks" >&2
      exit 2
    fi
    where="GPU"
  else
    [ -n "$n_ranks" ] || n_ranks=1
    where="CPU"
  fi
  if [ -z "${OMP_NUM_THREADS:-}" ]; then
    local cores
    cores=$(nproc 2>/dev/null || echo 1)
    export OMP_NUM_THREADS=$(( cores / n_ranks > 0 ? cores / n_ranks : 1 ))
  fi
}
