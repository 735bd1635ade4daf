"""Sequential stages in a study's report: for a task whose runs continue another task's (`after`, study/runs.py),
what each method keeps of the first task, learns of the second, and keeps of the base model after each stage.

The study file declares it in the second task's report entry:

  report[child]["stages"] = {"first": [label, metric], "second": [label, metric], "probes": [[label, metric], ...]}

where every metric is read from the records' `final` at both stages (the two stages are scored on the same sets).
The table (`table`) gives, per method, the first task's score after each stage and the forgetting between them
(paired per seed), the second task's score after each stage, and each probe after each stage: mean [min..max]
over seeds. The figure (`plot`): first-task score against second-task score, one arrow per method and seed from its
stage-1 point (hollow) to its stage-2 point (filled), the untrained model a star.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from grow_jax import figures, tables


def _pairs(grouped, parent: str, child: str, method: str) -> list[tuple[dict, dict]]:
  """(stage-1 record, stage-2 record) of each seed that has both."""
  firsts = {r["seed"]: r for r in grouped.get((parent, method), [])}
  return [(firsts[r["seed"]], r) for r in grouped.get((child, method), []) if r["seed"] in firsts]


def _cell(values: Sequence[float]) -> str:
  if not values:
    return "–"
  if len(values) == 1:
    return f"{values[0]:.3g}"
  return f"{np.mean(values):.3g} [{min(values):.3g}..{max(values):.3g}]"


def table(parent: str, child: str, spec: Mapping, grouped, methods: Sequence[str]) -> str:
  """Markdown: a row per method (and the untrained model) over the seeds that ran both stages."""
  first, second = tuple(spec["first"]), tuple(spec["second"])
  probes = [tuple(p) for p in spec.get("probes", [])]
  header = ["method", "seeds", f"{first[0]} after {parent}", f"{first[0]} after {child}",
            f"forgetting of {parent} (paired)", f"{second[0]} after {parent}", f"{second[0]} after {child}"]
  header += [f"{label} after {stage}" for label, _ in probes for stage in (parent, child)]
  rows = []
  for method in methods:
    pairs = [(a["final"], b["final"]) for a, b in _pairs(grouped, parent, child, method)]
    if not pairs:
      continue
    column = lambda key, stage: [p[stage][key] for p in pairs if key in p[stage]]
    forgetting = [a[first[1]] - b[first[1]] for a, b in pairs if first[1] in a and first[1] in b]
    row = [method, str(len(pairs)), _cell(column(first[1], 0)), _cell(column(first[1], 1)),
           _cell(forgetting), _cell(column(second[1], 0)), _cell(column(second[1], 1))]
    row += [_cell(column(key, stage)) for _, key in probes for stage in (0, 1)]
    rows.append(row)
  if not rows:                                          # no method ran both stages yet: no table
    return ""
  base = grouped.get((parent, "base"), [])
  if base:
    final = base[0]["final"]
    value = lambda key: _cell([final[key]] if key in final else [])
    rows.insert(0, ["base (untrained)", "–", value(first[1]), "", "", value(second[1]), ""]
                + [cell for _, key in probes for cell in (value(key), "")])
  return tables.markdown(header, rows)


def plot(path: str, parent: str, child: str, spec: Mapping, grouped, methods: Sequence[str]) -> None:
  """First-task score (y) against second-task score (x): per method and seed, stage 1 (hollow) -> stage 2 (filled)."""
  first, second = tuple(spec["first"]), tuple(spec["second"])
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  styles = figures.method_styles(list(methods))
  for method in methods:
    style = styles[method]
    pairs = [(a["final"], b["final"]) for a, b in _pairs(grouped, parent, child, method)]
    pairs = [(a, b) for a, b in pairs if all(k in f for f in (a, b) for k in (first[1], second[1]))]
    for i, (a, b) in enumerate(pairs):
      xs, ys = [a[second[1]], b[second[1]]], [a[first[1]], b[first[1]]]
      ax.annotate("", xy=(xs[1], ys[1]), xytext=(xs[0], ys[0]),
                  arrowprops={"arrowstyle": "->", "color": style["color"], "alpha": 0.6})
      ax.plot(xs[:1], ys[:1], linestyle="none", markerfacecolor="none", color=style["color"], marker=style["marker"])
      ax.plot(xs[1:], ys[1:], linestyle="none", label=f"{method} (n={len(pairs)})" if i == 0 else None, **style)
  base = grouped.get((parent, "base"), [])
  if base and first[1] in base[0]["final"] and second[1] in base[0]["final"]:
    ax.plot([base[0]["final"][second[1]]], [base[0]["final"][first[1]]], "k*", markersize=10, label="base (untrained)")
  ax.set_xlabel(f"{second[0]} ({child}: the second task) →")
  ax.set_ylabel(f"{first[0]} ({parent}: the first task) →")
  ax.set_title(f"{parent} then {child}: hollow after {parent}, filled after {child}", fontsize=10)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  figures.save_png(fig, path)


def report_lines(child: str, parent: str, spec: Mapping, grouped, methods: Sequence[str], out_dir: str) -> list[str]:
  """The stages section of `child`'s results.md, and `<out>/<child>_stages.png`."""
  text = table(parent, child, spec, grouped, methods)
  if not text:
    return []
  name = f"{child}_stages.png"
  plot(os.path.join(out_dir, name), parent, child, spec, grouped, methods)
  return [f"### {parent}, then {child}", "",
          f"Each run of {child} continues its method's {parent} run of the same seed. Cells: mean [min..max] over "
          f"the seeds that ran both stages; forgetting of {parent} = {spec['first'][0]} after {parent} − after "
          f"{child}, per seed. A difference between methods smaller than this spread is not resolved.", "",
          text, "", f"![{parent} then {child}]({name})", ""]
