"""A study's results from its run records: results.csv, results.md (mean ± sd over seeds, 95% bootstrap
intervals, paired differences against SFT), and plots (new-task score vs retention; learning curves). Where the
records name per-item files (runs/<run>.items.jsonl.gz), each task also gets paired item-level comparisons of
every method against its reference (`item_comparison_table`: paired bootstrap over items x seeds, exact McNemar)
and capitals_gen's answers by class (`capitals_table`: right city in another language, wrong city, format lost).

Deterministic: the same records give byte-identical files (a fixed bootstrap seed, sorted rows), so re-running
the study on a checkout with its committed runs/ regenerates the committed results exactly.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Mapping, Sequence

import numpy as np

from grow_jax import figures, files, tables
from grow_jax.study import runs, stages

BOOTSTRAP = 10_000


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
  """Percentile interval of the mean over resampled values (nan with fewer than 2 values)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return math.nan, math.nan
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
  lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
  return float(lo), float(hi)


def _metric_keys(records: Sequence[dict]) -> list[str]:
  return sorted({k for r in records for k in r.get("final", {})})


def write_csv(records: Mapping[str, dict], path: str) -> None:
  """One row per run: identity, cost, and every final metric."""
  rows = sorted(records.values(), key=lambda r: r["id"])
  keys = _metric_keys(rows)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["id", "task", "method", "hparams", "seed", "phase", "steps", "train_seconds", "eval_seconds",
                   "test_seconds"] + keys)
  for r in rows:
    hp = ";".join(f"{k}={v}" for k, v in r["hparams"])
    writer.writerow([r["id"], r["task"], r["method"], hp, r["seed"], r["phase"], r["steps"],
                     f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}", f"{r.get('test_seconds', 0):.0f}"]
                    + [_num(r["final"].get(k)) for k in keys])
  files.write_text(path, buffer.getvalue())


def _num(x) -> str:
  return "" if x is None else f"{x:.6g}"


def groups(records: Mapping[str, dict], selected: Mapping[tuple[str, str], dict]) -> dict[tuple[str, str], list]:
  """(task, method) -> the records at the method's selected grid point (every seed), plus (task, 'base')."""
  out: dict[tuple[str, str], list] = {}
  for r in records.values():
    if r["method"] == "base":
      out.setdefault((r["task"], "base"), []).append(r)
      continue
    if _is_selected(r, selected):
      out.setdefault((r["task"], r["method"]), []).append(r)
  for rs in out.values():
    rs.sort(key=lambda r: r["seed"])
  return out


def summary_table(task: str, metrics: Sequence[tuple[str, str]], grouped, methods: Sequence[str],
                  reference: str = "sft") -> str:
  """Markdown: per method, mean ± sd [95% CI] over seeds of each metric, and the paired difference against the
  reference method at the same seeds."""
  header = ["method", "seeds", "selected"] + [label for label, _ in metrics]
  rows = []
  ref = {r["seed"]: r for r in grouped.get((task, reference), [])}
  for method in ["base"] + list(methods):
    rs = grouped.get((task, method), [])
    if not rs:
      continue
    diverged = sum(bool(r.get("diverged")) for r in rs)
    cells = [method, f"{len(rs)}" + (f" ({diverged} diverged)" if diverged else ""), _hparams_text(rs[0]["hparams"])]
    for _, key in metrics:
      values = [r["final"][key] for r in rs if key in r["final"]]
      if not values:
        cells.append("–")
        continue
      mean, sd = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
      lo, hi = bootstrap_ci(values)
      text = f"{mean:.3g}" + (f" ± {sd:.2g} [{lo:.3g}, {hi:.3g}]" if len(values) > 1 else "")
      diffs = [r["final"][key] - ref[r["seed"]]["final"][key] for r in rs      # seeds scored on both sides
               if key in r["final"] and r["seed"] in ref and key in ref[r["seed"]]["final"]]
      if method not in (reference, "base") and diffs:
        dlo, dhi = bootstrap_ci(diffs)
        text += f"; Δ {np.mean(diffs):+.3g}" + (f" [{dlo:+.3g}, {dhi:+.3g}]" if len(diffs) > 1 else "")
      cells.append(text)
    rows.append(cells)
  return tables.markdown(header, rows)


def _hparams_text(hparams) -> str:
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                   for k, v in hparams)


