"""Frontier analysis of a study (issue 27): each method's new-task x retention frontier over its grid, with seed
bands, and the comparison of two methods at a matched new-task score, with a bootstrap interval over seeds and
items. Pure functions over run records (grow_jax/study/runs.py) and their per-item records
(grow_jax/evaluation/items.py); the figures go through grow_jax/figures.py (deterministic PNG bytes).

  points      `method_points`: per grid point of a method, its runs' (new task, retention) scores: the mean
              over seeds, the sd and the min..max (the seed band), from the records' `final` (validation) metrics.
  frontier    `frontier`: the points no other point of the method beats on both axes (higher new-task score AND
              higher retention), by new-task score; a method's best trade-off whatever its rate.
  retention   `retention_at`: retention read off a frontier at a new-task score x, linearly interpolated between
              its neighbouring points; None outside the frontier's range (never extrapolated).
  matched     `matched_score`: the score both frontiers reach: the lower of their best new-task scores (None when
              the ranges do not overlap); `compare_matched`: retention(A) - retention(B) there, with a percentile
              bootstrap interval: each replicate draws the items (one draw shared by every run of both methods:
              paired) and each method's seeds (with replacement, the same seed draw at every grid point),
              recomputes every point's scores from item sums (items.metric_statistic), both frontiers, the
              matched score and the difference. Replicates whose frontiers do not overlap are dropped and counted.
              The verdict is 'not resolved' when the interval covers 0.
  equal rate  `compare_at_point`: the secondary comparison at one grid point, item_stats.paired_bootstrap.

Which records: sweep and seeds phases (the runs that carry validation metrics at a grid point); diverged runs
are left out (a diverged grid point has no score; the report lists it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from grow_jax.study import item_stats

Statistic = Callable[[np.ndarray, int], np.ndarray]
Hparams = tuple
PHASES = ("sweep", "seeds")
SAMPLES = 2_000                # frontier replicates (each recomputes every point and both frontiers)


class Point(NamedTuple):
  """A grid point of a method: its hyperparameters, seeds, and each axis's mean, sd (0 with one seed) and min..max
  over seeds."""
  hparams: Hparams
  seeds: tuple[int, ...]
  x: float
  y: float
  x_sd: float
  y_sd: float
  x_range: tuple[float, float]
  y_range: tuple[float, float]


class Matched(NamedTuple):
  """Retention of A and B at the matched new-task score `x`, A - B with its percentile interval [low, high] at
  `level`, the replicates used and those dropped (no overlap), and the verdict."""
  x: float
  a: float
  b: float
  difference: float
  low: float
  high: float
  level: float
  replicates: int
  dropped: int
  verdict: str


def _key(hparams) -> Hparams:
  return tuple(tuple(kv) for kv in hparams)


def _grid_order(hparams: Hparams):
  return [(k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))) for k, v in hparams]


def method_records(records: Mapping[str, dict], task: str, method: str) -> dict[Hparams, list[dict]]:
  """Grid point -> the method's finite sweep/seeds records there (by seed), points in grid order."""
  out: dict[Hparams, list[dict]] = {}
  for r in records.values():
    if (r.get("task"), r.get("method")) == (task, method) and r.get("phase") in PHASES and not r.get("diverged"):
      out.setdefault(_key(r["hparams"]), []).append(r)
  return {k: sorted(out[k], key=lambda r: r["seed"]) for k in sorted(out, key=_grid_order)}


