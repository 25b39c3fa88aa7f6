#!/bin/bash
# A dmlx run on every worker of a Cloud TPU VM slice (v4-32, v5e-16, ...).
#
#   launch/cluster/tpu_vm.sh <tpu-name> <zone> <config> <workdir> [train.py flags...]
#
# Runs, on all workers at once (--worker=all), the same launch/train.py
# command with --distributed=on: jax.distributed finds the slice's workers
# and this worker's id itself. Set-up, once per slice (clones and installs
# dmlx on every worker; DMLX_REPO defaults to this checkout's origin):
#
#   launch/cluster/tpu_vm.sh <tpu-name> <zone> --setup
#
# The work directory must be one every worker sees: a Filestore / NFS mount
# or a gcsfuse-mounted bucket (dmlx writes with ordinary file calls).
# A preemption notice (SIGTERM) makes every worker checkpoint the same step
# and exit with 75; running the same command again resumes.
set -eu
TPU=${1:?usage: tpu_vm.sh <tpu-name> <zone> <config> <workdir> [flags...] | <tpu-name> <zone> --setup}
ZONE=${2:?usage: tpu_vm.sh <tpu-name> <zone> <config> <workdir> [flags...]}
shift 2
DIR=${DMLX_DIR:-dmlx}
if [ "${1:-}" = "--setup" ]; then
  REPO=${DMLX_REPO:-$(git config --get remote.origin.url)}
  exec gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
    test -d $DIR || git clone $REPO $DIR; cd $DIR && git pull --ff-only &&
    pip install -q -e '.[tpu]'"
fi
CONFIG=${1:?usage: tpu_vm.sh <tpu-name> <zone> <config> <workdir> [flags...]}
WORKDIR=${2:?usage: tpu_vm.sh <tpu-name> <zone> <config> <workdir> [flags...]}
shift 2
FLAGS=""
if [ $# -gt 0 ]; then printf -v FLAGS ' %q' "$@"; fi
exec gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd $DIR && python launch/train.py --config=$(printf %q "$CONFIG") \
      --workdir=$(printf %q "$WORKDIR") --distributed=on$FLAGS"
