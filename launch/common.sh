# shellcheck shell=bash disable=SC2034  # the variables here are read by the scripts that source this file
# Helpers shared by the launch scripts; sourced, never executed.
#
# Conventions every script follows:
#   * flags are spelled --name=value (booleans: --name); anything else is an error;
#   * a missing required flag is a one-line error naming it, exit status 2;
#   * --dry-run prints each command that would act (on the cloud, the cluster or a file) as one shell-quoted
#     line on stdout and runs none of them; read-only queries needed to compose those commands
#     (git rev-parse, scontrol show hostnames) still run. Progress messages go to stderr.
#   * the usage text is the script's leading comment block, printed by --help.
# The TPU scripts run on the user's machine (often macOS): they stay within bash 3.2.

DRY_RUN=0
PROG=$(basename "$0")

# Layout on every TPU worker, relative to the home directory where `gcloud compute tpus tpu-vm ssh` starts:
#   grow_jax/code (the repository)  grow_jax/venv  grow_jax/run.log  grow_jax/run.pid
REMOTE_ROOT=grow_jax

die() { echo "$PROG: $*" >&2; exit 1; }

usage_error() { echo "$PROG: $* (see $PROG --help)" >&2; exit 2; }

require() { [ -n "$2" ] || usage_error "missing required flag $1"; }

unknown_flag() {
  case $1 in
    --config.*) usage_error "$1 is a grow_jax.main flag: put it after --" ;;
    --*=*) usage_error "unknown flag $1" ;;
    *) usage_error "unknown flag $1; flags are written --name=value" ;;
  esac
}

usage() { sed -n '2,/^$/{/^#SBATCH/d; s/^# \{0,1\}//p;}' "$0"; exit 0; }

# quote ARGS...: prints the arguments as one line of shell words, quoted like Python's shlex.join.
quote() {
  local arg line='' single="'" escaped="'\"'\"'"
  for arg in "$@"; do
    case $arg in
      '' | *[!A-Za-z0-9_@%+=:,./-]*) arg="'${arg//$single/$escaped}'" ;;
    esac
    line+="${line:+ }$arg"
  done
  echo "$line"
}

# run CMD ARGS...: runs the command, or under --dry-run prints it (quoted) instead.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    quote "$@"
  else
    "$@"
  fi
}

# ALIVE (a shell function definition for the worker): `alive DIR` succeeds while the run whose pid is in
# DIR/run.pid is alive. A zombie does not count: an orphan that nobody has reaped yet has ended.
# shellcheck disable=SC2016  # expanded on the worker
ALIVE='alive() { [ -f "$1/run.pid" ] && ps -o stat= -p "$(cat "$1/run.pid")" 2>/dev/null | grep -q "^[^Z]"; }'

# The flags every TPU script shares; any other flag is an error.
TPU_NAME='' TPU_ZONE='' TPU_PROJECT=''
tpu_flag() {
  case $1 in
    --name=*) TPU_NAME=${1#*=} ;;
    --zone=*) TPU_ZONE=${1#*=} ;;
    --project=*) TPU_PROJECT=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage ;;
    *) unknown_flag "$1" ;;
  esac
}

require_tpu_flags() {
  require --name "$TPU_NAME"
  require --zone "$TPU_ZONE"
  require --project "$TPU_PROJECT"
}

# tpu_ssh WORKER COMMAND: runs COMMAND (a string for the worker's shell) on WORKER (0, 1-3, all).
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE" \
    --worker="$1" --command="$2"
}