def _sd(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def method_points(records: Mapping[str, dict], task: str, method: str, x_key: str, y_key: str) -> list[Point]:
  """The method's grid points whose runs all have both metrics ('<entry>/<metric>' keys of `final`)."""
  points = []
  for hparams, rs in method_records(records, task, method).items():
    rs = [r for r in rs if x_key in r["final"] and y_key in r["final"]]
    if not rs:
      continue
    xs, ys = [r["final"][x_key] for r in rs], [r["final"][y_key] for r in rs]
    points.append(Point(hparams, tuple(r["seed"] for r in rs), float(np.mean(xs)), float(np.mean(ys)), _sd(xs),
                        _sd(ys), (min(xs), max(xs)), (min(ys), max(ys))))
  return points


def frontier(points: Sequence[Any]) -> list[Any]:
  """The points (anything with .x and .y, or (x, y) pairs) that no other point beats on both axes, by x; of
  points with equal scores the first is kept."""
  xy = [(p.x, p.y) if hasattr(p, "x") else (float(p[0]), float(p[1])) for p in points]
  keep = []
  for i, (x, y) in enumerate(xy):
    beaten = any((ox >= x and oy >= y and (ox > x or oy > y)) or ((ox, oy) == (x, y) and j < i)
                 for j, (ox, oy) in enumerate(xy) if j != i)
    if not beaten:
      keep.append(i)
  return [points[i] for i in sorted(keep, key=lambda i: xy[i][0])]


def _xy(front: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
  pairs = sorted((p.x, p.y) if hasattr(p, "x") else (float(p[0]), float(p[1])) for p in front)
  return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def retention_at(front: Sequence[Any], x: float) -> float | None:
  """Retention on the frontier `front` at new-task score `x` (linear between neighbours); None outside its range."""
  xs, ys = _xy(front)
  if not len(xs) or not xs[0] <= x <= xs[-1]:
    return None
  return float(np.interp(x, xs, ys))


def matched_score(front_a: Sequence[Any], front_b: Sequence[Any]) -> float | None:
  """The new-task score both frontiers reach: the lower of their best scores, if within both ranges."""
  (xa, _), (xb, _) = _xy(front_a), _xy(front_b)
  if not len(xa) or not len(xb):
    return None
  x = min(xa[-1], xb[-1])
  return float(x) if x >= max(xa[0], xb[0]) else None


def verdict(low: float, high: float) -> str:
  """'A keeps more' / 'B keeps more' when the interval excludes 0, else 'not resolved'."""
  if low > 0:
    return "A keeps more"
  if high < 0:
    return "B keeps more"
  return "not resolved"


# ---- per-item values ---------------------------------------------------------------------------------------
class Side(NamedTuple):
  """One method's per-item values at each grid point: {hparams: (x values (seeds, n_x, k_x), y values
  (seeds, n_y, k_y))}, the items in one shared order, and the statistics that turn item sums into each axis."""
  points: dict[Hparams, tuple[np.ndarray, np.ndarray]]
  x_statistic: Statistic
  y_statistic: Statistic


def _entry_items(items_by_run: Mapping[str, Mapping[str, list]], record: dict, entry: str) -> list[dict]:
  found = items_by_run.get(record["id"], {}).get(entry)
  if found is None:
    raise ValueError(f"run {record['id']} has no per-item records of {entry} (its record's 'items' file)")
  return found


def side(records: Mapping[str, dict], items_by_run: Mapping[str, Mapping[str, list]], task: str, method: str,
         x: tuple[str, str], y: tuple[str, str], ids: Mapping[str, Sequence[str]] | None = None) -> Side:
  """`Side` of a method from its records and their items ({run id: {entry: items}}, report.load_items); `x`, `y`:
  (entry, metric). `ids` {entry: item ids}: the item order to align on (default: the first run's); every run must
  hold those items."""
  from grow_jax.evaluation import items as item_records
  ids = dict(ids or {})
  statistics, points = {}, {}
  for hparams, rs in method_records(records, task, method).items():
    arrays = []
    for entry, metric in (x, y):
      per_seed = []
      for r in rs:
        found = _entry_items(items_by_run, r, entry)
        if entry not in statistics:
          statistic = item_records.metric_statistic(found[0]["kind"], metric) if found else None
          if statistic is None:
            raise ValueError(f"{entry}/{metric} is not a function of per-item sums; pick another frontier metric")
          statistics[entry] = statistic
        by_id = {item["id"]: item for item in found}
        order = ids.setdefault(entry, [item["id"] for item in found])
        missing, extra = [i for i in order if i not in by_id], len(set(by_id) - set(order))
        if missing or extra:
          raise ValueError(f"run {r['id']}: {len(missing)} of the {len(order)} items of {entry} are missing and "
                           f"{extra} others are there; runs compared must be scored on the same items")
        per_seed.append(item_records.item_matrix([by_id[i] for i in order], statistics[entry].fields))
      arrays.append(np.stack(per_seed))
    points[hparams] = (arrays[0], arrays[1])
  if not points:
    raise ValueError(f"{task}/{method}: no finite sweep or seeds records")
  return Side(points, statistics[x[0]].fn, statistics[y[0]].fn)


def _scores(values: np.ndarray, statistic: Statistic, counts: np.ndarray, seeds: np.ndarray) -> np.ndarray:
  """(replicates,): the statistic of each seed's item sums under `counts` (replicates, n), averaged over the
  seeds drawn in `seeds` (replicates, s)."""
  sums = np.einsum("rn,snk->rsk", counts, values)
  per_seed = np.asarray(statistic(sums, values.shape[1]), np.float64)           # (replicates, seeds)
  return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def _replicate_points(s: Side, counts_x: np.ndarray, counts_y: np.ndarray, rng: np.random.Generator | None):
  """{hparams: (x scores (R,), y scores (R,))}: one seed draw per replicate shared by the side's grid points (a
  point with fewer seeds draws among its own); rng None: every seed once (the point estimate)."""
  replicates = counts_x.shape[0]
  draws = {}
  out = {}
  for hparams, (xv, yv) in s.points.items():
    n_seeds = xv.shape[0]
    if rng is None:
      seeds = np.tile(np.arange(n_seeds), (replicates, 1))
    else:
      if n_seeds not in draws:
        draws[n_seeds] = rng.integers(0, n_seeds, size=(replicates, n_seeds))
      seeds = draws[n_seeds]
    out[hparams] = (_scores(xv, s.x_statistic, counts_x, seeds), _scores(yv, s.y_statistic, counts_y, seeds))
  return out


def _difference(a: Mapping, b: Mapping, r: int, x: float | None):
  """(matched x, retention A, retention B) of replicate r, or None without a matched score."""
  fronts = [frontier([(px[r], py[r]) for px, py in pts.values()]) for pts in (a, b)]
  at = x if x is not None else matched_score(*fronts)
  if at is None:
    return None
  ya, yb = retention_at(fronts[0], at), retention_at(fronts[1], at)
  return None if ya is None or yb is None else (at, ya, yb)


def compare_matched(a: Side, b: Side, *, x: float | None = None, samples: int = SAMPLES, seed: int = 0,
                    level: float = 0.95) -> Matched | None:
  """Retention(A) - retention(B) read off their frontiers at the matched new-task score (`matched_score`, or
  `x`), with a bootstrap interval over items and seeds (module docstring). None when the frontiers (from every
  item and seed) have no score in common."""
  if not 0 < level < 1 or samples < 1:
    raise ValueError(f"level={level}, samples={samples}: expected a probability in (0, 1) and a positive count")
  shapes = {(v[0].shape[1:], v[1].shape[1:]) for s in (a, b) for v in s.points.values()}
  if len(shapes) != 1:
    raise ValueError(f"every run compared must hold the same items: (n, k) shapes {sorted(shapes)}")
  n_x, n_y = a.points[next(iter(a.points))][0].shape[1], a.points[next(iter(a.points))][1].shape[1]
  point = _difference(_replicate_points(a, np.ones((1, n_x)), np.ones((1, n_y)), None),
                      _replicate_points(b, np.ones((1, n_x)), np.ones((1, n_y)), None), 0, x)
  if point is None:
    return None
  rng = np.random.default_rng(seed)
  counts_x = rng.multinomial(n_x, np.full(n_x, 1.0 / n_x), size=samples).astype(np.float64)
  counts_y = rng.multinomial(n_y, np.full(n_y, 1.0 / n_y), size=samples).astype(np.float64)
  reps_a = _replicate_points(a, counts_x, counts_y, rng)
  reps_b = _replicate_points(b, counts_x, counts_y, rng)
  diffs = [d[1] - d[2] for r in range(samples) if (d := _difference(reps_a, reps_b, r, x)) is not None]
  if not diffs:
    low = high = float("nan")
    text = "not resolved"
  else:
    low, high = (float(v) for v in np.percentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))
    text = verdict(low, high)
  at, ya, yb = point
  return Matched(at, ya, yb, ya - yb, low, high, level, len(diffs), samples - len(diffs), text)


def compare_at_point(a: Side, b: Side, hparams, axis: str = "y", *, samples: int = item_stats.BOOTSTRAP,
                     seed: int = 0) -> item_stats.PairedDifference:
  """The secondary, equal-rate comparison: A - B of one axis ('x' new task, 'y' retention) at grid point
  `hparams` of both methods, paired over items (and averaged over seeds): item_stats.paired_bootstrap."""
  key, i = _key(hparams), {"x": 0, "y": 1}[axis]
  if key not in a.points or key not in b.points:
    raise ValueError(f"grid point {key} is not run by both methods")
  statistic = a.x_statistic if axis == "x" else a.y_statistic
  return item_stats.paired_bootstrap(a.points[key][i], b.points[key][i], statistic, samples=samples, seed=seed)


# ---- the report's part ---------------------------------------------------------------------------------------
def _hparams_text(hparams: Hparams) -> str:
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                   for k, v in hparams)


