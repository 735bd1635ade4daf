"""The study runner: a declared grid expands into runs, a selection on validation unlocks the dependent runs,
each finished run is one JSON, and a re-run with every JSON present trains nothing and rewrites identical
results."""

import dataclasses
import hashlib
import json
import math
import os
import re
import subprocess
import sys

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


@pytest.mark.slow
def test_list_prints_every_run_in_the_order_the_runner_takes_them_and_honours_only(tmp_path):
  study = runs.load_study(SMOKE)
  out = str(tmp_path / "out")
  for run, chrf in zip(runs.pending(study, {}), (None, 5.0, 9.0)):      # base and sft's sweep done
    final = {"capitals_gen:validation/exact_match_norm": 0.6}
    if chrf is not None:
      final["gettext_en_fr:validation/chrf"] = chrf
    runs.write_record(out, run, {**_record(run, **final), **runs.identity_fields(study, run)})
  todo = [r.id for r in runs.pending(study, runs.load_records(out))]    # l2sp's sweep, sft's test, sft's seed 1

  def listed(*args):
    cli = subprocess.run([sys.executable, "-m", "grow_jax.study", f"--study={SMOKE}", f"--out={out}", "--list", *args],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return [line.split() for line in cli.stdout.splitlines() if line.startswith(("done", "pending"))]

  every = listed()
  assert [state for state, _, _ in every] == ["done"] * 3 + ["pending"] * 3
  assert [run_id for state, _, run_id in every if state == "pending"] == todo    # seeds after the test, not first
  sft_only = [run_id for _, _, run_id in listed("--only=*/sft/*")]
  assert sft_only == [run_id for _, _, run_id in every if "/sft/" in run_id]


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


def test_with_several_sweep_seeds_the_table_has_a_row_per_seed_and_the_figure_a_line_through_their_means(
    monkeypatch):
  study = runs.load_study(SMOKE)
  chrf, cap = "gettext_en_fr:validation/chrf", "capitals_gen:validation/exact_match_norm"
  base, low, high = runs.pending(study, {})
  values = {(low, 0): (5.0, 0.5), (low, 1): (7.0, 0.3), (high, 0): (9.0, 0.2), (high, 1): (8.0, 0.1)}
  records = {base.id: _record(base, **{chrf: 2.0, cap: 0.6})}
  for (run, seed), (c, k) in values.items():
    seeded = dataclasses.replace(run, seed=seed)
    records[seeded.id] = _record(seeded, **{chrf: c, cap: k})
  selected = {("translation", "sft"): records[high.id]}
  table = report.sweep_table("translation", [("val chrF", chrf)], records, ["sft"], selected)
  assert table.splitlines()[0] == "| method | grid point | seed | selected | val chrF | minutes (train + validation) |"
  assert table.splitlines()[2:] == ["| base | – | 0 |  | 2 | 0.0 |",
                                    "| sft | learning_rate=0.001 | 0 |  | 5 | 0.0 |",
                                    "| sft | learning_rate=0.001 | 1 |  | 7 | 0.0 |",
                                    "| sft | learning_rate=0.003 | 0 | ✓ | 9 | 0.0 |",
                                    "| sft | learning_rate=0.003 | 1 | ✓ | 8 | 0.0 |"]
  drawn = []
  monkeypatch.setattr(report.figures, "save_png", lambda fig, path: drawn.append(fig))
  report.sweep_plot("unused.png", "translation", records, ["sft"], ("chrF", chrf), ("capitals", cap), selected)
  ax, = drawn[0].axes
  line, = [line for line in ax.lines if line.get_label() == "sft"]
  assert list(line.get_xdata()) == [6.0, 8.5] and list(line.get_ydata()) == pytest.approx([0.4, 0.15])
  dots = [sorted(zip(d.get_xdata(), d.get_ydata())) for d in ax.lines if d.get_marker() == "."]
  assert dots == [[(5.0, 0.5), (7.0, 0.3)], [(8.0, 0.1), (9.0, 0.2)]]          # each seed, around its mean
  rings = [(r.get_xdata()[0], r.get_ydata()[0]) for r in ax.lines if r.get_markersize() == 13]
  assert rings == [(8.5, pytest.approx(0.15))]                                  # the pick: at its seeds' mean


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


CPU = SMOKE.rsplit(":", 1)[0]


def test_a_pick_on_the_grids_edge_grows_the_grid_one_step_and_selects_once_the_new_point_is_done():
  study = runs.load_study(CPU)                                 # the forgetting study's own grids and rule
  acc = "arithmetic_cloze:validation/acc"
  sweep = [r for r in runs.pending(study, {}) if r.task == "arithmetic" and r.method == "sft"]
  assert [dict(r.hparams)["optimizer.learning_rate"] for r in sweep] == [1e-5, 3e-5, 1e-4]
  base = runs.Run("arithmetic", "base", (), 0, "base")
  records = {base.id: _record(base)}
  records.update({r.id: _record(r, **{acc: a}) for r, a in zip(sweep, (0.36, 0.29, 0.18))})   # lowest rate best
  assert ("arithmetic", "sft") not in runs.selections(study, records)
  grown = [r for r in runs.pending(study, records) if r.task == "arithmetic" and r.method == "sft"]
  assert [r.key for r in grown] == ["arithmetic/sft/learning_rate=3e-06/seed=0"]   # 1e-5, 3e-5, 1e-4 continued
  for a, picked in ((0.30, 1e-5), (0.40, 3e-6)):              # interior now; or still the edge, after one step
    records[grown[0].id] = _record(grown[0], **{acc: a})
    selected = runs.selections(study, records)
    assert dict(selected[("arithmetic", "sft")]["hparams"])["optimizer.learning_rate"] == picked
    assert selected.grids[("arithmetic", "sft")] == {"optimizer.learning_rate": [3e-6, 1e-5, 3e-5, 1e-4]}
    assert report.pick_text(study, selected, "arithmetic", "sft") == {       # results.md flags a pick left on the edge
        1e-5: "learning_rate=1e-05", 3e-6: "learning_rate=3e-06 (edge: learning_rate is its grid's lowest)"}[picked]
  assert f"arithmetic/sft/learning_rate={picked:g}/seed=0#test" in [r.key for r in runs.pending(study, records)]


def test_the_edge_rule_continues_geometric_grids_only_and_stops_at_its_limit():
  grid = {"lr": [3e-5, 1e-4, 3e-4], "coef": [0.01, 0.1, 1.0], "lr_ref": ["@sft"]}
  top = {"lr": 3e-4, "coef": 0.1, "lr_ref": 3e-5}
  assert runs.extend_at_edges(grid, grid, top, 1) == {**grid, "lr": [3e-5, 1e-4, 3e-4, 1e-3]}
  assert runs.extend_at_edges(grid, grid, {**top, "coef": 0.01}, 1)["coef"] == [0.001, 0.01, 0.1, 1.0]
  assert runs.extend_at_edges(grid, grid, {**top, "lr": 1e-4}, 1) is None          # interior: nothing grows
  assert runs.extend_at_edges(grid, grid, top, 0) is None                           # the rule off
  assert runs.extend_at_edges({"n": [0, 1]}, {"n": [0, 1]}, {"n": 0}, 1) is None    # not geometric


def test_extend_edges_must_be_a_count(tmp_path):
  study = tmp_path / "bad.py"
  study.write_text(open(CPU).read().replace("s.extend_edges = 1", "s.extend_edges = 'yes'"))
  with pytest.raises(ConfigError, match=r"get_study\(\)\['extend_edges'\] is 'yes'; expected an integer >= 0"):
    runs.load_study(str(study))


def test_the_sweep_figure_draws_each_methods_grid_in_order_and_rings_only_the_pick(monkeypatch):
  study = runs.load_study(CPU)
  acc, cap = "arithmetic_cloze:validation/acc", "capitals_gen:validation/exact_match_norm"
  sweep = [r for r in runs.pending(study, {}) if r.task == "arithmetic" and r.method in ("sft", "g_freeze")]
  base = runs.Run("arithmetic", "base", (), 0, "base")
  records = {base.id: _record(base, **{acc: 0.2, cap: 0.64})}
  values = {r.id: (0.3 + 0.01 * i, 0.6 - 0.1 * i) for i, r in enumerate(sweep)}
  records.update({r.id: _record(r, **{acc: a, cap: c}) for r, (a, c) in zip(sweep, values.values())})
  selected = {("arithmetic", m): records[next(r.id for r in sweep if r.method == m and dict(r.hparams)[
      "optimizer.learning_rate"] == 3e-5)] for m in ("sft", "g_freeze")}       # an interior pick for each
  drawn = []
  monkeypatch.setattr(report.figures, "save_png", lambda fig, path: drawn.append(fig))
  report.sweep_plot("unused.png", "arithmetic", records, ["sft", "g_freeze"], ("accuracy", acc), ("capitals", cap),
                    selected)
  ax, = drawn[0].axes
  lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
  assert lines["base (untrained; accuracy 0.2)"].get_ydata()[0] == 0.64          # the untrained model: a level line
  for method in ("sft", "g_freeze"):
    grid = sorted((r for r in sweep if r.method == method), key=lambda r: dict(r.hparams)["optimizer.learning_rate"])
    assert list(lines[method].get_xdata()) == [values[r.id][0] for r in grid]    # through the grid, lowest rate first
    assert list(lines[method].get_ydata()) == [values[r.id][1] for r in grid]
  rings = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if line.get_markersize() == 13]
  assert sorted(rings) == sorted(values[selected[("arithmetic", m)]["id"]] for m in ("sft", "g_freeze"))


