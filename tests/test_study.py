"""The study runner: a declared grid expands into runs, a selection on validation unlocks the dependent runs,
each finished run is one JSON, and a re-run with every JSON present trains nothing and rewrites identical
results."""

import hashlib
import math
import os

import pytest

from config_files import ROOT
from grow_jax.study import report, runs

SMOKE = os.path.join(ROOT, "experiments", "studies", "forgetting_270m.py") + ":smoke"


def _record(run, **final):
  return {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
          "seed": run.seed, "phase": run.phase, "steps": 3, "train_seconds": 1.0, "eval_seconds": 1.0,
          "seconds": 2.0, "final": final}


def test_grid_selection_and_dependent_runs_without_training():
  study = runs.load_study(SMOKE)
  first = runs.pending(study, {})
  assert [r.key for r in first] == ["translation/base/default/seed=0",
                                   "translation/sft/learning_rate=0.001/seed=0",
                                   "translation/sft/learning_rate=0.003/seed=0"]      # l2sp waits for sft's pick
  records = {}
  for run, chrf in zip(first, (None, 5.0, 9.0)):
    final = {"capitals_gen:validation/exact_match_norm": 0.6}
    if chrf is not None:
      final["gettext_en_fr:validation/chrf"] = chrf
    records[run.id] = _record(run, **final)
  selected = runs.selections(study, records)
  assert dict(selected[("translation", "sft")]["hparams"])["optimizer.learning_rate"] == 0.003   # max val chrF
  nxt = [r.key for r in runs.pending(study, records)]
  assert nxt == ["translation/l2sp/learning_rate=0.003,l2sp_coef=0.1/seed=0",       # '@sft' took the selected rate
                 "translation/sft/learning_rate=0.003/seed=0#test",                 # the selected run, on test
                 "translation/sft/learning_rate=0.003/seed=1"]                      # the selected point, seed 1
  assert runs.pending(study, records, only="*/l2sp/*")[0].method == "l2sp"


def test_the_sweep_table_shows_every_grid_point_on_validation_and_marks_the_pick():
  study = runs.load_study(SMOKE)
  records = {}
  for run, chrf in zip(runs.pending(study, {}), (2.0, 5.0, 9.0)):
    records[run.id] = _record(run, **{"gettext_en_fr:validation/chrf": chrf})
  table = report.sweep_table("translation", [("val chrF", "gettext_en_fr:validation/chrf")], records,
                             study.methods("translation"), runs.selections(study, records))
  assert table.splitlines()[2:] == ["| base | – |  | 2 | 0.0 |",
                                    "| sft | learning_rate=0.001 |  | 5 | 0.0 |",
                                    "| sft | learning_rate=0.003 | ✓ | 9 | 0.0 |"]


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
  lo, hi = report.bootstrap_ci([1.0, 2.0, 3.0])
  assert (lo, hi) == report.bootstrap_ci([1.0, 2.0, 3.0]) and lo <= 2.0 <= hi
  assert all(math.isnan(x) for x in report.bootstrap_ci([1.0]))            # no interval from one value


def _digest(out):
  return {name: hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(out)) if os.path.isfile(os.path.join(out, name))}


@pytest.mark.slow
def test_smoke_study_end_to_end_then_a_rerun_trains_nothing(tmp_path):
  study = runs.load_study(SMOKE)
  out, workdirs = str(tmp_path / "out"), str(tmp_path / "wd")
  ran = runs.run_all(study, out, workdirs, keep_params=True)
  records = runs.load_records(out)
  assert len(records) == 5 and ran == 7                                    # + the two selected runs' tests
  assert sorted(os.listdir(os.path.join(workdirs, study.name))) == ["kept", "params"]   # workdirs removed ...
  assert not os.listdir(os.path.join(workdirs, study.name, "params"))      # ... and the test phase's params
  assert sorted(os.listdir(os.path.join(workdirs, study.name, "kept"))) == sorted(   # --keep_params: every trained run
      runs.kept_params_path(workdirs, study, run).rsplit("/", 1)[1] for run in runs.expand(study, runs.selections(
          study, records)) if run.method != "base" and run.phase != "test")
  seeds = sorted((r["method"], r["seed"]) for r in records.values())
  assert seeds == [("base", 0), ("l2sp", 0), ("sft", 0), ("sft", 0), ("sft", 1)]
  sft = [r for r in records.values() if r["method"] == "sft" and r["phase"] == "sweep"]
  tested = [r for r in sft if "gettext_en_fr:test_heldout/chrf" in r["final"]]
  assert len(tested) == 1 and {"stdlib_text:test/kl", "capitals_gen:validation/exact_match_norm"} <= set(
      tested[0]["final"])                                                  # only the selected point saw test
  assert any(r.get("curve") for r in sft)                                  # periodic evaluations, every 2 steps
  report.write_report(study, records, runs.selections(study, records), out)
  first = _digest(out)
  assert {"results.md", "results.csv", "translation_pareto.png", "translation_curves.png"} <= set(first)
  assert runs.run_all(study, out, workdirs) == 0                           # every JSON present: no training
  again = runs.load_records(out)
  report.write_report(study, again, runs.selections(study, again), out)
  assert _digest(out) == first                                             # byte-identical tables and plots
