r"""Delta file sizes for the real Gemma 3 270M (issue 29): one task's branches on all 18 layers and on a targeted
plan's layers, float32 and bfloat16, against the full grown model's params file and the base's.

  python experiments/delta_sizes.py --out=experiments/results/delta_sizes.md

The sizes are of the files written (safetensors plus metadata), in a temporary directory. The branches are the
grown copies as growth makes them (training changes their values, not their size). Each delta is applied back
to the base and compared with the grown model leaf by leaf (float32: bit for bit).
"""

import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's grow_jax
from grow_jax import tables, tree_paths
from grow_jax.formats import delta as delta_lib, params_file, sources
from grow_jax.growth import tasks

_OUT = flags.DEFINE_string("out", None, "Write the markdown table here (default: print only).")
_PLAN = flags.DEFINE_string("plan", "experiments/results/plans/translation_sft_lr3e-05.json",
                            "A growth plan whose layers make the targeted delta.")


def main(argv):
  del argv
  config, base = sources.load_checkpoint("gemma3-270m")
  base = {k: np.asarray(v) for k, v in tree_paths.flatten(base).items()}
  base = tree_paths.unflatten(base)
  with open(_PLAN.value) as f:
    plan_layers = json.load(f)["layers"]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "base.safetensors")
    params_file.save_params_file(path, config, base)
    base_size = os.path.getsize(path)
    rows.append(["base model (params file, float32)", "-", f"{base_size / 2**20:,.1f}", "1.000"])
    for name, layers in [("all 18 layers", None), (f"plan: {len(plan_layers)} layers {plan_layers}", plan_layers)]:
      grown_config, grown = tasks.grow_task(config, base, "task", layers=layers)
      path = os.path.join(tmp, "grown.safetensors")
      params_file.save_params_file(path, grown_config, grown)
      rows.append([f"grown model, {name} (params file, float32)", "-", f"{os.path.getsize(path) / 2**20:,.1f}",
                   f"{os.path.getsize(path) / base_size:.3f}"])
      for dtype in ("float32", "bfloat16"):
        path = os.path.join(tmp, f"task.{len(rows)}.{dtype}.delta")
        delta_lib.save_delta(path, grown_config, grown, "task", base=(config, base), dtype=dtype)
        _, rebuilt = delta_lib.apply_delta(config, base, path)
        flat_rebuilt, flat_grown = tree_paths.flatten(rebuilt), tree_paths.flatten(grown)
        exact = all(np.array_equal(np.asarray(flat_rebuilt[k]), np.asarray(flat_grown[k])) for k in flat_grown)
        rows.append([f"delta, {name}, {dtype}", "bit for bit" if exact else "rounded",
                     f"{os.path.getsize(path) / 2**20:,.1f}", f"{os.path.getsize(path) / base_size:.3f}"])
  table = tables.markdown(["file", "applied to the base", "MiB", "x base"], rows)
  text = ("# Delta sizes, Gemma 3 270M (PyPI GGUF Q4_K_M release, dequantized to float32)\n\n"
          f"`python experiments/delta_sizes.py --out={_OUT.value or '...'}`\n\n{table}\n")
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
