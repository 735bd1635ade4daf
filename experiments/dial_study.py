r"""The dial, pre-registered: a study's trained models moved back toward the untrained one by a rule fixed before
any test set saw them, then scored once on the study's test sets at every seed. For a grown method (G-Freeze,
G-Train) the move is the paper's dial (the copies' share of the down projection); for an ungrown one (SFT) it is
weight interpolation toward the untrained weights (WiSE-FT), the control that asks whether the dial's trade-off
is particular to growth.

  python experiments/dial_study.py --study=experiments/studies/forgetting_270m.py \
      --results=experiments/results/forgetting_270m --kept=/tmp/grow_jax/studies/forgetting_270m/kept \
      --task=translation --methods=g_freeze,sft --out=experiments/results/dial_270m/preregistered

The rule (fixed on 2026-11-30, before any dialed or interpolated model met a test set and before SFT's
interpolation curve existed; G-Freeze's seed-0 validation curve had been seen, experiments/results/dial_270m):
  1. Each method's selected grid point of the study (seed 0; its params kept by the study's --keep_params) is
     moved to u in --multiples (default 0.25, 0.5, 0.75; u = alpha x k: 0 = the untrained model, 1 = the trained
     one) and scored on the study's VALIDATION sets. u = 0 and u = 1 are the study's own records (its base run
     and the selected sweep run): not scored again.
  2. u* = the smallest u in (multiples, 1) whose validation new-task score is at least the reference method's
     (SFT's) selected validation score minus --margin (1 chrF).
  3. Every seed of the method whose kept params exist is moved to u* and scored once on the study's TEST sets
     (u* = 1: the study's own test records).
Writes <out>/runs/*.json (one per scored point; an existing JSON is skipped, so the command resumes and, with
every point recorded, only rewrites the report), <out>/results.md, <out>/validation.png (the validation curves)
and <out>/pareto.png (test sets: the methods as trained and at u*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dial_sweep  # noqa: E402  (experiments/dial_sweep.py: move(), and the repository on sys.path)

from grow_jax import files, formats, tables  # noqa: E402
from grow_jax.errors import ConfigError, GrowJaxError  # noqa: E402
from grow_jax.study import report, runs  # noqa: E402
from grow_jax.train import config as config_lib  # noqa: E402

MULTIPLES = (0.25, 0.5, 0.75)


def _u_text(u: float) -> str:
  return f"u={u:g}"


def record_name(task: str, method: str, u: float, seed: int, phase: str) -> str:
  return f"{task}__{method}__{_u_text(u)}__seed={seed}__{phase}.json"


def kept_params(study: runs.Study, run: runs.Run, kept: Sequence[str]) -> str | None:
  """The run's params file in the first of the `kept` folders that has it (a study's --keep_params folder)."""
  name = os.path.basename(runs.params_path("", study, run))
  for folder in kept:
    path = os.path.join(folder, name)
    if files.as_path(path).exists():
      return path
  return None


def choose_u(curve: Sequence[tuple[float, float]], threshold: float) -> float:
  """The rule: the smallest u > 0 whose validation new-task score is >= threshold (1.0 if none is)."""
  passing = [u for u, score in sorted(curve) if u > 0 and score >= threshold]
  return passing[0] if passing else 1.0


class Scorer:
  """Loads a run's kept params, moves them to u and scores them on a list of [[entry, limit], ...]."""

  def __init__(self, study: runs.Study, task: str):
    from grow_jax.model.tokenizer import load_tokenizer
    self.config, _ = runs.run_config(study, runs.Run(task, "base", (), study.spec.seeds[0], "base"), "")
    self.tokenizer = load_tokenizer(self.config.data.tokenizer or self.config.init.source)
    self.base = formats.load_checkpoint(self.config.init.source, seed=self.config.seed,
                                        **config_lib.model_overrides(self.config))
    self._loaded: tuple[str, object, object] | None = None

  def __call__(self, path: str, u: float, entries) -> dict[str, float]:
    from grow_jax.formats import params_file
    if self._loaded is None or self._loaded[0] != path:
      self._loaded = (path, *params_file.load_params_file(path))
    _, model_config, params = self._loaded
    moved = dial_sweep.move(model_config, params, self.base[1], u)
    return runs.evaluate(entries, self.config, model_config, moved, self.tokenizer, base_model=lambda: self.base)


