#!/usr/bin/env bash
# Runs experiments.train locally, once per seed, forwarding every other flag.
#   launch/local.sh --seeds="0 1 2" --algorithm=fedadam --server_lr=0.03
# Each seed writes to runs/<name>-seed<seed>/ unless --workdir is given
# (then <workdir>/seed<seed>). No training logic lives here.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="0"
workdir=""
args=()
for arg in "$@"; do
  case "$arg" in
    --seeds=*) seeds="${arg#--seeds=}" ;;
    --workdir=*) workdir="${arg#--workdir=}" ;;
    *) args+=("$arg") ;;
  esac
done
for seed in $seeds; do
  out=()
  if [[ -n "$workdir" ]]; then out=("--workdir=$workdir/seed$seed"); fi
  python -m experiments.train --seed="$seed" "${out[@]}" "${args[@]}"
done
