#!/usr/bin/env bash
# Cloud TPU VM slices (v4-32, v5litepod-16, ...): create, set up, run jaxft on every worker, watch, stop, delete.
#
#   launch/tpu_vm_pod.sh [--dry-run] COMMAND --name NAME --zone ZONE [--project PROJECT] [options] [-- MAIN_ARGS...]
#
#   create  --type ACCELERATOR --version RUNTIME [--spot | --preemptible] [--queued]
#           plain `tpu-vm create`, or with --queued a queued resource (waits in Google's queue
#           for capacity; --spot only, queued resources have no --preemptible)
#   setup   [--git URL [--ref REF]]
#           puts the code in ~/jaxft on every worker (default: this checkout's tracked files,
#           with their uncommitted edits; --git: a clone at REF) and installs .[tpu] and gcsfs
#   run     --config FILE[:PRESET] --checkpoint-dir gs://BUCKET/PATH [--workdir DIR] [--run-id ID]
#           [--mesh AXIS=N,...] [-- ARGS]
#           starts `python -m jaxft.main --distributed` detached on all workers (it survives a
#           dropped ssh), then streams worker 0's log until the run ends. ARGS go to jaxft.main.
#           --mesh sets config.mesh.shape (axes data, fsdp, tensor; one may be -1); without it the
#           config's mesh holds (default data=-1: every chip a data replica).
#   logs    --run-id ID      streams worker 0's log again
#   status  [--queued] [--run-id ID]   the slice's state; with --run-id whether each worker still runs it
#   stop    --run-id ID      SIGTERM on every worker: jaxft saves a checkpoint and exits
#   delete  [--queued]       deletes the slice (with --queued, the queued resource and its slice)
#
# The condense seed on a v5litepod-16 (4 hosts x 4 chips of 16 GiB):
#   launch/tpu_vm_pod.sh run --name pod1 --zone Z --config configs/condense.py:seed --checkpoint-dir gs://B/c1 --mesh data=1,fsdp=8,tensor=2
# XLA plans 9.7 GiB a chip for it; data=-1 (the default) and fsdp=16 cannot split its batch of 8 over 16
# chips (fsdp=16 plans 26.5 GiB). tests/test_slice_plan.py compiles this mesh for 16 devices.
#
# --dry-run (or DRY_RUN=1) prints every command (gcloud and local) instead of running it.
# --name/--zone/--project default to $TPU_NAME, $TPU_ZONE, $TPU_PROJECT.
#
# Checkpoints: on a multi-host slice every worker writes its shards of one Orbax checkpoint, so
# the directory must be one they all share: a gs:// bucket. Preemption: a TPU VM gets SIGTERM
# first and jaxft saves a checkpoint before exiting; a preempted spot slice is gone with its disks
# but not the bucket: after `delete`, `create`, `setup`, the same `run` command resumes from the
# latest checkpoint there. Orbax writes arrays to gs:// through tensorstore and its metadata
# through etils.epath, which needs gcsfs (installed by `setup`); the slice's service account
# needs read/write on the bucket (roles/storage.objectUser), ideally in the slice's region.
# The run id (default: the last part of --checkpoint-dir) names the log and pid files in
# ~/jaxft-runs/ on the workers; the workdir (TensorBoard, metrics, report, export) defaults to
# ~/jaxft-runs/ID on the workers' disks.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
dry_run=${DRY_RUN:-0}
name=${TPU_NAME:-}; zone=${TPU_ZONE:-}; project=${TPU_PROJECT:-}
command=""; type=""; version=""; spot=0; preemptible=0; queued=0; git_url=""; git_ref="main"
config=""; ckpt=""; workdir=""; run_id=""; mesh=""; main_args=()

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --project) need_value "$@"; project=$2; shift ;;
    --type) need_value "$@"; type=$2; shift ;;
    --version) need_value "$@"; version=$2; shift ;;
    --spot) spot=1 ;;
    --preemptible) preemptible=1 ;;
    --queued) queued=1 ;;
    --git) need_value "$@"; git_url=$2; shift ;;
    --ref) need_value "$@"; git_ref=$2; shift ;;
    --config) need_value "$@"; config=$2; shift ;;
    --checkpoint-dir) need_value "$@"; ckpt=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --run-id) need_value "$@"; run_id=$2; shift ;;
    --mesh) need_value "$@"; mesh=$2; shift ;;
    --) shift; main_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$command" ] || die "unexpected argument '$1' (arguments for jaxft.main go after --)"; command=$1 ;;
  esac
  shift
