"""The study runner: a declared grid expands into runs, a selection on validation unlocks the dependent runs,
each finished run is one JSON, and a re-run with every JSON present trains nothing and rewrites identical
results."""

import hashlib
import math
import os

import pytest

from config_files import ROOT
from grow_jax.errors import ConfigError
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


def test_a_diverged_grid_point_is_recorded_never_selected_and_blocks_nothing():
  study = runs.load_study(SMOKE)
  base, low, high = runs.pending(study, {})
  records = {base.id: _record(base), low.id: _record(low, **{"gettext_en_fr:validation/chrf": 5.0}),
             high.id: {**_record(high), "diverged": "loss=nan at step 2"}}
  selected = runs.selections(study, records)
  assert selected[("translation", "sft")]["id"] == low.id                 # the finite grid point, though worse
  assert "translation/sft/learning_rate=0.003/seed=0" not in [r.key for r in runs.pending(study, records)]
  table = report.sweep_table("translation", [("val chrF", "gettext_en_fr:validation/chrf")], records,
                             study.methods("translation"), selected)
  assert table.splitlines()[-1] == "| sft | learning_rate=0.003 |  | diverged | 0.0 |"
  records[low.id] = {**records[low.id], "diverged": "loss=inf at step 1"}
  assert ("translation", "sft") not in runs.selections(study, records)    # every point diverged: nothing to test


def test_test_sets_must_be_disjoint_from_what_selection_reads(tmp_path):
  study = tmp_path / "overlap.py"
  study.write_text(open(SMOKE.rsplit(":", 1)[0]).read().replace(
      's.test_eval = {"translation": [["gettext_en_fr:test_heldout", 4]',
      's.test_eval = {"translation": [["capitals_gen:validation", 4]'))
  with pytest.raises(ConfigError, match=r"test_eval\['translation'\] repeats validation_eval entries "
                                        r"\['capitals_gen:validation'\]"):
    runs.load_study(f"{study}:smoke")


def test_the_full_variant_selects_on_its_own_tasks_keys():
  study = runs.load_study(SMOKE.replace(":smoke", ":full"))
  assert sorted(study.spec.report) == ["mathqa", "translation"]
  first = [r for r in runs.pending(study, {}) if r.task == "mathqa"]
  records = {r.id: _record(r, **{"mathqa:validation/acc": 0.2 + i / 10, "winogrande:train/acc": 0.6})
             for i, r in enumerate(first)}
  assert dict(runs.selections(study, records)[("mathqa", "sft")]["hparams"])["optimizer.learning_rate"] == 1e-4


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
      runs.params_path(workdirs, study, run, "kept").rsplit("/", 1)[1] for run in runs.expand(study, runs.selections(
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
  assert "translation_sweep.png" not in first                              # smoke's validation has one metric
  assert runs.run_all(study, out, workdirs) == 0                           # every JSON present: no training
  again = runs.load_records(out)
  report.write_report(study, again, runs.selections(study, again), out)
  assert _digest(out) == first                                             # byte-identical tables and plots
