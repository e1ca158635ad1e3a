#!/usr/bin/env bash
# Train on Cloud TPU: create (or reuse) the TPU, install this checkout into a Python virtual environment on every
# worker, run `python -m tlv_jax.train` on all workers of all slices at once, stream their output.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --type v5p-64 --config configs/finetune_qwen25_3b_group16.py \
#       --workdir gs://BUCKET/run1 [--project P] [--version V] [--queued] [--spot] [--num-slices N] \
#       [--restart-on-preemption] [--max-restarts K] [--delete-when-done] [--python 3.12] [--jax 'jax[tpu]'] \
#       [--log-dir DIR] [--dry-run] [-- --config.optim.lr=2e-5 ...]
#
# --type      v4-N, v5litepod-N (v5e), v5p-N or v6e-N; the software version (image) follows the generation:
#             v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#             (--version overrides it).
# --queued    create a queued resource instead of a TPU VM (waits for capacity); --spot asks for spot capacity.
# --num-slices N  N slices as one queued resource (--node-count N), trained as one run with the mesh's
#             data-parallel DCN axis set to N (--config.mesh.dcn_data=N).
# --restart-on-preemption  when the TPU is preempted or a worker dies, recreate (or wait for) the TPU and rerun;
#             the trainer resumes from the last checkpoint in the workdir. A run that ends on its own (0 done,
#             1/2 failed, 3 diverged, 130/143 stopped by a signal while the TPU is up) is not restarted. At most
#             --max-restarts (10) restarts.
# --delete-when-done  delete the TPU (or queued resource) after the run finished; otherwise it stays up, billed.
# --python, --jax  the worker environment: Python version for `uv venv` (>= 3.11; 3.12) and the JAX requirement.
# --log-dir   where each attempt's output of all workers is kept (~/.local/state/tlv_jax/tpu_pod/NAME).
# --dry-run   print the commands instead of running them. Everything after `--` goes to the trainer.
#
# The workdir must be gs://... for more than one worker or with --restart-on-preemption (a recreated TPU has new
# disks). Each worker's steps are in launch/tpu_worker.sh. JAX finds the other workers by itself on Cloud TPU.
# Exit status: 0 the run finished, the trainer's status when it failed, 1 a launcher error (or restarts used up),
# 2 a bad command line. TLV_POLL_SECONDS (30) and TLV_SETTLE_SECONDS (60) set how often the TPU's state is asked
# while waiting, and how long a trainer stopped by a signal waits for a preemption to show in that state.
# Needs bash >= 4.4 and gcloud (and git) where it runs.

set -euo pipefail

PROG=tpu_pod.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }
die() { echo "$PROG: $1" >&2; exit "${2:-1}"; }
note() { echo "$PROG: $*" >&2; }
((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404)) || die "needs bash >= 4.4 (this is $BASH_VERSION)"

NAME="" ZONE="" TYPE="" CONFIG="" WORKDIR="" PROJECT="" VERSION="" PYTHON="3.12" JAX="jax[tpu]" LOG_DIR=""
QUEUED=0 SPOT=0 DRY=0 SLICES=1 RESTART=0 MAX_RESTARTS=10 DELETE=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name|--zone|--type|--config|--workdir|--project|--version|--num-slices|--max-restarts|--python|--jax|--log-dir)
      [[ $# -ge 2 ]] || die "$1 needs a value" 2;;&
    --name) NAME="$2"; shift 2;;
    --zone) ZONE="$2"; shift 2;;
    --type) TYPE="$2"; shift 2;;
    --config) CONFIG="$2"; shift 2;;
    --workdir) WORKDIR="${2%/}"; shift 2;;
    --project) PROJECT="$2"; shift 2;;
    --version) VERSION="$2"; shift 2;;
    --num-slices) SLICES="$2"; shift 2;;
    --max-restarts) MAX_RESTARTS="$2"; shift 2;;
    --python) PYTHON="$2"; shift 2;;
    --jax) JAX="$2"; shift 2;;
    --log-dir) LOG_DIR="$2"; shift 2;;
    --queued) QUEUED=1; shift;;
    --spot) SPOT=1; shift;;
    --restart-on-preemption) RESTART=1; shift;;
    --delete-when-done) DELETE=1; shift;;
    --dry-run) DRY=1; shift;;
    -h|--help) usage 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "$PROG: unknown argument $1" >&2; usage 2;;
  esac
