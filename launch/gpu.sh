#!/usr/bin/env bash
# Run a jaxft recipe on the GPUs of one machine (all visible GPUs form the mesh).
#
#   launch/gpu.sh [--dry-run] configs/condense.py:seed --config.mesh.shape.fsdp=8 --config.mesh.shape.data=1
#
# --dry-run (or DRY_RUN=1) prints the environment and the commands instead of running them.
# JAXFT_WORKDIR sets --workdir (default: jaxft.main's runs/<recipe>). Several machines without
# SLURM: start this on each with JAXFT_COORDINATOR=host0:1234, JAXFT_NUM_PROCESSES and
# JAXFT_PROCESS_ID set (jaxft.main --distributed reads them); under SLURM use launch/slurm_gpu.sbatch.
set -euo pipefail
dry_run=${DRY_RUN:-0}
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
config=${1:?usage: launch/gpu.sh [--dry-run] CONFIG_FILE[:PRESET] [--config.key=value ...]}; shift
cd "$(dirname "$0")/.."
show() { local w out=""; for w in "$@"; do [[ $w =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]] && out+="$w " || out+="'${w//\'/\'\\\'\'}' "; done; echo "+ ${out% }"; }

venv=${JAXFT_VENV:-.venv}
if [ ! -d "$venv" ]; then
  show python3 -m venv "$venv"; show pip install -q -e '.[cuda]'
  if [ "$dry_run" != 1 ]; then python3 -m venv "$venv" && . "$venv/bin/activate" && pip install -q -e '.[cuda]'; fi
fi
# Let XLA take most of the GPU memory up front but leave room for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
cmd=(python -m jaxft.main)
if [ -n "${JAXFT_COORDINATOR:-}" ]; then
  for var in JAXFT_NUM_PROCESSES JAXFT_PROCESS_ID; do
    [ -n "${!var:-}" ] || { echo "error: JAXFT_COORDINATOR is set but $var is not" >&2; exit 2; }
  done
  cmd+=(--distributed)
fi
cmd+=(--config "$config")
[ -z "${JAXFT_WORKDIR:-}" ] || cmd+=(--workdir "$JAXFT_WORKDIR")
cmd+=("$@")
if [ "$dry_run" = 1 ]; then
  for var in XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS JAXFT_COORDINATOR JAXFT_NUM_PROCESSES JAXFT_PROCESS_ID; do
    [ -z "${!var:-}" ] || echo "$var=${!var}"
  done
  show source "$venv/bin/activate"
  show "${cmd[@]}"
  exit 0
fi
. "$venv/bin/activate"
exec "${cmd[@]}"
