r"""Targeted growth, step 1: rank layers by the MLP updates of a short pilot SFT run.

  python -m grow_jax.main --config=configs/quickstart.py:mode=sft --workdir=/tmp/grow_jax/pilot_sft
  python experiments/rank_layers.py --pilot=/tmp/grow_jax/pilot_sft --base=gemma3-270m \
      --criterion=erank --num_layers=5 --out=experiments/results/rank_layers_270m

Prints per layer the effective rank, Frobenius norm and relative norm of ΔW (gate, up, down; mean), the
layers chosen for growth, and writes <out>.md, <out>.json and <out>.png. Feed the chosen layers to a growth
run with `--config.growth.layers=3,5,...`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

_PILOT = flags.DEFINE_string("pilot", None, "Workdir of the pilot SFT run (its latest checkpoint is used).")
_BASE = flags.DEFINE_string("base", "gemma3-270m", "The pilot's init source (the pretrained weights).")
_CRITERION = flags.DEFINE_enum("criterion", "erank", ["erank", "fro", "rel"], "Ranking criterion.")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", None, "Grow this many layers (or give --param_fraction).")
_FRACTION = flags.DEFINE_float("param_fraction", None, "Grow layers while added params <= this share of base.")
_OUT = flags.DEFINE_string("out", None, "Output prefix for .md / .json / .png (default: print only).")


def main(argv):
  del argv
  from grow_jax.growth import analysis
  from grow_jax.train import checkpointing
  from grow_jax import formats
  config, base = formats.load_checkpoint(_BASE.value)
  pilot_config, pilot, meta = checkpointing.load_trained_params(_PILOT.value)
  if pilot_config.is_grown:
    raise app.UsageError(f"--pilot={_PILOT.value!r} is a grown run (mode {meta.get('mode')}); rank layers from an "
                         "ungrown SFT pilot")
  if meta.get("mode") not in ("sft", "mlp_only", "l2sp", "ewc"):
    raise app.UsageError(f"--pilot={_PILOT.value!r} was trained with mode {meta.get('mode')!r}: its MLP weights "
                         "did not train; use an sft / mlp_only pilot")
  num_layers, fraction = _NUM_LAYERS.value, _FRACTION.value
  if num_layers is None and fraction is None:
    fraction = 0.30
  stats = analysis.update_stats(config, base, pilot)
  chosen = analysis.rank_layers(config, base, pilot, criterion=_CRITERION.value, num_layers=num_layers,
                                param_fraction=fraction if num_layers is None else None)
  columns = ["erank", "fro", "rel", "gate/erank", "up/erank", "down/erank"]
  table = analysis.format_table(stats, columns)
  header = (f"Pilot {_PILOT.value} (mode {meta.get('mode')}, step {meta.get('step')}) vs {_BASE.value}; "
            f"criterion {_CRITERION.value}; chosen layers {chosen}")
  print(header)
  print(table)
  print(f"--config.growth.layers={','.join(map(str, chosen))}")
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value + ".md", "w") as f:
      f.write(f"{header}\n\n```\n{table}\n```\n\n`--config.growth.layers={','.join(map(str, chosen))}`\n")
    with open(_OUT.value + ".json", "w") as f:
      json.dump({"pilot": _PILOT.value, "base": _BASE.value, "criterion": _CRITERION.value, "chosen": chosen,
                 "step": meta.get("step"), "layers": stats}, f, indent=2)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    layers = [int(r["layer"]) for r in stats]
    for ax, key, label in ((axes[0], "erank", "effective rank of ΔW (mean of gate/up/down)"),
                           (axes[1], "rel", "‖ΔW‖ / ‖W‖ (mean of gate/up/down)")):
      colors = ["tab:orange" if l in chosen else "tab:blue" for l in layers]
      ax.bar(layers, [r[key] for r in stats], color=colors)
      ax.set_xticks(layers)
      ax.set_xlabel("layer")
      ax.set_title(label, fontsize=9)
    fig.suptitle(f"pilot SFT updates per layer (orange: chosen by {_CRITERION.value})", fontsize=10)
    fig.tight_layout()
    fig.savefig(_OUT.value + ".png", dpi=120)
    print(f"wrote {_OUT.value}.md, .json, .png")


if __name__ == "__main__":
  flags.mark_flag_as_required("pilot")
  app.run(main)
