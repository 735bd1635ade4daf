#!/usr/bin/env bash
# Usage: launch/tpu_create.sh --name=NAME --zone=ZONE --project=PROJECT --accelerator-type=TYPE
#                             [--runtime-version=VERSION] [--spot | --reserved] [--dry-run]
#
# Requests a TPU VM slice as a queued resource (the node gets the same NAME) and waits until it is ACTIVE.
#
#   --accelerator-type  e.g. v5litepod-64, v4-32, v5p-128, v6e-64
#   --runtime-version   TPU VM image; default by generation: v4 and older tpu-ubuntu2204-base,
#                       v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --spot              spot capacity (cheaper, preemptible)
#   --reserved          your reservation's capacity
#   --dry-run           print the gcloud commands instead of running them
#
# Example: launch/tpu_create.sh --name=grow --zone=us-central2-b --project=my-proj --accelerator-type=v4-32

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

accelerator_type='' runtime_version='' capacity=''
while [ $# -gt 0 ]; do
  case $1 in
    --accelerator-type=*) accelerator_type=${1#*=} ;;
    --runtime-version=*) runtime_version=${1#*=} ;;
    --spot | --reserved)
      [ -z "$capacity" ] || usage_error "--spot and --reserved exclude each other"
      capacity=$1
      ;;
    *) tpu_flag "$1" ;;
  esac
  shift
done
require_tpu_flags
require --accelerator-type "$accelerator_type"

if [ -z "$runtime_version" ]; then
  case $accelerator_type in
    v2-* | v3-* | v4-*) runtime_version=tpu-ubuntu2204-base ;;
    v5litepod-*) runtime_version=v2-alpha-tpuv5-lite ;;
    v5p-*) runtime_version=v2-alpha-tpuv5 ;;
    v6e-*) runtime_version=v2-alpha-tpuv6e ;;
    *) usage_error "no default runtime for --accelerator-type=$accelerator_type: pass --runtime-version" ;;
  esac
fi

run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
  --project="$TPU_PROJECT" --zone="$TPU_ZONE" \
  --accelerator-type="$accelerator_type" --runtime-version="$runtime_version" ${capacity:+"$capacity"}

describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE")
if [ "$DRY_RUN" = 1 ]; then
  run "${describe[@]}" --format='value(state.state)'
  exit 0
fi

echo "$PROG: waiting for $TPU_NAME to be ACTIVE (Ctrl-C stops the wait, not the request)" >&2
last=''
while :; do
  state=$("${describe[@]}" --format='value(state.state)') || state=UNKNOWN  # a transient error must not end the wait
  [ "$state" = "$last" ] || echo "$PROG: $TPU_NAME is $state" >&2
  last=$state
  case $state in
    ACTIVE) exit 0 ;;
    FAILED | SUSPENDING | SUSPENDED | DELETING) die "$TPU_NAME is $state; $(quote "${describe[@]}") says why" ;;
  esac
  sleep 30
done
