#!/usr/bin/env bash
# Usage: launch/tpu_run.sh --name=NAME --zone=ZONE --project=PROJECT --config=FILE[:ARG] --workdir=gs://...
#                          [--env=KEY=VALUE ...] [--wait] [--dry-run] [-- TRAINER_FLAGS...]
#        launch/tpu_run.sh --name=NAME --zone=ZONE --project=PROJECT --tail[=WORKER] [--dry-run]
#        launch/tpu_run.sh --name=NAME --zone=ZONE --project=PROJECT --kill [--dry-run]
#
# Starts `python -m grow_jax.main --config=FILE[:ARG] --workdir=gs://... TRAINER_FLAGS` on every worker of the
# TPU VM (set up by tpu_setup.sh), detached with nohup; each worker appends its output to ~/grow_jax/run.log.
# JAX finds the other workers by itself on a TPU VM, so no coordinator flags are needed. One run at a time:
# starting a second one while the first is alive fails.
#
#   --config   config file relative to the repository root, e.g. configs/NAME.py or configs/NAME.py:ARG
#   --workdir  checkpoints, metrics and logs; a gs:// path, since every worker reads and writes it
#   --env      environment variable for the trainer, e.g. --env=XLA_FLAGS=--xla_dump_to=/tmp/dump (repeatable)
#   --wait     stay until the run ends; exit with its status (sweep.py --mode=tpu runs one after another)
#   --tail     follow run.log on worker WORKER (default 0; `all` for every worker)
#   --kill     stop the run on every worker (SIGTERM, SIGKILL after 60 s)
#   --dry-run  print the gcloud command instead of running it
#   TRAINER_FLAGS  passed on to grow_jax.main, e.g. --config.train.steps=100

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

action='start' config='' workdir='' env='' wait='' tail_worker=''
while [ $# -gt 0 ]; do
  case $1 in
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --env=*)
      [[ ${1#*=} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env takes KEY=VALUE, not '${1#*=}'"
      env+=" $(quote "${1#*=}")"
      ;;
    --wait) wait=1 ;;
    --tail) action='tail' tail_worker=0 ;;
    --tail=*) action='tail' tail_worker=${1#*=} ;;
    --kill) action='kill' ;;
    --) shift; break ;;
    *) tpu_flag "$1" ;;
  esac
  shift
done
require_tpu_flags

case $action in
  start)
    require --config "$config"
    require --workdir "$workdir"
    [[ $workdir == gs://* ]] || usage_error "--workdir must be a gs:// path (all workers share it), not '$workdir'"
    trainer=$(quote ../venv/bin/python -m grow_jax.main --config="$config" --workdir="$workdir" "$@")
    # The trainer runs in code/ with ../run.log as its output; $! is its pid (exec keeps it through env/nohup).
    tpu_ssh all "set -e; cd $REMOTE_ROOT; if pgrep -F run.pid >/dev/null 2>&1; then \
echo \"grow_jax.main is already running: stop it with --kill\" >&2; exit 1; fi; date -u >>run.log; \
(cd code && exec env${env} nohup $trainer) </dev/null >>run.log 2>&1 & echo \$! >run.pid${wait:+; wait \$!}"
    ;;
  tail)
    [ -z "$config$workdir$env$wait" ] && [ $# -eq 0 ] || usage_error "--tail takes only --name, --zone, --project"
    tpu_ssh "$tail_worker" "tail -n 100 -F $REMOTE_ROOT/run.log"
    ;;
  kill)
    [ -z "$config$workdir$env$wait" ] && [ $# -eq 0 ] || usage_error "--kill takes only --name, --zone, --project"
    tpu_ssh all "cd $REMOTE_ROOT; if pkill -F run.pid 2>/dev/null; then \
timeout 60 tail --pid=\"\$(cat run.pid)\" -f /dev/null; pkill -KILL -F run.pid; fi; rm -f run.pid"
    ;;
esac