def frontier_table(points_by_method: Mapping[str, Sequence[Point]], x_label: str, y_label: str) -> str:
  """Markdown: every grid point of every method, mean ± sd over seeds of both axes, on the frontier or not."""
  from grow_jax import tables
  rows = []
  for method, points in points_by_method.items():
    on = {p.hparams for p in frontier(points)}
    for p in points:
      rows.append([method, _hparams_text(p.hparams) or "–", str(len(p.seeds)), f"{p.x:.4g} ± {p.x_sd:.2g}",
                   f"{p.y:.4g} ± {p.y_sd:.2g}", "✓" if p.hparams in on else ""])
  return tables.markdown(["method", "grid point", "seeds", x_label, y_label, "frontier"], rows) if rows else ""


def matched_line(a: str, b: str, result: Matched | None, y_label: str) -> str:
  """One line: the matched-score comparison and its verdict."""
  if result is None:
    return f"{a} vs {b}: their frontiers share no new-task score; no matched comparison (not resolved)."
  who = {"A keeps more": f"{a} keeps more", "B keeps more": f"{b} keeps more"}.get(result.verdict, "not resolved")
  return (f"{a} vs {b} at matched new-task score {result.x:.4g}: {y_label} {result.a:.4g} vs {result.b:.4g}, "
          f"difference {result.difference:+.4g} [{100 * result.level:.0f}% bootstrap over items x seeds: "
          f"{result.low:+.4g}, {result.high:+.4g}; {result.replicates} replicates, {result.dropped} without a "
          f"matched score] → {who}")


