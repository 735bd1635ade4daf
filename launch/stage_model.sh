#!/usr/bin/env bash
# Usage: launch/stage_model.sh --name=NAME --zone=ZONE --project=PROJECT --src=DIR|gs://BUCKET/PATH [--dest=PATH]
#                              [--dry-run]
#        launch/stage_model.sh --slurm --src=DIR|gs://BUCKET/PATH [--dest=PATH] [--dry-run]
#
# Copies a Hugging Face model directory (config.json, *.safetensors, tokenizer files) to the same path on every
# worker of the TPU VM, or on every node of the current SLURM allocation (srun, one task per node), so that a
# config's model path such as hf:~/models/gemma-3-1b-it resolves on all of them. Each worker copies into
# DEST.partial-HOST-PID and then swaps it in: running it again replaces the copy, and an interrupted copy never
# leaves a half-written DEST. Getting the weights in the first place is yours to do once (Gemma's license must
# be accepted on Hugging Face and the download needs your token); see launch/README.md.
#
#   --src      the model directory: a local directory (TPU: on this machine, sent with scp; SLURM: on a file
#              system the nodes share), or gs://BUCKET/PATH (each worker runs `gcloud storage cp -r`)
#   --dest     where it goes on each worker: ~/PATH or a relative PATH (the worker's home directory) or an
#              absolute path; default: the --src directory's own path, taken relative to $HOME when inside it
#              (required with a gs:// source)
#   --slurm    stage on the nodes of the current allocation (run it inside salloc or a batch script;
#              slurm.sbatch --stage-src does); aim --dest at node-local disk: a shared home needs no staging
#   --dry-run  print the commands instead of running them

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

src='' dest='' slurm=''
while [ $# -gt 0 ]; do
  case $1 in
    --src=*) src=${1#*=} ;;
    --dest=*) dest=${1#*=} ;;
    --slurm) slurm=1 ;;
    *) tpu_flag "$1" ;;
  esac
  shift
done
require --src "$src"
if [ -n "$slurm" ]; then
  [ -z "$TPU_NAME$TPU_ZONE$TPU_PROJECT" ] || usage_error "--slurm takes no --name, --zone, --project"
  for var in SLURM_JOB_ID SLURM_JOB_NUM_NODES; do
    [ -n "${!var:-}" ] || usage_error "\$$var is not set: run --slurm inside an allocation (salloc or sbatch)"
  done
else
  require_tpu_flags
fi

case $src in
  gs://*)
    src=${src%/}
    [ -n "$dest" ] || usage_error "a gs:// --src needs --dest"
    ;;
  *)
    case $src in \~/*) src=$HOME/${src#\~/} ;; esac
    [ -d "$src" ] || usage_error "--src=$src is not a directory"
    src=$(cd "$src" && pwd)
    ;;
esac
# The destination relative to the worker's home (rel) or absolute (abs).
rel='' abs=''
case ${dest:-$src} in
  \~) usage_error "--dest must name a directory below the home directory, not ~" ;;
  \~/*) rel=${dest#\~/} ;;
  \~*) usage_error "--dest=$dest: ~USER is not supported; write an absolute path" ;;
  /*)
    abs=${dest:-$src}
    case $abs in "$HOME"/*) rel=${abs#"$HOME"/} abs='' ;; esac
    ;;
  *) rel=$dest ;;
esac
rel=${rel%/} abs=${abs%/}
[ -n "$rel$abs" ] || usage_error "--dest=$dest names no directory"
# shellcheck disable=SC2016  # $HOME expands on the worker
if [ -n "$rel" ]; then d_expr='"$HOME"/'$(quote "$rel") scp_dest=$rel; else d_expr=$(quote "$abs") scp_dest=$abs; fi

# On each worker: COPY fills "$p" (absent before); then it replaces "$d". Several nodes sharing one file system
# may race here; whichever complete copy lands last stays, and "$d" exists at the end.
swap() {
  echo "set -e; d=$d_expr; p=\"\$d.partial-\$(hostname)-\$\$\"; o=\"\$d.old-\$(hostname)-\$\$\"; mkdir -p \"\$(dirname \"\$d\")\";" \
    "rm -rf \"\$p\" \"\$o\"; $1; if [ -e \"\$d\" ]; then mv -T \"\$d\" \"\$o\" 2>/dev/null || true; fi;" \
    "mv -T \"\$p\" \"\$d\" 2>/dev/null || [ -d \"\$d\" ]; rm -rf \"\$p\" \"\$o\";" \
    "echo \"\$(hostname): \$d: \$(du -sh \"\$d\" | cut -f1)\""
}

case $src in
  gs://*) copy="mkdir \"\$p\" && gcloud storage cp -r $(quote "$src/*") \"\$p/\"" ;;
  *) copy="cp -r $(quote "$src") \"\$p\"" ;;
esac

if [ -n "$slurm" ]; then
  n=$SLURM_JOB_NUM_NODES
  run srun --nodes="$n" --ntasks="$n" --ntasks-per-node=1 bash -c "$(swap "$copy")"
elif [[ $src == gs://* ]]; then
  tpu_ssh all "$(swap "$copy")"
else
  # scp into DEST.incoming on every worker, then move it into place there.
  tpu_ssh all "d=$d_expr; mkdir -p \"\$(dirname \"\$d\")\" && rm -rf \"\$d.incoming\""
  run gcloud compute tpus tpu-vm scp --recurse "$src" "$TPU_NAME:$scp_dest.incoming" \
    --project="$TPU_PROJECT" --zone="$TPU_ZONE" --worker=all
  tpu_ssh all "$(swap "mv \"\$d.incoming\" \"\$p\"")"
fi
