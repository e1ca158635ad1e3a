#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create (or reuse) a TPU VM or a queued resource, copy and install this checkout
# on every worker, run `python -m tlv_jax.train` on all workers at once, stream the logs, stop on the first failure.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --type v5p-64 --config configs/finetune_qwen25_3b_group16.py \
#       --workdir gs://BUCKET/run1 [--project P] [--version tpu-ubuntu2204-base] [--queued] [--spot] \
#       [--dry-run] [-- --config.optim.lr=2e-5 ...]
#
# --dry-run prints the exact commands instead of running them. Everything after `--` goes to the trainer.
# JAX finds the other workers by itself on Cloud TPU (jax.distributed.initialize() with no arguments).
set -euo pipefail

NAME="" ZONE="" TYPE="" CONFIG="" WORKDIR="" PROJECT="" VERSION="tpu-ubuntu2204-base"
QUEUED=0 SPOT=0 DRY=0 EXTRA=()
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2;;
    --zone) ZONE="$2"; shift 2;;
    --type) TYPE="$2"; shift 2;;
    --config) CONFIG="$2"; shift 2;;
    --workdir) WORKDIR="$2"; shift 2;;
    --project) PROJECT="$2"; shift 2;;
    --version) VERSION="$2"; shift 2;;
    --queued) QUEUED=1; shift;;
    --spot) SPOT=1; shift;;
    --dry-run) DRY=1; shift;;
    -h|--help) usage 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage 2;;
  esac
done
for v in NAME ZONE TYPE CONFIG WORKDIR; do
  [[ -n "${!v}" ]] || { echo "tpu_pod.sh: --$(echo "$v" | tr 'A-Z' 'a-z') is required" >&2; exit 2; }
done

GC=(gcloud compute tpus)
PROJ=(); [[ -n "$PROJECT" ]] && PROJ=(--project "$PROJECT")
SPOT_FLAG=(); [[ $SPOT == 1 ]] && SPOT_FLAG=(--spot)
REMOTE_DIR="tlv_jax"
ARCHIVE="/tmp/tlv_jax-${NAME}.tar.gz"

run() {  # prints the command; runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ $DRY == 1 ]] || "$@"
}

# 1. The TPU: reuse it when it exists, else create it (directly or as a queued resource).
if [[ $DRY == 0 ]] && "${GC[@]}" tpu-vm describe "$NAME" --zone "$ZONE" "${PROJ[@]}" >/dev/null 2>&1; then
  echo "reusing TPU $NAME"
elif [[ $QUEUED == 1 ]]; then
  run "${GC[@]}" queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" "${PROJ[@]}" \
      --accelerator-type "$TYPE" --runtime-version "$VERSION" "${SPOT_FLAG[@]}"
  if [[ $DRY == 0 ]]; then
    until "${GC[@]}" queued-resources describe "$NAME" --zone "$ZONE" "${PROJ[@]}" --format='value(state.state)' \
        | grep -q ACTIVE; do echo "waiting for queued resource $NAME..."; sleep 30; done
  fi
else
  run "${GC[@]}" tpu-vm create "$NAME" --zone "$ZONE" "${PROJ[@]}" --accelerator-type "$TYPE" \
      --version "$VERSION" "${SPOT_FLAG[@]}"
fi

# 2. This checkout on every worker, installed with the TPU build of JAX.
run git archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${GC[@]}" tpu-vm scp "$ARCHIVE" "$NAME:/tmp/tlv_jax.tar.gz" --zone "$ZONE" "${PROJ[@]}" --worker=all
run "${GC[@]}" tpu-vm ssh "$NAME" --zone "$ZONE" "${PROJ[@]}" --worker=all --command \
    "set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/tlv_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m pip install -q -e . 'jax[tpu]'"

# 3. Train on all workers; ssh streams every worker's output and fails if any worker fails.
TRAIN="cd $REMOTE_DIR && python3 -m tlv_jax.train --config $CONFIG --workdir $WORKDIR"
for a in "${EXTRA[@]}"; do TRAIN+=" $(printf '%q' "$a")"; done
run "${GC[@]}" tpu-vm ssh "$NAME" --zone "$ZONE" "${PROJ[@]}" --worker=all --command "$TRAIN"