def report_lines(task: str, spec: Mapping[str, Any], records: Mapping[str, dict],
                 items_by_run: Mapping[str, Mapping[str, list]], out_dir: str) -> list[str]:
  """The frontier section of a task's results.md, and `<out>/<task>_frontier.png`. `spec` (the study's
  report[task]['frontier']): {'x': [label, '<entry>/<metric>'], 'y': [label, key], 'methods': [...],
  'compare': [[A, B], ...] (matched-score comparisons, A's retention minus B's), optionally 'x_fallback' [label,
  key] and 'min_range' (`new_task_axis`)}. A comparison whose runs lack
  per-item records is reported as such."""
  import os
  (x_label, x_key), (y_label, y_key) = new_task_axis(records, task, spec), spec["y"]
  points = {m: method_points(records, task, m, x_key, y_key) for m in spec["methods"]}
  points = {m: p for m, p in points.items() if p}
  lines = [f"### Frontier: {x_label} x {y_label} (validation, every grid point; mean ± sd over seeds)", ""]
  if x_key != spec["x"][1]:
    lines += [f"No run's {spec['x'][0]} rose more than {spec['min_range']:g} above the untrained model's: the "
              f"pre-registered fallback axis {x_label} is read instead.", ""]
  if not points:
    return lines + ["No grid point has both scores yet.", ""]
  lines += [frontier_table(points, x_label, y_label), ""]
  frontier_plot(os.path.join(out_dir, f"{task}_frontier.png"), task, points, (x_label, y_label),
                base=_base_point(records, task, x_key, y_key))
  lines += [f"![frontier]({task}_frontier.png)", ""]
  x_entry, y_entry = (tuple(k.split("/", 1)) for k in (x_key, y_key))
  for a, b in spec.get("compare", []):
    if a not in points or b not in points:
      lines.append(f"{a} vs {b}: not run yet.")
      continue
    try:
      sides = [side(records, items_by_run, task, m, x_entry, y_entry) for m in (a, b)]
      lines.append(matched_line(a, b, compare_matched(*sides), y_label))
    except ValueError as e:
      lines.append(f"{a} vs {b}: no item-level comparison ({e}).")
  return lines + [""]