def pick_text(study, selected, task: str, method: str) -> str:
  """A method's selected grid point, flagged when it sits on its grid's edge (the grid, grown or not, does not
  bracket the best value there)."""
  hparams = selected[(task, method)]["hparams"]
  edges = runs.grid_edges(runs.method_grid(study, selected, task, method), dict(hparams))
  note = "; ".join(f"{k.rsplit('.', 1)[-1]} is its grid's {side}" for k, side in edges.items())
  return (_hparams_text(hparams) or "its one point (no grid)") + (f" (edge: {note})" if note else "")


def _grid_records(records: Mapping[str, dict], task: str) -> list[dict]:
  """The task's untrained-model and grid-point (sweep) records."""
  return [r for r in records.values() if r["task"] == task and r["phase"] in ("base", "sweep")]


def _grid_key(record: dict) -> list:
  """Grid order: each hyperparameter by value (numbers before strings)."""
  return [(k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))) for k, v in record["hparams"]]


def _is_selected(record: dict, selected: Mapping[tuple[str, str], dict]) -> bool:
  chosen = selected.get((record["task"], record["method"]))
  return chosen is not None and chosen["hparams"] == record["hparams"]


def sweep_table(task: str, metrics: Sequence[tuple[str, str]], records: Mapping[str, dict], methods: Sequence[str],
                selected: Mapping[tuple[str, str], dict]) -> str:
  """Markdown: every grid point's validation scores (what selection saw), the untrained model first; the
  selected point of each method is marked. Where several seeds swept, a row per seed, with a seed column."""
  order = {m: i for i, m in enumerate(["base"] + list(methods))}
  grid = [r for r in _grid_records(records, task) if r["method"] in order]
  seeded = len({r["seed"] for r in grid}) > 1
  header = (["method", "grid point"] + ["seed"] * seeded + ["selected"] + [label for label, _ in metrics]
            + ["minutes (train + validation)"])
  rows = []
  for r in sorted(grid, key=lambda r: (order[r["method"]], _grid_key(r), r["seed"])):
    mark = "✓" if _is_selected(r, selected) else ""
    rows.append([r["method"], _hparams_text(r["hparams"]) or "–"] + [str(r["seed"])] * seeded + [mark]
                + ["diverged" if r.get("diverged") else f"{r['final'][key]:.4g}" if key in r["final"] else "–"
                   for _, key in metrics]
                + [f"{(r['train_seconds'] + r['eval_seconds']) / 60:.1f}"])
  return tables.markdown(header, rows) if rows else ""


def sweep_plot(path: str, task: str, records: Mapping[str, dict], methods: Sequence[str], x: tuple[str, str],
               y: tuple[str, str], selected: Mapping[tuple[str, str], dict]) -> None:
  """Every grid point on the validation sets: new-task score (x) vs retention (y), a line per method through its
  grid in order, the selected point ringed, the untrained model a dotted line at its retention. Where several seeds
  swept a point, the line goes through their mean (what selection saw) and each seed is a small dot."""
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  styles = figures.method_styles(methods)
  for method in ["base"] + list(methods):
    points: dict[str, list[dict]] = {}         # grid point -> its seeds' records, in grid order
    for r in sorted((r for r in _grid_records(records, task) if r["method"] == method
                     and x[1] in r["final"] and y[1] in r["final"]), key=lambda r: (_grid_key(r), r["seed"])):
      points.setdefault(_hparams_text(r["hparams"]), []).append(r)
    if not points:
      continue
    xs = [float(np.mean([r["final"][x[1]] for r in rs])) for rs in points.values()]
    ys = [float(np.mean([r["final"][y[1]] for r in rs])) for rs in points.values()]
    if method == "base":
      _base_line(ax, xs[0], ys[0], x)
      continue
    line, = ax.plot(xs, ys, "-", label=method, **styles[method])
    for (text, rs), xi, yi in zip(points.items(), xs, ys):
      if len(rs) > 1:
        ax.plot([r["final"][x[1]] for r in rs], [r["final"][y[1]] for r in rs], ".", markersize=4,
                color=line.get_color(), alpha=0.6)
      ax.annotate(text.replace("learning_rate=", "lr "), (xi, yi), textcoords="offset points", xytext=(4, 4),
                  fontsize=7)
      if _is_selected(rs[0], selected):
        ax.plot([xi], [yi], "o", markersize=13, markerfacecolor="none", markeredgecolor=line.get_color())
  _save_scatter(fig, ax, path, x, y, f"{task}: every grid point on validation (ringed: selected)")