done

[ -n "$command" ] || die "no command (create, setup, run, logs, status, stop, delete; see --help)"
[ -n "$name" ] || die "--name (or TPU_NAME) is required"
[ -n "$zone" ] || die "--zone (or TPU_ZONE) is required"

# One word, quoted for a shell only when it needs it (readable dry runs that can be pasted).
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_all() { local out="" w; for w in "$@"; do out+="$(q "$w") "; done; printf '%s' "${out% }"; }
# Print a command; run it unless this is a dry run.
run_cmd() {
  echo "+ $(quote_all "$@")"
  [ "$dry_run" = 1 ] || "$@"
}
where=(--zone="$zone"); [ -z "$project" ] || where+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
ssh_all() { run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"; }
ssh_0() { run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=0 --command="$1"; }
need_run_id() { [ -n "$run_id" ] || die "--run-id is required for $command"; }
safe_id() { [[ $1 =~ ^[A-Za-z0-9._-]+$ ]] || die "run id '$1' may only hold letters, digits, '.', '_' and '-'"; }
stream_log() {  # worker 0's log, until its jaxft process ends
  ssh_0 "log=~/jaxft-runs/$run_id.log; pid=\$(cat ~/jaxft-runs/$run_id.pid); tail -n 200 -F --pid=\$pid \$log"
}

case $command in
  create)
    [ -n "$type" ] || die "create needs --type (e.g. v5litepod-16, v4-32)"
    [ -n "$version" ] || die "create needs --version (the TPU runtime, e.g. v2-alpha-tpuv5-lite, tpu-ubuntu2204-base)"
    [ $((spot + preemptible)) -le 1 ] || die "--spot and --preemptible exclude each other"
    if [ "$queued" = 1 ]; then
      [ "$preemptible" = 0 ] || die "queued resources take --spot, not --preemptible"
      args=("${qr[@]}" create "$name" --node-id="$name" "${where[@]}" --accelerator-type="$type" --runtime-version="$version")
    else
      args=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version")
      [ "$preemptible" = 0 ] || args+=(--preemptible)
    fi
    [ "$spot" = 0 ] || args+=(--spot)
    run_cmd "${args[@]}"
    ;;
  setup)
    install="cd ~/jaxft && python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q -e '.[tpu]' gcsfs"
    if [ -n "$git_url" ]; then
      url_q=$(q "$git_url"); ref_q=$(q "$git_ref")
      # fetch + detached FETCH_HEAD: a branch, a tag or a commit, and a re-run moves to the newest branch head
      ssh_all "set -e; [ -d ~/jaxft/.git ] || git clone -q $url_q ~/jaxft; git -C ~/jaxft fetch -q origin $ref_q; git -C ~/jaxft checkout -q --detach FETCH_HEAD; $install"
    else
      repo=$(cd "$(dirname "$0")/.." && pwd)
      tarball=${TMPDIR:-/tmp}/jaxft-src.tar.gz
      echo "+ (cd $repo && git ls-files -z | tar --null -T - -czf $tarball)"
      [ "$dry_run" = 1 ] || (cd "$repo" && git ls-files -z | tar --null -T - -czf "$tarball")
      run_cmd "${tpu[@]}" scp "$tarball" "$name":jaxft-src.tar.gz "${where[@]}" --worker=all
      ssh_all "set -e; mkdir -p ~/jaxft && tar -xzf ~/jaxft-src.tar.gz -C ~/jaxft; $install"
    fi
    ;;
  run)
    [ -n "$config" ] || die "run needs --config FILE[:PRESET]"
    [ -n "$ckpt" ] || die "run needs --checkpoint-dir (gs://BUCKET/PATH, so a preempted slice can resume)"
    [[ $ckpt == gs://* ]] || echo "warning: --checkpoint-dir $ckpt is not gs://: each worker writes its own disk, which" \
      "works on a single-host slice only and is lost with a deleted or preempted slice" >&2
    run_id=${run_id:-$(basename "$ckpt")}
    safe_id "$run_id"
    workdir=${workdir:-"~/jaxft-runs/$run_id"}
    if [[ $workdir == "~/"* ]]; then wd="~/$(q "${workdir#\~/}")"; else wd=$(q "$workdir"); fi  # ~ expands remotely
    cmd="python -m jaxft.main --distributed --config $(q "$config") --workdir $wd $(q "--config.checkpoint.dir=$ckpt")"
    if [ -n "$mesh" ]; then
      [[ $mesh =~ ^((data|fsdp|tensor)=-?[0-9]+,)*(data|fsdp|tensor)=-?[0-9]+$ ]] \
        || die "--mesh '$mesh': give AXIS=N pairs joined by commas, axes data, fsdp, tensor (e.g. data=1,fsdp=8,tensor=2)"
      IFS=, read -ra pairs <<< "$mesh"
      for pair in "${pairs[@]}"; do cmd+=" --config.mesh.shape.$pair"; done
    fi
    [ ${#main_args[@]} -eq 0 ] || cmd+=" $(quote_all "${main_args[@]}")"
    dir="~/jaxft-runs"
    ssh_all "set -e; mkdir -p $dir; cd ~/jaxft; . .venv/bin/activate; \
if [ -f $dir/$run_id.pid ] && kill -0 \$(cat $dir/$run_id.pid) 2>/dev/null; then echo run $run_id is already running >&2; exit 1; fi; \
echo \"== run $run_id started \$(date -u +%FT%TZ) on \$(hostname) ==\" >> $dir/$run_id.log; \
setsid nohup $cmd >> $dir/$run_id.log 2>&1 < /dev/null & echo \$! > $dir/$run_id.pid"
    echo "run id: $run_id (logs: launch/tpu_vm_pod.sh logs --name $name --zone $zone --run-id $run_id)"
    stream_log
    ;;
  logs)
    need_run_id; safe_id "$run_id"
    stream_log
    ;;
  status)
    if [ "$queued" = 1 ]; then
      run_cmd "${qr[@]}" describe "$name" "${where[@]}" --format="value(state.state)"
    fi
    run_cmd "${tpu[@]}" describe "$name" "${where[@]}" --format="value(state,health,acceleratorType)"
    if [ -n "$run_id" ]; then
      safe_id "$run_id"
      ssh_all "if kill -0 \$(cat ~/jaxft-runs/$run_id.pid 2>/dev/null) 2>/dev/null; then echo \"\$(hostname): $run_id running\"; else echo \"\$(hostname): $run_id not running\"; fi; tail -n 1 ~/jaxft-runs/$run_id.log 2>/dev/null || true"
    fi
    ;;
  stop)
    need_run_id; safe_id "$run_id"
    ssh_all "kill -TERM \$(cat ~/jaxft-runs/$run_id.pid)"
    ;;
  delete)
    if [ "$queued" = 1 ]; then
      run_cmd "${qr[@]}" delete "$name" "${where[@]}" --force --quiet
    else
      run_cmd "${tpu[@]}" delete "$name" "${where[@]}" --quiet
    fi
    ;;
  *) die "unknown command '$command' (create, setup, run, logs, status, stop, delete)" ;;
esac