done
for v in NAME ZONE TYPE CONFIG WORKDIR; do
  [[ -n "${!v}" ]] || die "--${v,,} is required" 2
done
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name $NAME: use lower-case letters, digits and '-'" 2
[[ $SLICES =~ ^[1-9][0-9]*$ ]] || die "--num-slices $SLICES: not a positive number" 2
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts $MAX_RESTARTS: not a number" 2
[[ $PYTHON =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] || die "--python $PYTHON: tlv_jax needs Python 3.11 or newer (e.g. 3.12)" 2

# The generations: accelerator type -> TPU software version, and how many TensorCores the N in TYPE-N counts per
# chip (v4 and v5p count TensorCores, two a chip; v5e and v6e count chips). Multi-host slices have 4 chips a VM.
case "$TYPE" in
  v4-*)        IMAGE=tpu-ubuntu2204-base; CORES_PER_CHIP=2;;
  v5litepod-*) IMAGE=v2-alpha-tpuv5-lite; CORES_PER_CHIP=1;;
  v5p-*)       IMAGE=v2-alpha-tpuv5;      CORES_PER_CHIP=2;;
  v6e-*)       IMAGE=v2-alpha-tpuv6e;     CORES_PER_CHIP=1;;
  *) die "unknown TPU type '$TYPE'; known: v4-N (v4), v5litepod-N (v5e), v5p-N (v5p), v6e-N (v6e)" 2;;