def run(study_text: str, results: str, kept: Sequence[str], task: str, methods: Sequence[str], out: str, *,
        reference: str = "sft", margin: float = 1.0, multiples: Sequence[float] = MULTIPLES,
        score: str | None = None, log=print) -> str:
  """Scores what is missing, writes the report; returns the markdown."""
  study = runs.load_study(study_text)
  spec = study.spec
  if task not in spec.tasks:
    raise ConfigError(f"--task={task!r}: the study has tasks {sorted(spec.tasks)}")
  if not multiples or any(not 0 < u < 1 for u in multiples):
    raise ConfigError(f"--multiples={list(multiples)}: expected values strictly between 0 and 1 (0 and 1 are the "
                      "study's own records)")
  records = runs.load_records(results)
  selected = runs.selections(study, records)
  for method in [reference, *methods]:
    if (task, method) not in selected:
      raise ConfigError(f"--methods: {method!r} has no selected grid point for {task!r} in {results}/runs yet")
  score = score or spec.report[task]["validation"][0][1]
  threshold = selected[(task, reference)]["final"][score] - margin
  base = records[runs.Run(task, "base", (), spec.seeds[0], "base").id]
  rundir = os.path.join(out, "runs")
  scorer = None

  def scored(method: str, run: runs.Run, u: float, phase: str) -> dict | None:
    """The record of `run`'s kept params moved to u and scored on the phase's sets (scored now unless recorded);
    None when it is neither recorded nor kept."""
    nonlocal scorer
    name = record_name(task, method, u, run.seed, phase)
    target = os.path.join(rundir, name)
    if files.as_path(target).exists():
      return json.loads(files.as_path(target).read_text())
    path = kept_params(study, run, kept)
    if path is None:
      return None
    scorer = scorer or Scorer(study, task)
    t0 = time.time()
    log(f"scoring {name} ({path})")
    final = scorer(path, u, spec.validation_eval[task] if phase == "validation" else spec.test_eval[task])
    record = {"task": task, "method": method, "u": u, "seed": run.seed, "phase": phase,
              "hparams": [*selected[(task, method)]["hparams"], ["u", u]], "final": final,
              "seconds": time.time() - t0, "params": os.path.basename(path), "commit": runs.git_commit(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    files.write_text(target, json.dumps(record, indent=1, sort_keys=True) + "\n")
    log(f"recorded {name} ({record['seconds'] / 60:.1f} min)")
    return record

  curves, chosen, tested = {}, {}, {}
  for method in methods:
    pick = selected[(task, method)]
    point = tuple(tuple(kv) for kv in pick["hparams"])
    first = runs.Run(task, method, point, spec.seeds[0], "sweep")
    curve = [(0.0, base), (1.0, pick)]
    for u in multiples:
      record = scored(method, first, u, "validation")
      if record is None:
        raise ConfigError(f"--kept={','.join(kept)}: no params file of {first.id} (the study's --keep_params); "
                          "its validation curve needs it")
      curve.append((u, record))
    curves[method] = sorted(curve, key=lambda c: c[0])
    chosen[method] = choose_u([(u, r["final"][score]) for u, r in curves[method]], threshold)
    log(f"{method}: u* = {chosen[method]:g} (validation {score} >= {threshold:.4g})")
    tested[method] = []
    for seed in spec.seeds:
      study_run = runs.Run(task, method, point, seed, "sweep" if seed == spec.seeds[0] else "seeds")
      if chosen[method] == 1.0:
        if study_run.id in records:
          tested[method].append(records[study_run.id])
        continue
      record = scored(method, study_run, chosen[method], "test")
      if record is None:
        log(f"skipped {record_name(task, method, chosen[method], seed, 'test')}: no kept params of {study_run.id}")
        continue
      tested[method].append(record)
  return write_report(study, records, selected, task, curves, chosen, tested, out, score=score, threshold=threshold,
                      reference=reference, margin=margin)


def write_report(study, records, selected, task, curves, chosen, tested, out, *, score, threshold, reference,
                 margin) -> str:
  spec = study.spec
  validation = spec.report[task]["validation"]
  rows = [[method, f"{u:g}" + (" (study)" if u in (0.0, 1.0) else "") + (" ✓" if u == chosen[method] else "")]
          + [f"{r['final'][key]:.4g}" if key in r["final"] else "–" for _, key in validation]
          for method, curve in curves.items() for u, r in curve]
  grouped = report.groups(records, selected)
  labels = []
  for method, rs in tested.items():
    label = f"{method} u*={chosen[method]:g}"
    grouped[(task, label)] = sorted(rs, key=lambda r: r["seed"])
    labels += [method, label] if method != reference else [label]
  labels = list(dict.fromkeys([reference, *labels]))
  table = report.summary_table(task, spec.report[task]["metrics"], grouped, labels, reference=reference)
  x, y = spec.report[task]["pareto"]
  report.pareto_plot(os.path.join(out, "pareto.png"), task, grouped, labels, tuple(x), tuple(y))
  vx, vy = validation[0], validation[-1]
  report.pareto_plot(os.path.join(out, "validation.png"), task, {}, [], tuple(vx), tuple(vy),
                     extra_curves={m: [(r["final"][vx[1]], r["final"][vy[1]]) for _, r in c] for m, c in curves.items()})
  cost = sum(r["seconds"] for rs in tested.values() for r in rs if "u" in r)
  cost += sum(r["seconds"] for c in curves.values() for u, r in c if u not in (0.0, 1.0))
  cmd = " ".join(["python experiments/dial_study.py", *sys.argv[1:]]) if sys.argv[0].endswith("dial_study.py") else ""
  lines = [f"# The dial, pre-registered: {spec.name}, {task}", "",
           __doc__[__doc__.index("The rule"):__doc__.index("Writes")].strip(), "",
           f"Reference: {reference}'s selected validation {score} = {threshold + margin:.4g}; threshold "
           f"{threshold:.4g} (margin {margin:g}). u* = " + ", ".join(f"{m} {u:g}" for m, u in chosen.items()) + ".",
           "", "Validation curves (seed 0; u = 0 and 1 are the study's records):", "",
           tables.markdown(["method", "u"] + [label for label, _ in validation], rows), "",
           "![validation curves](validation.png)", "",
           "Test sets, every seed with kept params (the study's records for u = 1 and the untrained model); Δ: "
           f"paired against {reference} as trained:", "", table, "", "![test: new task vs retention](pareto.png)", "",
           f"Cost of the scored points: {cost / 60:.1f} min (wall time, this machine).", ""]
  if cmd:
    lines += [f"Made by: `{cmd}`", ""]
  text = "\n".join(lines)
  files.write_text(os.path.join(out, "results.md"), text)
  return text


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--study", required=True, help="study file, path[:arg]")
  p.add_argument("--results", required=True, help="the study's --out (its runs/ records)")
  p.add_argument("--kept", required=True, help="comma-separated folders of the study's kept params files")
  p.add_argument("--task", required=True)
  p.add_argument("--methods", default="g_freeze,sft", help="comma-separated methods of the study")
  p.add_argument("--reference", default="sft", help="the method whose selected validation score sets the bar")
  p.add_argument("--margin", type=float, default=1.0, help="u* may score this much below the reference")
  p.add_argument("--multiples", default=",".join(f"{m:g}" for m in MULTIPLES), help="u values to score, in (0, 1)")
  p.add_argument("--score", help="the validation new-task metric (default: the study report's first validation "
                 "column)")
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  try:
    run(args.study, args.results, [k for k in args.kept.split(",") if k], args.task,
        [m for m in args.methods.split(",") if m], args.out, reference=args.reference, margin=args.margin,
        multiples=[float(m) for m in args.multiples.split(",") if m], score=args.score)
  except (GrowJaxError, ValueError) as e:
    print(f"dial_study: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return 1
  print(f"wrote {os.path.join(args.out, 'results.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
