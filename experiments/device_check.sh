#!/usr/bin/env bash
# Accelerator checks as one command of at most ~8 minutes (experiments/device_check.py says what they are):
#
#   experiments/device_check.sh OUT_DIR [device_check.py options]     e.g. --real  --modes=sft,lora
#   experiments/device_check.sh OUT_DIR --dry-run                     # tiny, CPU, no install, < 1 minute
#   DEVICE_CHECK_DRY_RUN=1 experiments/device_check.sh OUT_DIR        # the same
#
# Installs the `gpu` extra (pip install -e ".[gpu]", JAX with CUDA 13; SKIP_INSTALL=1 skips it) unless JAX
# already sees a GPU, then runs device_check.py under a deadline so the whole command ends within
# BUDGET_S seconds (default 470). Writes OUT_DIR/device_check.{md,json,log}.
set -euo pipefail
out=${1:?usage: experiments/device_check.sh OUT_DIR [device_check.py options]}
shift
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
mkdir -p "$out"
dry=${DEVICE_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then dry=1; fi
done
budget=${BUDGET_S:-470}
if [[ $dry == 1 ]]; then
  export DEVICE_CHECK_DRY_RUN=1 JAX_PLATFORMS=cpu
elif [[ ${SKIP_INSTALL:-0} != 1 ]]; then
  if ! python -c 'import jax, sys; sys.exit(0 if any(d.platform == "gpu" for d in jax.devices()) else 1)' 2>/dev/null; then
    echo "JAX sees no GPU: pip install -e .[gpu]"
    python -m pip install -q -e ".[gpu]"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
fi
left=$((budget - SECONDS))
if (( left < 120 )); then
  echo "only ${left} s left of BUDGET_S=${budget} after the install" >&2
  exit 1
fi
set -o pipefail
timeout "$left" python experiments/device_check.py --out "$out" --deadline_s "$((left - 90))" "$@" 2>&1 \
  | tee "$out/device_check.log"
