r"""ΔW heat-maps and the localisation of a pilot's update, from growth-plan JSONs (plan.py keeps the stats).

  python -m grow_jax.growth.heatmaps --plans=/tmp/plan_translation.json,/tmp/plan_arithmetic.json \
      --labels=translation,arithmetic --out=experiments/results/delta_heatmaps_270m

writes <out>.png (per plan: effective rank and relative norm ||ΔW||_F / ||W||_F, layer x gate/up/down) and
<out>.json / <out>.md: per plan the localisation — the share of the total update norm (each layer's
||ΔW||_F over its whole MLP) held by its top-k layers, k = 3, 6, next to k / L for an evenly spread update —
a control — the Spearman correlation of the plan's layer scores with 1/||W_down|| of the base model (near 1:
the ranking reflects the base weights' norms more than the task) — and, for two plans, the Spearman
correlation of their per-layer update norms and their top-k overlaps.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from absl import flags

from grow_jax import cli, errors, figures, files, tables
from grow_jax.errors import ConfigError, GrowJaxError
from grow_jax.growth import analysis
from grow_jax.growth.plan_file import read_plan

PANELS = (("erank", "effective rank of ΔW"), ("rel", "‖ΔW‖_F / ‖W‖_F"))


def matrix_grid(plan: Mapping[str, Any], stat: str) -> np.ndarray:
  """(layers, 3) array of one statistic for gate, up, down."""
  return np.array([[row[f"{m}/{stat}"] for m in analysis.MATRICES] for row in plan["stats"]], np.float64)


def base_norm_control(plan: Mapping[str, Any], matrix: str = "down") -> float:
  """Spearman of the plan's layer scores and 1 / ||W|| of the BASE model's `matrix` per layer (||W|| = ||ΔW|| /
  relative norm, from the plan's stats). Near 1: the ranking says where the base weights are small, not where the
  task moved them — what an Adam pilot gives when every layer's ||ΔW|| is about the same."""
  inverse = [row[f"{matrix}/rel"] / row[f"{matrix}/fro"] if row[f"{matrix}/fro"] > 0 else 0.0 for row in plan["stats"]]
  return analysis.spearman(list(plan["scores"]), inverse)


def localisation(plans: Mapping[str, Mapping[str, Any]], ks: Sequence[int] = (3, 6)) -> dict[str, Any]:
  """{label: {'top{k}': share, 'even{k}': k / L}} and, for two plans, their agreement on where the update is."""
  out: dict[str, Any] = {}
  for label, plan in plans.items():
    norms = [row["fro"] for row in plan["stats"]]
    out[label] = {}
    for k in ks:
      out[label][f"top{k}"] = analysis.localisation(norms, k)
      out[label][f"even{k}"] = k / len(norms)
    out[label]["spearman_score_vs_inverse_base_down_norm"] = base_norm_control(plan)
  if len(plans) == 2:
    (la, a), (lb, b) = plans.items()
    na, nb = [r["fro"] for r in a["stats"]], [r["fro"] for r in b["stats"]]
    if len(na) != len(nb):
      raise ConfigError(f"heatmaps: plans {la!r} and {lb!r} have {len(na)} and {len(nb)} layers; expected one model")
    out["agreement"] = {"spearman_update_norm": analysis.spearman(na, nb),
                        **{f"top{k}_overlap": analysis.top_k_overlap(na, nb, k) for k in ks}}
  return out


def plot(plans: Mapping[str, Mapping[str, Any]], path: str) -> None:
  """One row of heat-maps per plan (PANELS), annotated; a PNG without a Software stamp (deterministic)."""
  plt = figures.pyplot()
  n_layers = max(len(p["stats"]) for p in plans.values())
  fig, axes = plt.subplots(len(plans), len(PANELS), figsize=(3.2 * len(PANELS), 0.9 + 0.24 * n_layers * len(plans)),
                           squeeze=False)
  for r, (label, plan) in enumerate(plans.items()):
    for c, (stat, title) in enumerate(PANELS):
      ax, grid = axes[r][c], matrix_grid(plan, stat)
      image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
      ax.set_xticks(range(len(analysis.MATRICES)), analysis.MATRICES, fontsize=8)
      chosen = set(plan["layers"])
      ax.set_yticks(range(grid.shape[0]), [f"{i}*" if i in chosen else str(i) for i in range(grid.shape[0])],
                    fontsize=6)
      ax.set_ylabel("layer (* = in the plan)", fontsize=8)
      ax.set_title(f"{label}: {title}", fontsize=8)
      low, high = float(grid.min()), float(grid.max())
      for (i, j), value in np.ndenumerate(grid):
        bright = high > low and (value - low) / (high - low) > 0.6          # viridis is light at the top
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=5, color="k" if bright else "w")
      fig.colorbar(image, ax=ax, fraction=0.05)
  fig.tight_layout()
  figures.save_png(fig, path, dpi=110)


def write_report(plans: Mapping[str, Mapping[str, Any]], out: str, ks: Sequence[int] = (3, 6)) -> dict[str, Any]:
  """<out>.png, <out>.json, <out>.md; returns the localisation dict."""
  result = localisation(plans, ks)
  plot(plans, out + ".png")
  files.write_text(out + ".json", json.dumps({"plans": {l: p["pilot"] for l, p in plans.items()}, **result},
                                             indent=1, sort_keys=True) + "\n")
  rows = [(label, *(f"{result[label][f'top{k}']:.3f} (even {result[label][f'even{k}']:.3f})" for k in ks),
           f"{result[label]['spearman_score_vs_inverse_base_down_norm']:.3f}") for label in plans]
  text = tables.markdown(("plan", *(f"share of update norm in top {k} layers" for k in ks),
                          "Spearman(plan scores, 1/‖W_down‖ of the base)"), rows)
  if "agreement" in result:
    text += "\n\n" + ", ".join(f"{k} = {v:.3f}" for k, v in result["agreement"].items())
  files.write_text(out + ".md", text + "\n")
  return result


def main(argv: Sequence[str] | None = None) -> int:
  """python -m grow_jax.growth.heatmaps (see the module docstring); returns the exit code."""
  args = flags.FlagValues()
  flags.DEFINE_string("plans", None, "comma-separated growth-plan JSONs (plan.py)", flag_values=args)
  flags.DEFINE_string("labels", None, "comma-separated names of the plans (default: the pilots' tasks)",
                      flag_values=args)
  flags.DEFINE_string("out", None, "output prefix for .png / .json / .md", flag_values=args)
  flags.DEFINE_string("k", "3,6", "top-k layers of the localisation", flag_values=args)
  flags.mark_flags_as_required(["plans", "out"], flag_values=args)
  rest = cli.parse("python -m grow_jax.growth.heatmaps", args, argv, positional=False)
  if isinstance(rest, int):
    return rest
  try:
    paths = [p for p in args.plans.split(",") if p]
    loaded = [read_plan(p, "--plans") for p in paths]
    labels = args.labels.split(",") if args.labels else [p["pilot"].get("task") or f"plan{i}" for i, p in enumerate(loaded)]
    if len(labels) != len(loaded) or len(set(labels)) != len(labels):
      raise ConfigError(f"--labels={args.labels!r}: expected {len(loaded)} distinct names, one per plan")
    result = write_report(dict(zip(labels, loaded)), args.out, [int(k) for k in args.k.split(",") if k])
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0
  except GrowJaxError as e:
    errors.print_error("grow_jax.growth.heatmaps", e)
    return 1


if __name__ == "__main__":
  sys.exit(main())