@pytest.mark.parametrize("keep_workdir", [False, True])
def test_a_diverged_run_is_recorded_and_keeps_its_workdir_only_when_asked(tmp_path, monkeypatch, keep_workdir):
  from grow_jax.errors import TrainingDivergedError
  from grow_jax.train import loop

  def diverge(config, workdir):
    os.makedirs(os.path.join(workdir, "checkpoints", "2"))
    raise TrainingDivergedError("loss is not finite (nan) at step 3; last good checkpoint (step 2)")

  monkeypatch.setattr(loop, "train_and_evaluate", diverge)
  study = runs.load_study(SMOKE)
  sweep = runs.pending(study, {})[1]
  out, root = str(tmp_path / "out"), str(tmp_path / "wd")
  record = runs.execute(study, sweep, out, root, keep_workdir=keep_workdir)
  assert record["diverged"].startswith("loss is not finite") and record["final"] == {}
  assert runs.load_records(out)[sweep.id]["diverged"] == record["diverged"]
  workdir = runs.run_config(study, sweep, root)[1]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2")) == keep_workdir


def test_a_run_stopped_by_a_signal_stops_the_study_with_nothing_recorded(tmp_path, monkeypatch):
  """SIGTERM or Ctrl-C: the trainer saves and returns preempted; the study must not score a half-trained run."""
  from grow_jax.errors import StudyInterrupted
  from grow_jax.train import loop
  monkeypatch.setattr(loop, "train_and_evaluate", lambda config, workdir: {"step": 2, "preempted": True})
  study = runs.load_study(SMOKE)
  sweep = runs.pending(study, {})[1]
  out = str(tmp_path / "out")
  with pytest.raises(StudyInterrupted, match=rf"run {re.escape(sweep.id)} was stopped by a signal at step 2 of"):
    runs.execute(study, sweep, out, str(tmp_path / "wd"))
  assert sweep.id not in runs.load_records(out)


