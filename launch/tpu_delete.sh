#!/usr/bin/env bash
# Usage: launch/tpu_delete.sh --name=NAME --zone=ZONE --project=PROJECT [--dry-run]
#
# Deletes the queued resource made by tpu_create.sh together with its TPU VM (gcloud asks to confirm).
#
#   --dry-run  print the gcloud command instead of running it

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [ $# -gt 0 ]; do
  tpu_flag "$1"
  shift
done
require_tpu_flags

run gcloud compute tpus queued-resources delete "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE" --force
