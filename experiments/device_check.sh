#!/usr/bin/env bash
# Accelerator checks as one command of at most 8 minutes (experiments/device_check.py says what they are):
#
#   experiments/device_check.sh OUT_DIR [device_check.py options]     e.g. --real  --modes=sft,lora
#   experiments/device_check.sh OUT_DIR --dry-run                     # tiny, CPU, no install, < 1 minute
#   DEVICE_CHECK_DRY_RUN=1 experiments/device_check.sh OUT_DIR        # the same
#
# Before JAX starts, in this order, each failure one line on stderr and exit status 1:
#   1. every setup.cfg dependency is imported (device_check.py --missing_deps; a dry run stops here if one
#      fails, installing nothing);
#   2. the NVIDIA driver (nvidia-smi) chooses the extra: driver >= 580 `.[gpu]` (JAX's CUDA 13 wheels),
#      >= 525 `.[gpu-cuda12]`; an older driver (or none) stops here: JAX's CUDA wheels cannot run on it.
#      If JAX already sees a GPU (an image with JAX + CUDA preinstalled), only the missing dependencies are
#      installed, with JAX pinned to what is there (device_check.py --jax_pins); otherwise
#      pip install -e ".[EXTRA]". A Python whose pip refuses (PEP 668 "externally-managed-environment") gets
#      a venv made with --system-site-packages, so a preinstalled JAX is reused, at $DEVICE_CHECK_VENV
#      (default ${TMPDIR:-/tmp}/grow_jax_device_check_venv; reused if there). SKIP_INSTALL=1 installs nothing;
#   3. after installing: nothing is missing any more, and JAX sees a GPU (device_check.py --gpu_check);
# then runs device_check.py with JAX_PLATFORMS=cuda,cpu (the GPU is the default device; check 2 compares
# with the CPU). Writes OUT_DIR/device_check.{md,json,log} (and OUT_DIR/install.log).
#
# Time: everything ends within BUDGET_S seconds of the start (default 470: one 8-minute call, 10 s spare).
# The install may take INSTALL_BUDGET_S (default 170 s; JAX's CUDA wheels dominate, a warm pip cache or a
# preinstalled JAX makes it seconds); device_check.py gets the rest, stopped by `timeout`, and its
# --deadline_s ends its parts 15 s earlier so the report is written. With the longest install that leaves
# ~270 s: what JAX sees and the bf16 peak (~20 s), then the Gemma 3 1B SFT and G-Freeze steps (each started
# only with --mode_budget_s = 120 s left), then the growth / CPU-parity checks, the other modes and the decode
# loop while time remains. These are estimates, not measurements: the report lists any part it skipped.
# PYTHON names the interpreter (default python3, else python).
set -euo pipefail
out=${1:?usage: experiments/device_check.sh OUT_DIR [device_check.py options]}
shift
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
mkdir -p "$out"
budget=${BUDGET_S:-470}
install_budget=${INSTALL_BUDGET_S:-170}
venv=${DEVICE_CHECK_VENV:-${TMPDIR:-/tmp}/grow_jax_device_check_venv}
py=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
dry=${DEVICE_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then dry=1; fi
done

die() { echo "device_check.sh: $*" >&2; exit 1; }

missing_deps() { "$py" experiments/device_check.py --missing_deps 2>>"$out/install.log"; }

gpu_check() { JAX_PLATFORMS=cuda "$py" experiments/device_check.py --gpu_check 2>>"$out/install.log"; }

# pip_install ARGS...: pip install into $py's environment within the install budget; where pip refuses
# (PEP 668), into the venv, which $py then names.
pip_install() {
  local left=$((install_budget - SECONDS)) status=0
  ((left > 0)) || die "no time left for pip install $* (INSTALL_BUDGET_S=$install_budget)"
  echo "pip install $* ($py)"
  timeout "$left" "$py" -m pip install -q "$@" >>"$out/install.log" 2>&1 || status=$?
  if ((status != 0)) && [[ $py != "$venv/bin/python" ]] &&
    tail -n 40 "$out/install.log" | grep -q externally-managed-environment; then
    echo "pip refuses to install into $py (PEP 668): a venv with its site-packages, $venv"
    if [[ ! -x $venv/bin/python ]]; then
      "$py" -m venv --system-site-packages "$venv" >>"$out/install.log" 2>&1 ||
        "$py" -m venv --system-site-packages --without-pip "$venv" >>"$out/install.log" 2>&1 ||
        die "python -m venv --system-site-packages $venv failed: $(tail -n 1 "$out/install.log")"
    fi
    py=$venv/bin/python
    pip_install "$@"
    return
  fi
  ((status != 124)) || die "pip install $* took longer than INSTALL_BUDGET_S=$install_budget s (rerun: pip's cache makes it quick)"
  ((status == 0)) || die "pip install $* failed (exit status $status): $(tail -n 1 "$out/install.log") (all of it: $out/install.log)"
}

: >"$out/install.log"
if [[ $dry != 1 && -x $venv/bin/python && -z ${PYTHON:-} ]]; then py=$venv/bin/python; fi   # an earlier run's
missing=$(missing_deps)
if [[ $dry == 1 ]]; then
  export DEVICE_CHECK_DRY_RUN=1 JAX_PLATFORMS=cpu
  [[ -z $missing ]] || die "missing dependencies (a dry run installs nothing): $(echo "$missing" | paste -sd ' ' -); pip install -e ."
else
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver here (--dry-run checks the script on a CPU)"
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1) ||
    die "nvidia-smi failed: $driver"
  major=${driver%%.*}
  [[ $major =~ ^[0-9]+$ ]] || die "nvidia-smi gave no driver version: '$driver'"
  if ((major >= 580)); then
    extra=gpu
  elif ((major >= 525)); then
    extra=gpu-cuda12
  else
    die "NVIDIA driver $driver is older than 525, the oldest JAX's CUDA 12 wheels run on (CUDA 13: 580); update the driver"
  fi
  echo "NVIDIA driver $driver: the .[$extra] extra"
  if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
    if gpu_check; then
      if [[ -n $missing ]]; then                   # keep the preinstalled JAX + CUDA as it is
        echo "missing: $(echo "$missing" | paste -sd ' ' -)"
        "$py" experiments/device_check.py --jax_pins >"$out/jax_pins.txt"
        mapfile -t specs <<<"$missing"
        pip_install -c "$out/jax_pins.txt" "${specs[@]}"
      fi
    else
      pip_install -e ".[$extra]"
    fi
    missing=$(missing_deps)
  fi
  [[ -z $missing ]] || die "dependencies that do not import: $(echo "$missing" | paste -sd ' ' -) (why: $out/install.log)"
  seen=$(gpu_check) || die "${seen:-JAX sees no GPU} after installing .[$extra] (driver $driver, $py)"
  echo "$seen"
  export JAX_PLATFORMS=cuda,cpu
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
fi
left=$((budget - SECONDS))
if ((left < 120)); then
  die "only ${left} s left of BUDGET_S=${budget} after the install"
fi
echo "${SECONDS} s spent before JAX starts; device_check.py gets ${left} s"
timeout "$left" "$py" experiments/device_check.py --out "$out" --deadline_s "$((left - 15))" "$@" 2>&1 \
  | tee "$out/device_check.log"