def test_test_sets_must_be_disjoint_from_what_selection_reads(tmp_path):
  study = tmp_path / "overlap.py"
  study.write_text(open(SMOKE.rsplit(":", 1)[0]).read().replace(
      's.test_eval = {"translation": [["gettext_en_fr:test_heldout", 4]',
      's.test_eval = {"translation": [["capitals_gen:validation", 4]'))
  with pytest.raises(ConfigError, match=r"test_eval\['translation'\] repeats validation_eval entries "
                                        r"\['capitals_gen:validation'\]"):
    runs.load_study(f"{study}:smoke")


@pytest.mark.parametrize("old,new,message", [
    ('"reference": "sft",', '"refrence": "sft",', r"\['translation'\] has unknown keys \['refrence'\]; expected some of"),
    ('s.report = {"translation": {', 's.report = {"translaton": {',
     r"\['report'\] names tasks \['translaton'\] that 'tasks' does not declare"),
    ('"reference": "sft",', '"reference": "lora",', r"\['reference'\] is 'lora'; expected one of the task's methods"),
    ('"reference": "sft",', '"reference": "sft", "stages": {},', r"\['stages'\] is given but task 'translation' "
     r"continues no other task"),
    ('"metrics": [["chrF held-out"', '"metric": [["chrF held-out"', r"has unknown keys \['metric'\]"),
])
def test_a_misspelt_report_section_is_refused_naming_it_instead_of_silently_left_out(tmp_path, old, new, message):
  text = open(SMOKE.rsplit(":", 1)[0]).read()
  start = text.index('    s.report = {"translation": {"selection": "max validation chrF"')
  assert old in text[start:]
  study = tmp_path / "typo.py"
  study.write_text(text[:start] + text[start:].replace(old, new, 1))
  with pytest.raises(ConfigError, match=message):
    runs.load_study(f"{study}:smoke")


