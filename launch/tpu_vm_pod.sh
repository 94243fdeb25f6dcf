#!/usr/bin/env bash
# Run a jaxft recipe on every worker of a Cloud TPU VM slice (e.g. v5e-8, v4-32).
#
#   launch/tpu_vm_pod.sh NAME ZONE configs/lm.py:default --config.model.path=Qwen/Qwen3-0.6B ...
#
# Installs jaxft[tpu] from this checkout on each worker, then starts the same
# command on all of them; jax.distributed.initialize() finds the peers from the
# TPU metadata. Checkpoints should go to a gs:// bucket (--config.checkpoint.dir)
# so a preempted slice resumes where it stopped: TPU VMs send SIGTERM first, and
# jaxft saves a checkpoint before exiting.
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; config=${3:?config file[:preset]}; shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
workdir=${JAXFT_WORKDIR:-runs/$(basename "${config%%:*}" .py)}

gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$repo" "$name":~/jaxft
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e; cd ~/jaxft
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e '.[tpu]'
  python -m jaxft.main --distributed --config $config --workdir $workdir $*
"