def new_task_axis(records: Mapping[str, dict], task: str, spec: Mapping[str, Any]) -> tuple[str, str]:
  """The frontier's new-task axis [label, key]: spec['x'], unless the spec names an 'x_fallback' and a 'min_range'
  and no finished run of the task (sweep or seeds) scores more than min_range above the untrained model (0 without
  a base record) on spec['x']: a task not yet learned on its primary metric has no frontier there, and the rule
  that says so is fixed in the study file before the runs."""
  label, key = spec["x"]
  if "x_fallback" not in spec:
    return label, key
  base = next((r["final"][key] for r in records.values() if (r.get("task"), r.get("method")) == (task, "base")
               and key in r["final"]), 0.0)
  scores = [r["final"][key] for r in records.values() if r.get("task") == task and r.get("phase") in PHASES
            and not r.get("diverged") and key in r["final"]]
  if not scores or max(scores) - base > spec["min_range"]:
    return label, key
  return tuple(spec["x_fallback"])


def _base_point(records: Mapping[str, dict], task: str, x_key: str, y_key: str) -> tuple[float, float] | None:
  for r in records.values():
    if (r.get("task"), r.get("method")) == (task, "base") and x_key in r["final"] and y_key in r["final"]:
      return r["final"][x_key], r["final"][y_key]
  return None


# ---- figures -----------------------------------------------------------------------------------------------
def frontier_plot(path: str, task: str, points_by_method: Mapping[str, Sequence[Point]], labels: tuple[str, str],
                  base: tuple[float, float] | None = None) -> None:
  """Every grid point (mean over seeds; bars: min..max over seeds on both axes), each method's frontier a line,
  its seed band (retention min..max along the frontier) shaded; the untrained model a dotted line."""
  from grow_jax import figures
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  styles = figures.method_styles(list(points_by_method))
  for method, points in points_by_method.items():
    style = styles[method]
    for p in points:
      ax.errorbar([p.x], [p.y], xerr=[[p.x - p.x_range[0]], [p.x_range[1] - p.x]],
                  yerr=[[p.y - p.y_range[0]], [p.y_range[1] - p.y]], linestyle="none", capsize=2, alpha=0.6,
                  color=style["color"], marker=style["marker"], markersize=4)
    front = frontier(points)
    xs = [p.x for p in front]
    ax.plot(xs, [p.y for p in front], "-", label=f"{method} ({len(points)} points)", **style)
    ax.fill_between(xs, [p.y_range[0] for p in front], [p.y_range[1] for p in front], alpha=0.15,
                    color=style["color"], linewidth=0)
  if base is not None:
    ax.axhline(base[1], color="k", linestyle=":", linewidth=1, label=f"base (untrained; {labels[0]} {base[0]:.3g})")
  ax.set_xlabel(f"{labels[0]} (new task) →")
  ax.set_ylabel(f"{labels[1]} (original ability) →")
  ax.set_title(f"{task}: frontiers (bars and bands: min..max over seeds)")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  figures.save_png(fig, path)