@pytest.mark.parametrize("name", ["forgetting_270m", "frontier_270m", "sequential_270m"])
def test_an_unknown_study_variant_is_one_line_naming_the_variants(name):
  path = os.path.join(ROOT, "experiments", "studies", f"{name}.py")
  with pytest.raises(ConfigError, match=r"^study variant 'gpu': expected one of \[.*'cpu'.*'smoke'.*\]$"):
    runs.load_study(f"{path}:gpu")
  assert runs.variant(" smoke ", ["cpu", "smoke"]) == "smoke" and runs.variant(None, ["cpu"]) == "cpu"


def test_the_full_variant_selects_on_its_own_tasks_keys():
  study = runs.load_study(SMOKE.replace(":smoke", ":full"))
  assert sorted(study.spec.report) == ["mathqa", "translation"]
  first = [r for r in runs.pending(study, {}) if r.task == "mathqa"]
  records = {r.id: _record(r, **{"mathqa:validation/acc": acc, "winogrande:train/acc": 0.6})
             for r, acc in zip(first, (0.2, 0.3, 0.5, 0.4))}                  # base, then 1e-5, 3e-5, 1e-4
  assert dict(runs.selections(study, records)[("mathqa", "sft")]["hparams"])["optimizer.learning_rate"] == 3e-5


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


BORROWER = '''
import importlib.util
_spec = importlib.util.spec_from_file_location("smoke_study", {path!r})
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)


def get_config(arg=None):
  c = smoke.get_config("smoke")
  c.batch_size += {extra_batch}
  return c


def get_study(arg=None):
  s = smoke.get_study("smoke")
  s.update(name="borrower", curves=None, borrow={{m: [{study!r}, {out!r}, m] for m in ("base", "sft")}})
  s["report"]["translation"].pop("curves")          # nothing measured along training, so no curves plot
  s["validation_eval"] = {{"translation": [["gettext_en_fr:validation", {limit}], ["capitals_gen:validation", 4]]}}
  return s


select = smoke.select
'''


def _borrower(tmp_path, out, extra_batch=0, limit=4):
  path = tmp_path / f"borrower_{extra_batch}_{limit}.py"
  path.write_text(BORROWER.format(path=SMOKE.rsplit(":", 1)[0], study=SMOKE, out=out, extra_batch=extra_batch,
                                  limit=limit))
  return runs.load_study(str(path))


def _done_smoke_study(out):
  """The smoke study's records as if it had run (fabricated: no training), written under `out`."""
  study = runs.load_study(SMOKE)
  val = {"gettext_en_fr:validation/chrf": 5.0, "capitals_gen:validation/exact_match_norm": 0.5}
  test = {"gettext_en_fr:test_heldout/chrf": 7.0, "stdlib_text:test/kl": 0.1}
  base, low, high = runs.pending(study, {})
  records = {base.id: _record(base, **val, **test), low.id: _record(low, **val),
             high.id: _record(high, **{**val, "gettext_en_fr:validation/chrf": 9.0}, **test)}
  (seed1,) = [r for r in runs.pending(study, records) if r.phase == "seeds"]
  records[seed1.id] = _record(seed1, **val, **test)
  for record in records.values():                    # with run identities, as the runner writes them
    record.update(runs.identity_fields(study, runs.record_run(record), tested=any(k in record["final"] for k in test)))
  for run_id, record in records.items():
    runs.write_record(out, runs.Run(record["task"], record["method"], tuple(map(tuple, record["hparams"])),
                                    record["seed"], record["phase"]), record)
  return records


