#!/usr/bin/env bash
# Runs experiments.train on every worker of a Cloud TPU pod slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#     --workdir=gs://my-bucket/runs/emnist --dataset=emnist --model=cnn
#
# Each worker runs the same command; `--auto_distributed` lets
# jax.distributed.initialize() find the pod's processes itself. The clients
# of a round are sharded over all chips ('sharded' execution is the default
# with several devices), each host packing only its own clients' data.
# --workdir must be shared by all workers (a GCS bucket; orbax writes it).
# Set SETUP=1 once to clone/install the repo on the workers first.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_URL="${REPO_URL:-https://example.invalid/your/fork/fedjax_ext.git}"
REPO_DIR="${REPO_DIR:-fedjax_ext}"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "$1"
}
if [[ "${SETUP:-0}" == 1 ]]; then
  ssh_all "git clone $REPO_URL $REPO_DIR || true; cd $REPO_DIR && \
    pip install -q -e . 'jax[tpu]'"
fi
flags=$(printf ' %q' "$@")
ssh_all "cd $REPO_DIR && python3 -m experiments.train --auto_distributed$flags"
