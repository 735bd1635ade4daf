#!/usr/bin/env bash
# Usage: launch/tpu_run.sh --name=NAME --zone=ZONE --project=PROJECT --config=FILE[:ARG] --workdir=gs://...
#                          [--env=KEY=VALUE ...] [--wait] [--dry-run] [-- TRAINER_FLAGS...]
#        launch/tpu_run.sh --name=NAME --zone=ZONE --project=PROJECT --tail[=WORKER] [--dry-run]
#        launch/tpu_run.sh --name=NAME --zone=ZONE --project=PROJECT --kill [--dry-run]
#
# Starts `python -m grow_jax.main --config=FILE[:ARG] --workdir=gs://... TRAINER_FLAGS` on every worker of the
# TPU VM (set up by tpu_setup.sh), detached in its own session (setsid nohup); each worker appends its output
# to ~/grow_jax/run.log. The trainer gets GROW_JAX_DISTRIBUTED=tpu (grow_jax.distributed starts
# jax.distributed from the TPU VM metadata) and JAX_PLATFORMS=tpu (no silent fallback to the CPU); --env can
# override either.
#
# Starting is idempotent per run: each worker keeps the command it runs in ~/grow_jax/run.cmd. A start whose
# command equals the running one attaches to it (exit 0, or with --wait the run's exit status), so gcloud's
# retry of a dropped `ssh --worker=all` neither fails nor starts a second trainer; a start with a different
# command fails while a run is alive (stop it with --kill). A retry that arrives after this launch's run
# ended reports that run's status instead of training again.
#
#   --config   config file relative to the repository root, e.g. configs/NAME.py or configs/NAME.py:ARG
#   --workdir  checkpoints, metrics and logs; a gs:// path, since every worker reads and writes it
#   --env      environment variable for the trainer, e.g. --env=XLA_FLAGS=--xla_dump_to=/tmp/dump (repeatable)
#   --wait     stay until the run ends; exit with its status (sweep.py --mode=tpu runs one after another)
#   --tail     follow run.log on worker WORKER (default 0; `all` for every worker)
#   --kill     stop the run on every worker (SIGTERM to its process group, SIGKILL after 60 s): the trainer
#              saves a checkpoint after its current step and exits 0, which run.status records
#   --dry-run  print the gcloud command instead of running it
#   TRAINER_FLAGS  passed on to grow_jax.main, e.g. --config.total_steps=100

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
    command="$(quote env GROW_JAX_DISTRIBUTED=tpu JAX_PLATFORMS=tpu)${env} $(quote ../venv/bin/python \
      -m grow_jax.main --config="$config" --workdir="$workdir" "$@")"
    # Identifies this invocation, so that gcloud's retry after the run ended does not run it again.
    launch_id="$(date -u +%Y%m%dT%H%M%SZ)-$$-$RANDOM"
    # On the worker: attach to the same command, refuse a different one, or start it in a session of its own
    # (a dropped ssh connection cannot take it down) in code/, with its exit status going to run.status (the
    # wrapper outlives --kill's SIGTERM, trap :, to record the status of the trainer's clean stop).
    # shellcheck disable=SC2016  # the single-quoted parts expand on the worker
    {
      remote="set -e; cd $REMOTE_ROOT; $ALIVE; command=$(quote "$command"); launch=$launch_id; "
      remote+='if alive .; then if [ "$(cat run.cmd 2>/dev/null)" != "$command" ]; then echo "$(hostname): '
      remote+="grow_jax.main is running another command (~/$REMOTE_ROOT/run.cmd): stop it with --kill\" >&2; exit 1; fi; "
      remote+='echo "$(hostname): the same command is running: attaching" >&2; '
      remote+='elif [ "$(cat run.launch 2>/dev/null)" = "$launch" ] && [ -f run.status ]; then '
      remote+='echo "$(hostname): this launch already ran to its end" >&2; '
      remote+='else rm -f run.status; printf "%s\n" "$command" >run.cmd; echo "$launch" >run.launch; date -u >>run.log; '
      remote+="setsid nohup bash -c 'trap : TERM; cd code && eval \"\$1\"; echo \$? >../run.status' run \"\$command\" "
      remote+='</dev/null >>run.log 2>&1 & echo $! >run.pid; fi'
      [ -z "$wait" ] || remote+='; while alive .; do sleep 1; done; if [ -f run.status ]; then exit "$(cat run.status)"; fi; '
      [ -z "$wait" ] || remote+='echo "$(hostname): grow_jax.main ended without an exit status (killed?)" >&2; exit 1'
    }
    tpu_ssh all "$remote"
    ;;
  tail)
    [ -z "$config$workdir$env$wait" ] && [ $# -eq 0 ] || usage_error "--tail takes only --name, --zone, --project"
    tpu_ssh "$tail_worker" "tail -n 100 -F $REMOTE_ROOT/run.log"
    ;;
  kill)
    [ -z "$config$workdir$env$wait" ] && [ $# -eq 0 ] || usage_error "--kill takes only --name, --zone, --project"
    # SIGTERM to the run's process group (the trainer and its wrapper), SIGKILL to what is left after 60 s.
    # shellcheck disable=SC2016  # expanded on the worker
    tpu_ssh all "cd $REMOTE_ROOT; "'if [ -f run.pid ]; then pid=$(cat run.pid); if kill -TERM -- "-$pid" 2>/dev/null; then '\
'i=0; while ps -eo pgid=,stat= | grep -q "^ *$pid [^Z]" && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done; '\
'kill -KILL -- "-$pid" 2>/dev/null || true; fi; fi; rm -f run.pid'
    ;;
esac