def curve_bands(curves: Sequence[Sequence[Mapping[str, float]]], key: str):
  """(steps, mean, low, high) over seeds of `key` in runs' curves ([{'step': s, key: v, ...}] each), at the steps
  every curve measured."""
  per_run = [{p["step"]: p[key] for p in c if key in p} for c in curves]
  steps = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
  values = np.array([[d[s] for s in steps] for d in per_run]).reshape(len(per_run), len(steps))
  if not steps:
    return [], np.zeros(0), np.zeros(0), np.zeros(0)
  return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def curve_start(entries: Sequence[str], max_examples: int, base_items: Mapping[str, Sequence[Mapping]],
                keys: Sequence[str]) -> dict[str, float]:
  """Step 0 of learning curves: the untrained model's value of each curve key ('<set>/<metric>') on the items a
  periodic evaluation reads, the first `max_examples` of each curve entry ('<set>:<split>'), recomputed from the
  base record's per-item scores (an evaluation of at most n examples reads a set's first n). Keys whose entry
  has no base items, or whose metric is not a function of per-item sums, get no start."""
  from grow_jax.evaluation import items
  by_set = {entry.split(":")[0]: entry for entry in entries}
  out = {}
  for key in keys:
    name, _, metric = key.partition("/")
    scored = base_items.get(by_set.get(name, ""), [])[:max_examples]
    if scored and items.metric_statistic(scored[0]["kind"], metric) is not None:
      out[key] = items.metric_from_items(scored, metric)
  return out


def wants_log_axis(values: np.ndarray) -> bool:
  """Whether a panel's values are all positive and span 100x or more (perplexity: a linear axis shows one curve)."""
  return bool(values.size) and values.min() > 0 and values.max() >= 100 * values.min()


def curves_plot(path: str, title: str, curves_by_method: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                series: Sequence[tuple[str, str]], start: Mapping[str, float] | None = None) -> None:
  """One panel per series (label, curve key: the new task, each retention probe): each method's mean over seeds
  against training steps, its band min..max over seeds (the paper's Fig. 2, measured). `start`: the untrained
  model's value per key, drawn at step 0 of every method's curve (`curve_start`). A panel whose values are all
  positive and span 100x or more (perplexity) has a logarithmic axis."""
  from grow_jax import figures
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, len(series), figsize=(5.2 * len(series), 4.2), dpi=120, squeeze=False)
  styles = figures.method_styles(list(curves_by_method))
  for ax, (label, key) in zip(axes[0], series):
    drawn = []
    for method, curves in curves_by_method.items():
      steps, mean, low, high = curve_bands(curves, key)
      if not steps:
        continue
      if start and key in start and steps[0] > 0:
        steps, (mean, low, high) = [0] + list(steps), (np.concatenate([[start[key]], a]) for a in (mean, low, high))
      ax.plot(steps, mean, markersize=3, label=f"{method} (n={len(curves)})", **styles[method])
      ax.fill_between(steps, low, high, alpha=0.15, color=styles[method]["color"], linewidth=0)
      drawn += [low, high]
    if wants_log_axis(np.concatenate(drawn) if drawn else np.zeros(0)):
      ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  figures.save_png(fig, path)