def pareto_plot(path: str, task: str, grouped, methods: Sequence[str], x: tuple[str, str], y: tuple[str, str],
                extra_curves: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> None:
  """New-task score (x) vs retention (y), one point per method (mean, error bars = sd over seeds), the untrained
  model a dotted line at its retention."""
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  styles = figures.method_styles(list(methods) + list(extra_curves or {}))
  for method in ["base"] + list(methods):
    rs = grouped.get((task, method), [])
    xs = [r["final"][x[1]] for r in rs if x[1] in r["final"]]
    ys = [r["final"][y[1]] for r in rs if y[1] in r["final"]]
    if not xs or not ys:
      continue
    if method == "base":
      _base_line(ax, np.mean(xs), np.mean(ys), x)
      continue
    ax.errorbar(np.mean(xs), np.mean(ys), xerr=np.std(xs, ddof=1) if len(xs) > 1 else None,
                yerr=np.std(ys, ddof=1) if len(ys) > 1 else None, linestyle="none", capsize=3,
                label=f"{method} (n={len(rs)})", **styles[method])
    ax.annotate(method, (np.mean(xs), np.mean(ys)), textcoords="offset points", xytext=(4, 4), fontsize=7)
  for label, points in (extra_curves or {}).items():
    px, py = zip(*points)
    ax.plot(px, py, "--", label=label, markersize=4, **styles[label])
  _save_scatter(fig, ax, path, x, y, f"{task}: learning vs forgetting")


def _base_line(ax, bx: float, by: float, x: tuple[str, str]) -> None:
  """The untrained model as a dotted line at its retention, its new-task score in the label: as a point it sits
  far to the left of every trained model and squeezes them into a sliver of the x-axis."""
  ax.axhline(by, color="k", linestyle=":", linewidth=1, label=f"base (untrained; {x[0]} {bx:.3g})")


def _save_scatter(fig, ax, path: str, x: tuple[str, str], y: tuple[str, str], title: str) -> None:
  """Axis labels (new task vs original ability), title, legend, saved (`figures.save_png`)."""
  ax.set_xlabel(f"{x[0]} (new task) →")
  ax.set_ylabel(f"{y[0]} (original ability) →")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  figures.save_png(fig, path)


def curve_runs(records: Mapping[str, dict], grouped, task: str, method: str) -> list[dict]:
  """The runs whose curves a task's figure draws for a method: those at its selected grid point; before its
  selection, its runs if they all share one grid point (a one-point grid chooses nothing), by seed."""
  if (task, method) in grouped:
    return grouped[(task, method)]
  rs = sorted((r for r in records.values() if r["task"] == task and r["method"] == method and r.get("curve")),
              key=lambda r: r["seed"])
  return rs if len({tuple(map(tuple, r["hparams"])) for r in rs}) == 1 else []


def curve_lines(task: str, spec, records: Mapping[str, dict], grouped, items_by_run,
                series: Sequence[tuple[str, str]], out_dir: str) -> list[str]:
  """The learning-curve figure of `task` (study/frontier.py `curves_plot`: mean over seeds, band min..max) and
  the line that says what its panels read; step 0 is the untrained model on the same items where the task's base
  record has per-item scores."""
  from grow_jax.study import frontier
  curves = {m: [r["curve"] for r in curve_runs(records, grouped, task, m) if r.get("curve")]
            for m in spec.curves["methods"]}
  entries, k = list(spec.curves["tasks"].get(task, [])), spec.curves["max_examples"]
  base = next((r for r in grouped.get((task, "base"), []) if r["id"] in items_by_run), None)
  start = frontier.curve_start(entries, k, items_by_run[base["id"]], [key for _, key in series]) if base else {}
  name = f"{task}_curves.png"
  frontier.curves_plot(os.path.join(out_dir, name), f"{task}: along training (mean over seeds, band min..max)",
                       {m: c for m, c in curves.items() if c}, series, start)
  line = (f"Along training: every {spec.curves['every']} steps, the first {k} items of "
          + (", ".join(entries) or "each set")
          + ("; step 0 is the untrained model on the same items (its per-item record)" if start else "") + ".")
  return [f"![{task}: learning curves]({name})", "", line, ""]


def cost_lines(records: Mapping[str, dict]) -> list[str]:
  """Measured CPU cost per run kind and in total."""
  rs = list(records.values())
  total = sum(r["seconds"] for r in rs)
  train = sum(r["train_seconds"] for r in rs)
  evals = sum(r["eval_seconds"] + r.get("test_seconds", 0.0) for r in rs)
  borrowed = [r for r in rs if r.get("borrowed_from")]
  lines = [f"Runs: {len(rs)}" + (f" ({len(borrowed)} borrowed from another study's identical runs, costing "
                                  "nothing here)" if borrowed else "")
           + f"; wall time in total {total / 3600:.2f} h (training {train / 3600:.2f} h, final "
           f"evaluations {evals / 3600:.2f} h)."]
  by_method: dict[str, list[float]] = {}
  for r in rs:
    if r.get("borrowed_from"):
      continue
    by_method.setdefault(r["method"], []).append(r["seconds"])
  if by_method:
    lines.append("Mean wall time per run: " + ", ".join(f"{m} {np.mean(v) / 60:.1f} min"
                                                        for m, v in sorted(by_method.items())) + ".")
  return lines


def integrity_lines(records: Mapping[str, dict]) -> list[str]:
  """What the records say about their own provenance (runs.py, "Integrity"): records from before run identities,
  records made from a modified checkout, test phases that retrained their run elsewhere."""
  rs = list(records.values())
  lines = []
  legacy = [r for r in rs if "identity" not in r]
  if legacy:
    lines.append(f"Run identities: {len(legacy)} of {len(rs)} records predate stored run identities; they were "
                 "checked against the study file on what they stored (steps, batch size, sequence length, mode, grid "
                 "point, seed, and the sets and example counts they were scored on), not on every config key.")
  dirty = [r for r in rs if r.get("dirty") or r.get("test_source", {}).get("dirty")]
  if dirty:
    lines.append(f"{len(dirty)} record(s) were made from a checkout with modified tracked files (their "
                 "`dirty_files` name them): " + ", ".join(sorted(r["id"] for r in dirty)) + ".")
  retrained = sorted((r for r in rs if r.get("test_retrained")), key=lambda r: r["id"])
  if retrained:
    lines.append(f"{len(retrained)} test phase(s) retrained their run (its params were not kept) and reproduced its "
                 "validation metrics within the study's tolerance (`reproduce_tolerance`); each metric, recorded → "
                 "retrained:")
    lines += ["", retrain_table(retrained)]
  return lines


def retrain_table(retrained: list[dict]) -> str:
  """One row per retrained test phase: each validation metric as recorded by the sweep → as the retrain measured
  it (what the test sets scored), so that a reader sees how far another machine's retrain drifted."""
  counts = ("/num_examples", "/num_tokens")
  metrics = sorted({m for r in retrained for m in r["test_retrained"]
                    if m in r["final"] and not m.endswith(counts)})
  rows = [[r["id"]] + [f"{r['final'][m]:.4g} → {r['test_retrained'][m]:.4g}"
                       if m in r["test_retrained"] and m in r["final"] else "–" for m in metrics]
          for r in retrained]
  return tables.markdown(["run"] + metrics, rows)


def override_lines(records: Mapping[str, dict], task: str) -> list[str]:
  """The task's selection overrides (runs.override_selection), from the records' selection files."""
  out = []
  for (t, method), selection in sorted(getattr(records, "frozen", {}).items()):
    for o in selection.get("overrides", []) if t == task else []:
      out.append(f"{method}: frozen at {', '.join(o['from'])}, re-selected ({o['to']}) on {o['date']}: {o['reason']}")
  return ["Selection overrides: " + "; ".join(out)] if out else []


# ---- per-item records ----------------------------------------------------------------------------------
def load_items(records: Mapping[str, dict], out_dir: str) -> dict[str, dict[str, list]]:
  """Run id -> {entry: per-item records} for every record that names an item file (checked by its sha256)."""
  from grow_jax.evaluation import items
  out = {}
  for run_id, record in sorted(records.items()):
    named = record.get("items")
    if named:
      out[run_id] = items.read_items(os.path.join(out_dir, "runs", named["file"]), named["sha256"])
  return out


def _seed_items(grouped, items_by_run, task: str, method: str, entry: str) -> dict[int, list]:
  """seed -> the entry's items of the method's selected records that have them."""
  return {r["seed"]: items_by_run[r["id"]][entry] for r in grouped.get((task, method), [])
          if entry in items_by_run.get(r["id"], {}) and not r.get("diverged")}


def _aligned(per_seed: Mapping[int, list], seeds: Sequence[int], ids: Sequence[str], fields) -> np.ndarray:
  """(seeds, n, k): each seed's values of `fields` on the items `ids`, in that order."""
  from grow_jax.evaluation import items
  out = []
  for seed in seeds:
    by_id = {item["id"]: item for item in per_seed[seed]}
    out.append(items.item_matrix([by_id[i] for i in ids], fields))
  return np.stack(out)


def item_comparison_rows(task: str, metrics: Sequence[tuple[str, str]], grouped, items_by_run, methods: Sequence[str],
                         reference: str = "sft") -> list[list[str]]:
  """Per method (against `reference`) and metric with items on both sides: the items and seeds they share, the
  difference of the metric (mean over the shared seeds), its 95% paired-bootstrap interval over items (items x
  seeds) and, for a 0/1 metric, the exact McNemar p at each shared seed."""
  from grow_jax.evaluation import items
  from grow_jax.study import item_stats
  rows = []
  for method in methods:
    if method in (reference, "base"):
      continue
    for label, key in metrics:
      entry, _, metric = key.partition("/")
      mine = _seed_items(grouped, items_by_run, task, method, entry)
      theirs = _seed_items(grouped, items_by_run, task, reference, entry)
      seeds = sorted(set(mine) & set(theirs))
      if not seeds:
        continue
      statistic = items.metric_statistic(mine[seeds[0]][0]["kind"], metric) if mine[seeds[0]] else None
      if statistic is None:
        continue
      ids = [i["id"] for i in theirs[seeds[0]]]
      for per_seed in (mine, theirs):
        shared = set.intersection(*({i["id"] for i in per_seed[s]} for s in seeds))
        ids = [i for i in ids if i in shared]
      if not ids:
        continue
      a = _aligned(mine, seeds, ids, statistic.fields)
      b = _aligned(theirs, seeds, ids, statistic.fields)
      result = item_stats.paired_bootstrap(a, b, statistic.fn)
      p = "–"
      if statistic.binary:
        p = " / ".join(f"{item_stats.mcnemar(a[s, :, 0], b[s, :, 0]).p:.2g}" for s in range(len(seeds)))
      rows.append([method, label, str(len(ids)), ",".join(map(str, seeds)), f"{result.difference:+.3g}",
                   f"[{result.low:+.3g}, {result.high:+.3g}]", p])
  return rows


def item_comparison_table(task: str, metrics, grouped, items_by_run, methods, reference: str = "sft") -> str:
  rows = item_comparison_rows(task, metrics, grouped, items_by_run, methods, reference)
  if not rows:
    return ""
  return tables.markdown(["method", f"metric (Δ vs {reference})", "items", "seeds", "Δ", "95% interval (items)",
                          "McNemar p (per seed)"], rows)


def capitals_table(task: str, metrics, grouped, items_by_run, methods: Sequence[str]) -> str:
  """capitals_gen's answers by class (grow_jax/evaluation/capitals_errors.py), per method: mean count over its
  selected seeds (share of the items)."""
  from grow_jax.evaluation import capitals_errors
  entries = list(dict.fromkeys(key.partition("/")[0] for _, key in metrics
                               if key.partition(":")[0] == "capitals_gen"))
  rows = []
  for entry in entries:
    for method in ["base"] + list(methods):
      per_seed = _seed_items(grouped, items_by_run, task, method, entry)
      if not per_seed:
        continue
      counts = [capitals_errors.breakdown(items) for _, items in sorted(per_seed.items())]
      n = len(next(iter(per_seed.values())))
      cells = []
      for name in capitals_errors.CLASSES:
        mean = float(np.mean([c[name] for c in counts]))
        cells.append(f"{mean:.3g} ({100 * mean / n:.0f}%)")
      rows.append([entry, method, str(len(counts)), str(n)] + cells)
  if not rows:
    return ""
  return tables.markdown(["set", "method", "seeds", "items", "correct", "right city, other language", "wrong city",
                          "format lost"], rows)


def item_lines(task: str, report: Mapping, grouped, items_by_run, methods: Sequence[str]) -> list[str]:
  """The task's item-level section (empty without per-item records)."""
  from grow_jax.study import item_stats
  metrics = [tuple(m) for m in report["metrics"]]
  reference = report.get("reference", "sft")
  lines = []
  table = item_comparison_table(task, metrics, grouped, items_by_run, methods, reference)
  if table:
    lines += [f"Paired over the test items (each method against {reference} on the items both scored, at the seeds "
              "both ran): Δ of the metric as the table above computes it, its 95% paired-bootstrap interval "
              f"({item_stats.BOOTSTRAP:,} resamples of the items, the same items for both methods and every seed; "
              "seeds averaged), and for 0/1 metrics the exact McNemar p at each seed:", "", table, ""]
  capitals = capitals_table(task, metrics, grouped, items_by_run, methods)
  if capitals:
    lines += ["capitals_gen's answers by class (mean count over seeds; grow_jax/evaluation/capitals_errors.py): "
              "'other language' is the right city under another name ('Londres'), a lower bound (a name missing "
              "from the exonym list counts as a wrong city); 'format lost' is no city name at all (empty, a "
              "sentence, the country, the right city inside other text):", "", capitals, ""]
  return lines


def write_report(study, records: Mapping[str, dict], selected, out_dir: str) -> str:
  """results.csv, results.md and the plots under `out_dir`; returns the markdown."""
  spec = study.spec
  write_csv(records, os.path.join(out_dir, "results.csv"))
  grouped = groups(records, selected)
  lines = [f"# Study {spec.name}", "", f"Regenerate: `python -m grow_jax.study --study={study.path}"
           + (f":{study.arg}" if study.arg else "") + f" --out={out_dir}` (runs with a JSON under runs/ are skipped).",
           ""]
  lines += [spec.description.strip(), ""]
  lines += cost_lines(records) + [""]
  integrity = integrity_lines(records)
  lines += integrity + [""] if integrity else []
  items_by_run = load_items(records, out_dir)
  for task, report in spec.report.items():
    methods = study.methods(task)
    lines += [f"## {task}", ""]
    picked = [m for m in methods if (task, m) in selected]
    if picked:
      lines += ["Selected on validation (" + str(report.get("selection", "")) + "): " + "; ".join(
          f"{m}: " + pick_text(study, selected, task, m) for m in picked), ""]
    overrides = override_lines(records, task)
    lines += overrides + [""] if overrides else []
    metrics = [tuple(m) for m in report["metrics"]]
    lines += [summary_table(task, metrics, grouped, methods, reference=report.get("reference", "sft")), ""]
    lines += item_lines(task, report, grouped, items_by_run, methods) if items_by_run else []
    if report.get("frontier"):           # the primary analysis of studies that declare one (study/frontier.py)
      from grow_jax.study import frontier
      lines += frontier.report_lines(task, report["frontier"], records, items_by_run, out_dir)
    if report.get("stages") and task in spec.after:   # sequential tasks (study/stages.py)
      lines += stages.report_lines(task, spec.after[task], report["stages"], grouped, methods, out_dir)
    if report.get("pareto"):
      x, y = (tuple(a) for a in report["pareto"])
      name = f"{task}_pareto.png"
      pareto_plot(os.path.join(out_dir, name), task, grouped, methods, x, y)
      lines += [f"![{task}: new task vs retention]({name})", ""]
    if report.get("curves"):
      lines += curve_lines(task, spec, records, grouped, items_by_run, [tuple(s) for s in report["curves"]], out_dir)
    validation = [tuple(m) for m in report.get("validation", [])]
    sweep = sweep_table(task, validation, records, methods, selected) if validation else ""
    if sweep:
      swept = list(spec.seeds[:spec.sweep_seeds])
      saw = (f"seed {swept[0]}; what the selection rule saw" if len(swept) == 1 else
             f"seeds {', '.join(map(str, swept))}, a row each; the selection rule saw their mean")
      lines += [f"Every grid point on the validation sets ({saw}):", "", sweep, ""]
      if len(validation) >= 2:
        name = f"{task}_sweep.png"
        sweep_plot(os.path.join(out_dir, name), task, records, methods, validation[0], validation[-1], selected)
        lines += [f"![{task}: every grid point on validation]({name})", ""]
  lines += ["Cells: mean ± sd over seeds [95% bootstrap interval of the mean over seeds]; Δ: the paired "
            "difference against the reference method at the same seeds [its 95% bootstrap interval]. One seed: the "
            "value alone. With 3 seeds a bootstrap interval is close to [min, max] of the seeds (it covers the true "
            "mean far less often than 95%): read it as the spread of the seeds, not as a test. The first seed of each "
            "method is its selected grid point, chosen on validation among several, so it may sit above the "
            "method's other seeds.", ""]
  text = "\n".join(lines)
  files.write_text(os.path.join(out_dir, "results.md"), text)
  return text