esac
[[ ${TYPE##*-} =~ ^[1-9][0-9]*$ ]] || die "--type $TYPE: the part after '-' must be a number" 2
VERSION="${VERSION:-$IMAGE}"
CHIPS=$((${TYPE##*-} / CORES_PER_CHIP))
# Workers (VMs) of all slices, at most (single-host types have up to 8 chips on one VM).
WORKERS=$(( (CHIPS <= 8 && CORES_PER_CHIP == 1 ? 1 : (CHIPS + 3) / 4) * SLICES ))

((SLICES == 1)) || QUEUED=1  # multi-slice only exists as a queued resource
if [[ $WORKDIR != gs://* ]] && ((WORKERS > 1 || RESTART)); then
  die "--workdir $WORKDIR: use a gs:// workdir with several workers or --restart-on-preemption (every worker, and a recreated TPU, must see the same checkpoints)" 2
fi
TRAIN_ARGS=(--config "$CONFIG" --workdir "$WORKDIR")
if ((SLICES > 1)); then
  for a in "${EXTRA[@]}"; do
    [[ $a != --config.mesh.dcn_data* ]] || die "$a: --num-slices $SLICES sets --config.mesh.dcn_data" 2
  done
  TRAIN_ARGS+=("--config.mesh.dcn_data=$SLICES")
fi
TRAIN_ARGS+=("${EXTRA[@]}")

GC=(gcloud compute tpus)
LOC=(--zone "$ZONE"); [[ -z $PROJECT ]] || LOC+=(--project "$PROJECT")
SPOT_FLAG=(); ((SPOT == 0)) || SPOT_FLAG=(--spot)
if ((QUEUED)); then
  KIND=queued-resources WHAT="queued resource" FORMAT='value(state.state)'
  ALL=(--worker=all --node=all "--batch-size=$WORKERS")  # every worker at once: they train together
else
  ((WORKERS <= 64)) || die "--type $TYPE has more than 64 workers: use --queued" 2
  KIND=tpu-vm WHAT="TPU" FORMAT='value(state)'
  ALL=(--worker=all)
fi
ARCHIVE="${TMPDIR:-/tmp}/tlv_jax-$NAME.tar.gz"
LOG_DIR="${LOG_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/tlv_jax/tpu_pod/$NAME}"
POLL="${TLV_POLL_SECONDS:-30}"     # how often to ask for the TPU's state while waiting
SETTLE="${TLV_SETTLE_SECONDS:-60}" # how long a stop by a signal waits for a preemption to show in the state

run() {  # prints the command; runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  ((DRY)) || "$@"
}

# --- The TPU ---------------------------------------------------------------------------------------------------
state() {  # READY / ACTIVE / PREEMPTED / ..., NOT_FOUND when it cannot be described
  "${GC[@]}" "$KIND" describe "$NAME" "${LOC[@]}" --format="$FORMAT" 2>/dev/null || echo NOT_FOUND
}
create() {
  if ((QUEUED)); then
    local nodes=(--node-id "$NAME"); ((SLICES == 1)) || nodes=(--node-count "$SLICES" --node-prefix "$NAME")
    run "${GC[@]}" queued-resources create "$NAME" "${nodes[@]}" "${LOC[@]}" --accelerator-type "$TYPE" \
        --runtime-version "$VERSION" "${SPOT_FLAG[@]}"
  else
    run "${GC[@]}" tpu-vm create "$NAME" "${LOC[@]}" --accelerator-type "$TYPE" --version "$VERSION" "${SPOT_FLAG[@]}"
  fi
}
delete() {
  if ((QUEUED)); then run "${GC[@]}" queued-resources delete "$NAME" "${LOC[@]}" --force --quiet
  else run "${GC[@]}" tpu-vm delete "$NAME" "${LOC[@]}" --quiet; fi
}
is_up() { [[ $1 == READY || $1 == ACTIVE ]]; }
ensure_up() {  # reuses a running TPU, creates a missing one, replaces a preempted one, waits until it runs
  local s last=""
  while true; do
    s=$(state)
    case "$s" in
      READY|ACTIVE) note "$WHAT $NAME is $s"; return 0;;
      NOT_FOUND) create || { ((RESTART)) || die "creating $WHAT $NAME failed"; note "creating failed: retrying"; sleep "$POLL"; };;
      PREEMPTED|TERMINATED|SUSPENDED|SUSPENDING) note "$WHAT $NAME is $s: deleting and recreating it"; delete;;
      FAILED|STOPPED) die "$WHAT $NAME is $s: delete (or start) it, then rerun";;
      *) [[ $s == "$last" ]] || note "$WHAT $NAME is ${s:-in an unknown state}: waiting"; sleep "$POLL";;
    esac
    last=$s
  done
}
up_note() {  # the cost driver, said whenever the launcher ends with the TPU left up
  local force=""; ((QUEUED == 0)) || force=" --force"
  ((DELETE_DONE)) || [[ $(state) == NOT_FOUND ]] || note "$WHAT $NAME is still up and billed until deleted: ${GC[*]} $KIND delete $NAME ${LOC[*]}$force"
}
DELETE_DONE=0

# --- The workers ------------------------------------------------------------------------------------------------
setup_workers() {  # this checkout (HEAD) and the worker script on every worker, then its environment
  run git -C "$ROOT" archive --format=tar.gz -o "$ARCHIVE" HEAD || return 1
  run "${GC[@]}" "$KIND" scp "$ARCHIVE" "$ROOT/launch/tpu_worker.sh" "$NAME:/tmp/" "${LOC[@]}" "${ALL[@]}" || return 1
  run "${GC[@]}" "$KIND" ssh "$NAME" "${LOC[@]}" "${ALL[@]}" --command \
      "bash /tmp/tpu_worker.sh setup --archive /tmp/${ARCHIVE##*/} --python $PYTHON --jax $(printf '%q' "$JAX")"
}
train_command() {  # the trainer on every worker of every slice; $1: the attempt, for where its logs go
  local cmd="bash /tmp/tpu_worker.sh train"
  [[ $WORKDIR != gs://* ]] || cmd+=" --logs-to $WORKDIR/logs/tpu_pod/attempt-$1"
  cmd+=" --"; for a in "${TRAIN_ARGS[@]}"; do cmd+=" $(printf '%q' "$a")"; done
  TRAIN=("${GC[@]}" "$KIND" ssh "$NAME" "${LOC[@]}" "${ALL[@]}" --command "$cmd")
}
latest_step() {  # the newest checkpoint step in the workdir, or "none"
  local s
  s=$(gcloud storage ls "$WORKDIR/checkpoints/" 2>/dev/null | sed -n 's#.*/\([0-9][0-9]*\)/$#\1#p' | sort -n | tail -n 1 || true)
  echo "${s:-none}"
}

# How an attempt ended, from the ssh status, the `tlv_jax-exit host=H rc=N` line each worker prints (tpu_worker.sh)
# and the TPU's state: sets OUTCOME (done / failed / stopped / preempted / lost) and CODE.
classify() {
  local ssh_rc=$1 log=$2 codes c s
  codes=$(sed -n 's/.*tlv_jax-exit host=[^ ]* rc=\([0-9][0-9]*\).*/\1/p' "$log" | sort -un | tr '\n' ' ')
  CODE=$ssh_rc
  if [[ $codes == "0 " ]]; then OUTCOME="done"; CODE=0; return; fi  # every worker that reported finished
  s=$(state)
  if ! is_up "$s"; then OUTCOME=preempted; REASON="$WHAT $NAME is $s"; return; fi
  for c in $codes; do
    case $c in 0|1|2|3|130|143) ;; *) OUTCOME=lost; REASON="a worker ended with status $c"; return;; esac
  done
  if [[ " $codes" == *" 143 "* || " $codes" == *" 130 "* ]]; then  # a preemption signals the trainers (which
    sleep "$SETTLE"; s=$(state)                                      # save, then exit 143) before the state shows it
    if ! is_up "$s"; then OUTCOME=preempted; REASON="$WHAT $NAME is $s"; return; fi
  fi
  for c in 3 2 1; do [[ " $codes" != *" $c "* ]] || { OUTCOME=failed; CODE=$c; return; }; done
  for c in 143 130; do [[ " $codes" != *" $c "* ]] || { OUTCOME=stopped; CODE=$c; return; }; done
  OUTCOME=lost; REASON="a worker ended without reporting its status (ssh status $ssh_rc)"
}

git -C "$ROOT" diff --quiet HEAD 2>/dev/null || note "uncommitted changes are not shipped (git archive HEAD)"

# --- Dry run: the commands, once --------------------------------------------------------------------------------
if ((DRY)); then
  create
  setup_workers
  train_command 1; run "${TRAIN[@]}"
  ((DELETE == 0)) || delete
  exit 0
fi

# --- The run ----------------------------------------------------------------------------------------------------
trap up_note EXIT
mkdir -p "$LOG_DIR"
ensure_up
attempt=1 restarts=0
while true; do
  if setup_workers; then
    train_command "$attempt"
    log="$LOG_DIR/attempt-$attempt.log"
    note "attempt $attempt on $WORKERS worker(s); output also in $log"
    printf '+'; printf ' %q' "${TRAIN[@]}"; printf '\n'
    if "${TRAIN[@]}" 2>&1 | tee "$log"; then rc=0; else rc=${PIPESTATUS[0]}; fi
    [[ $WORKDIR != gs://* ]] || gcloud storage cp "$log" "$WORKDIR/logs/tpu_pod/attempt-$attempt/launcher.log" \
        >/dev/null 2>&1 || note "could not copy $log to $WORKDIR/logs/tpu_pod/attempt-$attempt/"
    resumed=$(sed -n 's/.*resumed from step \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    [[ -z $resumed ]] || note "attempt $attempt resumed from step $resumed"
    classify "$rc" "$log"
  else
    ((RESTART)) || die "setting up the workers failed (see above)"
    sleep "$SETTLE"; ! is_up "$(state)" || die "setting up the workers failed (see above) while $WHAT $NAME is up"
    OUTCOME=preempted REASON="$WHAT $NAME went down during the setup" CODE=1
  fi
  case $OUTCOME in
    done) note "attempt $attempt finished"; break;;
    failed) die "the trainer failed (exit $CODE: 1 failed, 2 refused its command line, 3 diverged); not restarting" "$CODE";;
    stopped) die "the trainer was stopped by a signal (exit $CODE) while $WHAT $NAME is up; not restarting (rerun the same command to resume)" "$CODE";;
  esac
  # preempted or lost: the TPU went away or a worker died mid-run.
  ((RESTART)) || die "$REASON; rerun the same command to resume (or pass --restart-on-preemption)" "$(( CODE ? CODE : 1 ))"
  ((restarts < MAX_RESTARTS)) || die "$REASON; gave up after $MAX_RESTARTS restart(s)"
  restarts=$((restarts + 1)) attempt=$((attempt + 1))
  note "restart $restarts/$MAX_RESTARTS ($REASON): resuming from step $(latest_step), the latest checkpoint in $WORKDIR/checkpoints"
  ensure_up
done

if ((DELETE)); then delete; DELETE_DONE=1; fi
