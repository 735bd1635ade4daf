#!/usr/bin/env bash
# Usage: launch/tpu_setup.sh --name=NAME --zone=ZONE --project=PROJECT
#                            [--git-url=URL [--git-ref=REF]] [--python=python3.X] [--dry-run]
#
# Installs grow_jax on every worker of the TPU VM: ~/grow_jax/code (the repository) and a virtualenv
# ~/grow_jax/venv with jax[tpu] and `pip install -e` of the code; then every worker prints its process
# index and jax.device_count(). Run it again after changing the code (the virtualenv is kept); it refuses
# while a run started by tpu_run.sh is alive.
#
# By default the code is this checkout: its tracked files as they are in the working tree (`git add` new
# files first), packed with git archive and copied to every worker with scp.
#
#   --git-url   clone this repository on the workers instead, e.g. https://github.com/ORG/grow_jax.git
#   --git-ref   branch, tag or commit to check out after the clone (default: the remote's HEAD)
#   --python    interpreter for the virtualenv, installed with apt (default python3.11; grow_jax needs 3.11+)
#   --dry-run   print the commands instead of running them

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

git_url='' git_ref='' python=python3.11
while [ $# -gt 0 ]; do
  case $1 in
    --git-url=*) git_url=${1#*=} ;;
    --git-ref=*) git_ref=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    *) tpu_flag "$1" ;;
  esac
  shift
done
require_tpu_flags
[ -z "$git_ref" ] || [ -n "$git_url" ] || usage_error "--git-ref needs --git-url"
case $python in
  python3.[0-9]*) ;;
  *) usage_error "--python must name an apt-installable interpreter such as python3.11, not '$python'" ;;
esac

code=$REMOTE_ROOT/code venv=$REMOTE_ROOT/venv
if [ -z "$git_url" ]; then
  repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel) || die "not a git checkout: pass --git-url"
  # A commit of the working tree's tracked files (git stash create leaves the tree and the stash list alone);
  # empty when nothing changed since HEAD.
  tree=$(git -C "$repo" stash create)
  [ -n "$tree" ] || tree=$(git -C "$repo" rev-parse HEAD)
  tarball=${TMPDIR:-/tmp}/grow_jax-$tree.tar.gz
  trap 'rm -f "$tarball"' EXIT
  run git -C "$repo" archive --format=tar.gz --output="$tarball" "$tree"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$REMOTE_ROOT.tar.gz" \
    --project="$TPU_PROJECT" --zone="$TPU_ZONE" --worker=all
  fetch="mkdir -p $REMOTE_ROOT && rm -rf $code && mkdir $code && tar -xzf $REMOTE_ROOT.tar.gz -C $code"
  fetch+=" && rm $REMOTE_ROOT.tar.gz"
else
  fetch="mkdir -p $REMOTE_ROOT && rm -rf $code && git clone -q $(quote "$git_url") $code"
  [ -z "$git_ref" ] || fetch+=" && git -C $code checkout -q $(quote "$git_ref")"
fi

guard="if pgrep -F $REMOTE_ROOT/run.pid >/dev/null 2>&1; then \
echo \"grow_jax.main is running: stop it with tpu_run.sh --kill\" >&2; exit 1; fi"
apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600"
install="$apt update && $apt install -y $python $python-venv && $python -m venv $venv"
install+=" && $venv/bin/pip install -q -U pip && $venv/bin/pip install -q \"jax[tpu]\" -e $code"
check="$venv/bin/python -c \"import jax; print(jax.process_index(), jax.device_count())\""
tpu_ssh all "$guard; $fetch && $install && $check"
