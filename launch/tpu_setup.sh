#!/usr/bin/env bash
# Usage: launch/tpu_setup.sh --name=NAME --zone=ZONE --project=PROJECT
#                            [--git-url=URL [--git-ref=REF]] [--python=3.X] [--uv-version=X.Y.Z] [--dry-run]
#
# Installs grow_jax on every worker of the TPU VM: ~/grow_jax/code (the repository) and a fresh virtualenv
# ~/grow_jax/venv made by uv with Python 3.11 and `-e code[tpu]` (jax[tpu] with libtpu from PyPI); then all
# workers start jax.distributed together (GROW_JAX_DISTRIBUTED=tpu, JAX_PLATFORMS=tpu) and each prints its
# process index and count, its device counts and an all-gather across workers. Run it again after changing
# the code (uv's cache makes the reinstall quick); it refuses while a run started by tpu_run.sh is alive.
#
# Python: the TPU VM images ship Python 3.10 (tpu-ubuntu2204-base) and Ubuntu 22.04's apt python3.11 is a
# release candidate, so uv (installed once per worker into ~/grow_jax/uv by its standalone installer, pinned
# to --uv-version) fetches a standalone CPython build instead, as MaxText's setup does.
#
# By default the code is this checkout: its tracked files as they are in the working tree (`git add` new
# files first), packed with git archive and copied to every worker with scp.
#
#   --git-url     clone this repository on the workers instead, e.g. https://github.com/ORG/grow_jax.git
#   --git-ref     branch, tag or commit to check out after the clone (default: the remote's HEAD)
#   --python      Python version for the virtualenv, as uv takes it (default 3.11; grow_jax needs 3.11+)
#   --uv-version  uv release to install on the workers (default 0.13.9)
#   --dry-run     print the commands instead of running them

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

git_url='' git_ref='' python=3.11 uv_version=0.13.9
while [ $# -gt 0 ]; do
  case $1 in
    --git-url=*) git_url=${1#*=} ;;
    --git-ref=*) git_ref=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --uv-version=*) uv_version=${1#*=} ;;
    *) tpu_flag "$1" ;;
  esac
  shift
done
require_tpu_flags
[ -z "$git_ref" ] || [ -n "$git_url" ] || usage_error "--git-ref needs --git-url"
[[ $python =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || usage_error "--python takes a version such as 3.11, not '$python'"
[[ $uv_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || usage_error "--uv-version takes a release such as 0.13.9, not '$uv_version'"

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

guard="$ALIVE; if alive $REMOTE_ROOT; then echo \"grow_jax.main is running: stop it with tpu_run.sh --kill\" >&2; exit 1; fi"
uv=$REMOTE_ROOT/uv/uv
# uv's standalone installer; UV_UNMANAGED_INSTALL puts the binary in that directory and leaves the shell
# profiles alone. The virtualenv is made anew each time (a stale one from an older Python cannot linger).
install="if [ ! -x $uv ]; then curl -LsSf https://astral.sh/uv/$uv_version/install.sh"
install+=" | env UV_UNMANAGED_INSTALL=\"\$HOME/$REMOTE_ROOT/uv\" sh; fi"
install+=" && rm -rf $venv && $uv venv -q --python $python $venv"
install+=" && $uv pip install -q --python $venv/bin/python -e \"./${code}[tpu]\""
tpu_ssh all "$guard; $fetch && $install"
# Every worker at once: jax.distributed.initialize() finds the others through the TPU VM metadata. It runs in
# code/ as tpu_run.sh's trainer does: in the home directory, ~/grow_jax would shadow the editable install.
tpu_ssh all "cd $code && env GROW_JAX_DISTRIBUTED=tpu JAX_PLATFORMS=tpu ../venv/bin/python -m grow_jax.distributed --initialize"
