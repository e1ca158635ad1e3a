#!/usr/bin/env bash
# One TPU VM worker's part of launch/tpu_pod.sh, which copies this script to /tmp on every worker and runs:
#
#   tpu_worker.sh setup --archive /tmp/tlv_jax-NAME.tar.gz [--python 3.12] [--jax 'jax[tpu]']
#       stops a trainer that an earlier `train` left running, unpacks the checkout into ~/tlv_jax/src, makes the
#       virtual environment ~/tlv_jax/venv with uv (Python --python, which uv downloads if the image lacks it; an
#       environment of that Python is reused) and installs the checkout (editable) and --jax into it. Installs uv
#       first if it is missing (pip --user, else its standalone installer). Rerunning it is safe.
#   tpu_worker.sh train [--logs-to gs://BUCKET/run/logs/tpu_pod/attempt-K] -- TRAINER ARGS
#       runs `~/tlv_jax/venv/bin/python -m tlv_jax.train TRAINER ARGS` in ~/tlv_jax/src, copies the per-process
#       logs (./logs/*.log: where the trainer logs for a gs:// workdir) to --logs-to, prints
#       `tlv_jax-exit host=<hostname> rc=<status>` (read by tpu_pod.sh) and exits with the trainer's status.

set -euo pipefail

PROG=tpu_worker.sh
SRC="$HOME/tlv_jax/src" VENV="$HOME/tlv_jax/venv" PIDFILE="$HOME/tlv_jax/train.pid"
export PATH="$HOME/.local/bin:$PATH"  # where pip --user and uv's installer put uv
die() { echo "$PROG: $1" >&2; exit "${2:-1}"; }

is_trainer() {  # the process runs tlv_jax.train (an exited one, even unreaped, has no command line)
  [[ $1 =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -q tlv_jax.train
}

stop_previous() {  # the trainer an interrupted attempt left behind still holds the TPU
  local pid
  [[ -f $PIDFILE ]] || return 0
  pid=$(<"$PIDFILE")
  if is_trainer "$pid"; then
    echo "$PROG: stopping the trainer left from an earlier attempt (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true  # it saves a checkpoint, then exits
    for _ in $(seq 300); do is_trainer "$pid" || break; sleep 1; done
    ! is_trainer "$pid" || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

setup() {
  local archive="" python="3.12" jax="jax[tpu]" have
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --archive) archive="$2"; shift 2;;
      --python) python="$2"; shift 2;;
      --jax) jax="$2"; shift 2;;
      *) die "setup: unknown argument $1" 2;;
    esac
  done
  [[ -f $archive ]] || die "setup: --archive ${archive:-(missing)} is not a file" 2
  [[ $python =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] || die "setup: --python $python: tlv_jax needs Python 3.11 or newer" 2
  stop_previous
  mkdir -p "$SRC"
  tar -xzf "$archive" -C "$SRC"
  if ! command -v uv >/dev/null; then
    python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
  command -v uv >/dev/null || die "setup: uv could not be installed"
  have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [[ $have == "$python" ]]; then
    echo "$PROG: reusing $VENV (Python $have)"
  else
    rm -rf "$VENV"
    uv venv --python "$python" "$VENV"
  fi
  uv pip install --python "$VENV/bin/python" -e "${SRC}[gcs]" "$jax"  # gcs: run directories in gs://
  "$VENV/bin/python" -c 'import sys, jax; print("tlv_jax env: Python", sys.version.split()[0], "jax", jax.__version__)'
}

train() {
  local logs_to="" pid rc logs
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --logs-to) logs_to="${2%/}"; shift 2;;
      --) shift; break;;
      *) die "train: unknown argument $1" 2;;
    esac
  done
  [[ -x $VENV/bin/python ]] || die "train: no environment in $VENV (run setup first)"
  cd "$SRC"
  "$VENV/bin/python" -m tlv_jax.train "$@" &
  pid=$!
  echo "$pid" >"$PIDFILE"
  trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT HUP  # passed on: the trainer saves, then exits 143
  rc=0; wait "$pid" || rc=$?
  while kill -0 "$pid" 2>/dev/null; do rc=0; wait "$pid" || rc=$?; done  # a signal ended `wait` early
  trap - TERM INT HUP
  rm -f "$PIDFILE"
  if [[ -n $logs_to ]]; then
    shopt -s nullglob; logs=(logs/*.log); shopt -u nullglob
    if ((${#logs[@]})) && ! gcloud storage cp "${logs[@]}" "$logs_to/" >/dev/null 2>&1; then
      echo "$PROG: could not copy ${logs[*]} to $logs_to/" >&2
    fi
  fi
  echo "tlv_jax-exit host=$(hostname) rc=$rc"
  exit "$rc"
}

case "${1:-}" in
  setup) shift; setup "$@";;
  train) shift; train "$@";;
  -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}";;
  *) die "usage: $PROG setup|train ... (see --help)" 2;;
esac