def test_a_borrowed_run_is_copied_from_its_identical_twin_without_training(tmp_path, monkeypatch):
  from grow_jax.train import loop
  monkeypatch.setattr(loop, "train_and_evaluate", lambda *a, **k: pytest.fail("a borrowed run trained"))
  theirs = _done_smoke_study(str(tmp_path / "theirs"))
  study, out = _borrower(tmp_path, str(tmp_path / "theirs")), str(tmp_path / "mine")
  assert runs.run_all(study, out, str(tmp_path / "wd"), only="translation/[bs]*") == 5    # base, 2 sweeps, test, seed 1
  mine = runs.load_records(out)
  assert sorted(mine) == sorted(theirs)
  for run_id, record in mine.items():
    assert record["borrowed_from"] == f"forgetting_smoke:{run_id}" and record["seconds"] == 0.0
    assert record["study"] == "borrower"
  selected = "translation/sft/learning_rate=0.003/seed=0"
  assert mine[selected]["final"] == theirs[selected]["final"]                     # the test phase borrowed too
  assert mine[selected]["borrowed_test_from"] == f"forgetting_smoke:{selected}"
  unselected = "translation/sft/learning_rate=0.001/seed=0"
  assert mine[unselected]["final"] == theirs[unselected]["final"]
  assert report.cost_lines(mine)[0].startswith("Runs: 4 (4 borrowed from another study's identical runs")


def test_a_borrow_refuses_a_twin_that_trains_differently_or_is_scored_on_other_sets(tmp_path):
  theirs = str(tmp_path / "theirs")
  _done_smoke_study(theirs)
  run = runs.pending(runs.load_study(SMOKE), {})[1]
  with pytest.raises(ConfigError, match=r"configs differ in \['batch_size'\]"):
    runs.borrowed_record(_borrower(tmp_path, theirs, extra_batch=1), run, str(tmp_path / "mine"))
  with pytest.raises(ConfigError, match="gettext_en_fr:validation is scored on 5 examples here and on 4 there"):
    runs.borrowed_record(_borrower(tmp_path, theirs, limit=5), run, str(tmp_path / "mine"))
  stale = json.loads(open(os.path.join(theirs, "runs", run.file_name)).read())
  stale["config"]["optimizer.warmup_steps"], stale["identity"] = 5, "0" * 16      # their record, made otherwise
  runs.write_record(str(tmp_path / "stale"), run, stale)
  with pytest.raises(ConfigError, match=r"their record translation/sft/learning_rate=0.001/seed=0 under .* differs "
                                        r"from what study forgetting_smoke now asks for: optimizer.warmup_steps "
                                        r"5 -> 1"):
    runs.borrowed_record(_borrower(tmp_path, str(tmp_path / "stale")), run, str(tmp_path / "mine"))
  missing = runs.Run(run.task, run.method, run.hparams, 2, "seeds")             # no twin: trained here
  assert runs.borrowed_record(_borrower(tmp_path, theirs), missing, str(tmp_path / "mine")) is None
  selected = runs.Run(run.task, run.method, (("optimizer.learning_rate", 0.003),), 0, "test")
  runs.write_record(str(tmp_path / "mine"), selected, _record(selected))     # its sweep run trained here ...
  assert runs.borrowed_record(_borrower(tmp_path, theirs), selected, str(tmp_path / "mine")) is None  # ... so its test


@pytest.mark.slow
def test_periodic_evaluations_change_nothing_in_training(tmp_path, tiny_config):
  """What borrowing relies on: a run with learning curves trains the same params as one without."""
  import jax
  import numpy as np
  from grow_jax.train import checkpointing, loop
  trained = []
  for every in (2, 0):
    config = tiny_config("mode=g_freeze,steps=4,layers_n=1,seq_len=16")
    config.eval_every_steps = every
    config.eval.at_start = bool(every)
    if not every:
      config.eval.tasks = ()
    loop.train_and_evaluate(config, str(tmp_path / f"every{every}"))
    trained.append(checkpointing.load_trained_params(str(tmp_path / f"every{every}"))[1])
  lines = (tmp_path / "every2" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines if '"eval/' in line] == [0, 2, 4]
  with_curves, without = (jax.tree_util.tree_leaves(jax.device_get(p)) for p in trained)
  assert len(with_curves) == len(without) and all(np.array_equal(a, b) for a, b in zip(with_curves, without))


def test_a_method_without_a_grid_is_said_to_have_its_one_point():
  study = runs.load_study(os.path.join(ROOT, "experiments", "studies", "sequential_270m.py"))
  assert runs.method_grid(study, {}, "translation", "sft") == {}
  assert report.pick_text(study, {("translation", "sft"): {"hparams": []}}, "translation", "sft") == (
      "its one point (no grid)")
