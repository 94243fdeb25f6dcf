#!/usr/bin/env bash
# Run a jaxft recipe on the GPUs of one machine (all visible GPUs form the mesh).
#
#   launch/gpu.sh configs/condense.py:seed --config.mesh.shape.fsdp=8 --config.mesh.shape.data=1
#
# For several machines, start this on each with JAXFT_COORDINATOR=host0:1234,
# JAXFT_NUM_PROCESSES and JAXFT_PROCESS_ID set; jax.distributed.initialize()
# reads them through its standard environment variables.
set -euo pipefail
config=${1:?config file[:preset]}; shift
cd "$(dirname "$0")/.."
[ -d .venv ] || { python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[cuda]'; }
. .venv/bin/activate
# Let XLA take most of the GPU memory up front but leave room for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
extra=()
if [ -n "${JAXFT_COORDINATOR:-}" ]; then
  : "${JAXFT_NUM_PROCESSES:?}" "${JAXFT_PROCESS_ID:?}"
  extra=(--distributed)
fi
exec python -m jaxft.main "${extra[@]}" --config "$config" "$@"
