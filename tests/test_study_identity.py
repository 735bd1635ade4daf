"""What makes a study's record safe to re-use: its run identity (resolved config, evaluation sets and limits)
matches the study file, a selection stays where its scored test froze it, a retrained test phase reproduces the
validation selection read, and the record says which code (and whether a modified checkout) made it.

The trainer, params files, base model and evaluations are faked (`fake`): a run's "params" are its learning rate
and seed, its scores a function of them; nothing trains."""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from config_files import ROOT
from grow_jax.errors import ConfigError
from grow_jax.study import report, runs

STUDY_FILE = os.path.join(ROOT, "experiments", "studies", "forgetting_270m.py")
SMOKE = STUDY_FILE + ":smoke"
LR = "optimizer.learning_rate"


@pytest.fixture
def fake(monkeypatch):
  """`fake.trained`: (learning rate, seed) of every run trained; `fake.chrf`: validation/test chrF by learning rate;
  `fake.shift`: added to every chrF a run trained from now on scores (another machine's arithmetic)."""
  from grow_jax import formats
  from grow_jax.formats import params_file
  from grow_jax.model import tokenizer
  from grow_jax.train import checkpointing, loop
  state = types.SimpleNamespace(trained=[], shift=0.0, chrf={1e-3: 5.0, 3e-3: 9.0, 1e-2: 12.0})

  def train(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    state.trained.append((config.optimizer.learning_rate, config.seed))
    params = {"lr": config.optimizer.learning_rate, "seed": config.seed, "shift": state.shift}
    with open(os.path.join(workdir, "params.json"), "w") as f:
      json.dump(params, f)

  def save(path, model_config, params):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(params, f)

  def evaluate(entries, config, model_config, params, tok, reference=None):
    out = {}
    for entry, limit in entries:
      if entry.startswith("gettext_en_fr"):
        out[f"{entry}/chrf"] = state.chrf.get(params["lr"], 1.0) + params["shift"] + params["seed"] / 10
      elif entry.startswith("capitals_gen"):
        out[f"{entry}/exact_match_norm"] = 0.5
      else:
        out[f"{entry}/kl"] = params["lr"]
      out[f"{entry}/num_examples"] = float(limit)
    return out

  monkeypatch.setattr(loop, "train_and_evaluate", train)
  monkeypatch.setattr(checkpointing, "load_trained_params",
                      lambda workdir: ("tiny", json.load(open(os.path.join(workdir, "params.json"))), {}))
  monkeypatch.setattr(params_file, "save_params_file", save)
  monkeypatch.setattr(params_file, "load_params_file", lambda path: ("tiny", json.load(open(path))))
  monkeypatch.setattr(formats, "load_checkpoint", lambda source, **kw: ("tiny", {"lr": 0.0, "seed": 0, "shift": 0.0}))
  monkeypatch.setattr(tokenizer, "load_tokenizer", lambda name: None)
  monkeypatch.setattr(runs, "evaluate", evaluate)
  return state


def _edited_smoke(tmp_path, name, *replacements):
  """The smoke study's file with `replacements` ((old, new), ...) made: the study file edited after runs."""
  text = open(STUDY_FILE).read()
  for old, new in replacements:
    assert old in text
    text = text.replace(old, new)
  path = tmp_path / f"{name}.py"
  path.write_text(text)
  return runs.load_study(f"{path}:smoke")


def _cli(study_arg, out, *args):
  return subprocess.run([sys.executable, "-m", "grow_jax.study", f"--study={study_arg}", f"--out={out}", *args],
                        capture_output=True, text=True, cwd=ROOT)


def test_a_record_whose_run_identity_differs_from_the_study_file_is_refused_naming_the_keys(tmp_path, fake):
  study = runs.load_study(SMOKE)
  out, wd = str(tmp_path / "out"), str(tmp_path / "wd")
  assert runs.run_all(study, out, wd, max_runs=3) == 3                   # base and sft's two grid points
  record = runs.load_records(out)["translation/sft/learning_rate=0.003/seed=0"]
  assert record["config"][LR] == 0.003 and record["config"]["optimizer.warmup_steps"] == 1
  assert record["evaluations"] == {"validation": [["gettext_en_fr:validation", 4], ["capitals_gen:validation", 4]]}
  assert len(record["identity"]) == 16
  edited = _edited_smoke(tmp_path, "edited", ("c.optimizer.warmup_steps = 1", "c.optimizer.warmup_steps = 2"),
                         ('s.validation_eval = {"translation": [["gettext_en_fr:validation", 4]',
                          's.validation_eval = {"translation": [["gettext_en_fr:validation", 5]'))
  fake.trained.clear()
  with pytest.raises(ConfigError, match=r"study forgetting_smoke: 3 recorded run\(s\) under .* differ from what the "
                     r"study file now asks for; translation/base/default/seed=0: optimizer.warmup_steps 1 -> 2, "
                     r"validation_eval\[gettext_en_fr:validation\] 4 -> 5; and 2 more \("
                     r"translation/sft/learning_rate=0.001/seed=0, translation/sft/learning_rate=0.003/seed=0\)\. "
                     r"Revert the study file"):
    runs.run_all(edited, out, wd)
  assert fake.trained == []                                                # not re-used, not retrained
  listed = _cli(f"{edited.path}:smoke", out, "--list")                     # the plan listing refuses too, in one line
  assert listed.returncode == 1 and listed.stdout == ""
  assert listed.stderr.count("\n") == 1 and "optimizer.warmup_steps 1 -> 2" in listed.stderr
  assert runs.run_all(study, out, wd, max_runs=1) == 1                     # the study as it was: re-used
  assert fake.trained == [(0.003, 0)]                                      # l2sp's sweep, at sft's pick


def test_a_record_from_before_identities_is_reused_when_what_it_stored_matches_and_named_when_not(tmp_path):
  committed = os.path.join(ROOT, "experiments", "results")
  forgetting = runs.load_study(STUDY_FILE)
  plan = os.path.join(committed, "plans", "translation_sft_lr3e-05.json")
  targeted = runs.load_study(os.path.join(ROOT, "experiments", "studies", "targeted_270m.py")
                             + f":plan={plan},lr=1e-4")
  for study, out in ((forgetting, "forgetting_270m"), (targeted, "targeted_270m")):
    records = runs.load_records(os.path.join(committed, out), study)      # checked: each matches
    assert records and not any("identity" in r for r in records.values())
    assert runs.pending(study, records) == []                              # the study command trains nothing
  out = tmp_path / "forgetting_270m"
  shutil.copytree(os.path.join(committed, "forgetting_270m", "runs"), out / "runs")
  name = "translation__sft__learning_rate=3e-05__seed=1.json"
  record = json.loads((out / "runs" / name).read_text())
  record["batch_size"] = 16
  record["final"]["gettext_en_fr:validation/num_examples"] = 100.0
  (out / "runs" / name).write_text(json.dumps(record))
  with pytest.raises(ConfigError, match=r"1 recorded run\(s\) .*; translation/sft/learning_rate=3e-05/seed=1: "
                                        r"batch_size 16 -> 8, validation_eval\[gettext_en_fr:validation\] 100 "
                                        r"scored -> 150\. Revert"):
    runs.load_records(str(out), forgetting)


def test_a_selection_is_frozen_once_its_test_is_scored_and_an_override_is_recorded(tmp_path, fake):
  study = runs.load_study(SMOKE)
  out, wd = str(tmp_path / "out"), str(tmp_path / "wd")
  runs.run_all(study, out, wd, only="translation/[bs]*")                  # base, sft's grid, its test, seed 1
  picked = "translation/sft/learning_rate=0.003/seed=0"
  frozen = json.loads((tmp_path / "out" / "selections" / "translation__sft.json").read_text())
  assert (frozen["run"], frozen["grid"], frozen["overrides"]) == (picked, {LR: [0.001, 0.003]}, [])
  assert frozen["candidates"] == ["translation/sft/learning_rate=0.001/seed=0", picked]

  records = runs.load_records(out)                                         # a validation record that changed ...
  changed = {**records["translation/sft/learning_rate=0.001/seed=0"]}
  changed["final"] = {**changed["final"], "gettext_en_fr:validation/chrf": 20.0}
  records["translation/sft/learning_rate=0.001/seed=0"] = changed
  with pytest.raises(ConfigError, match=rf"translation/sft: the selection is frozen at {picked} \(its test is "
                     r"scored\), but the grid and validation records now select "
                     r"translation/sft/learning_rate=0.001/seed=0; re-select only with --override_selection="):
    runs.selections(study, records)

  grown = _edited_smoke(tmp_path, "grown", ('s.grids = {"sft": {lr: [1e-3, 3e-3]}',
                                            's.grids = {"sft": {lr: [1e-3, 3e-3, 1e-2]}'))
  fake.trained.clear()
  with pytest.raises(ConfigError, match=rf"frozen at {picked} .* now name grid points never trained: "
                                        r"translation/sft/learning_rate=0.01/seed=0"):
    runs.run_all(grown, out, wd, only="translation/[bs]*")               # ... or a grid edit: stops, trains nothing
  assert fake.trained == []
  line = runs.override_selection(grown, out, "translation/sft", "alice, 2026-12-03: the grid missed 1e-2")
  assert line.startswith(f"translation/sft: selection frozen at {picked} unfrozen")
  runs.run_all(grown, out, wd, only="translation/[bs]*")
  assert fake.trained == [(0.01, 0), (0.01, 1)]                           # the new point, then its seed 1
  frozen = json.loads((tmp_path / "out" / "selections" / "translation__sft.json").read_text())
  assert frozen["run"] == "translation/sft/learning_rate=0.01/seed=0"    # frozen again, at the new pick's test
  (override,) = frozen["overrides"]
  assert (override["from"], override["to"]) == ([picked], "a grid with untrained points")
  assert override["reason"] == "alice, 2026-12-03: the grid missed 1e-2" and override["date"]
  records = runs.load_records(out, grown)
  text = report.write_report(grown, records, runs.selections(grown, records), out)
  assert (f"Selection overrides: sft: frozen at {picked}, re-selected (a grid with untrained points) on "
          f"{override['date']}: alice, 2026-12-03: the grid missed 1e-2") in text.splitlines()


def test_a_retrained_test_phase_must_reproduce_its_recorded_validation(tmp_path, fake):
  study = runs.load_study(SMOKE)
  out, wd = str(tmp_path / "out"), str(tmp_path / "wd")
  runs.run_all(study, out, wd, max_runs=3)                                 # base and sft's grid, on this machine
  shutil.rmtree(os.path.join(wd, study.name, "params"))                    # the test phase runs on another one
  fake.shift = 1.5
  picked = "translation/sft/learning_rate=0.003/seed=0"
  with pytest.raises(runs.ReproductionError, match=rf"{picked} retrained for its test phase does not reproduce its "
                     r"recorded validation: gettext_en_fr:validation/chrf recorded 9, reproduced 10.5 \(tolerance "
                     r"1\); its test sets are not scored"):
    runs.run_all(study, out, wd, only="translation/sft/*")                # its test first
  record = runs.load_records(out)[picked]
  assert "test_seconds" not in record and not (tmp_path / "out" / "selections").exists()
  assert not os.path.exists(runs.params_path(wd, study, runs.record_run(record)))   # the next try retrains again
  fake.shift = 0.5                                                         # within the default tolerance
  assert runs.run_all(study, out, wd, only="translation/sft/*", max_runs=1) == 1
  record = runs.load_records(out)[picked]
  assert record["test_retrained"]["gettext_en_fr:validation/chrf"] == 9.5
  assert record["final"]["gettext_en_fr:validation/chrf"] == 9.0         # what selection read stays
  assert "gettext_en_fr:test_heldout/chrf" in record["final"]
  records = runs.load_records(out, study)
  text = report.write_report(study, records, runs.selections(study, records), out)
  assert f"| {picked} | " in text and " 9 → 9.5 |" in text               # the report shows how far it drifted
  study.spec.reproduce_tolerance = {"*/chrf": 2.0}                         # a study may state its own
  assert runs.tolerance(study, "gettext_en_fr:validation/chrf") == 2.0
  assert runs.tolerance(study, "capitals_gen:validation/exact_match_norm") == runs.REPRODUCE_TOLERANCE["*"]


def _git(repo, *args):
  subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                 capture_output=True)


def test_a_record_notes_the_commit_and_a_modified_checkout(tmp_path, fake, monkeypatch):
  repo = tmp_path / "repo"
  (repo / "results").mkdir(parents=True)
  (repo / "code.py").write_text("x = 1\n")
  (repo / "results" / "old.json").write_text("{}\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-q", "-m", "one")
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                        text=True).stdout.strip()
  monkeypatch.setattr(runs, "SOURCE_DIR", str(repo))
  (repo / "code.py").write_text("x = 2\n")
  (repo / "results" / "old.json").write_text('{"a": 1}\n')
  study = runs.load_study(SMOKE)
  out, wd = str(repo / "results"), str(tmp_path / "wd")
  runs.run_all(study, out, wd, max_runs=1)
  record = runs.load_records(out)["translation/base/default/seed=0"]
  assert (record["commit"], record["dirty"], record["dirty_files"]) == (head, True, ["code.py"])   # --out aside
  assert len(record["dirty_diff_sha256"]) == 64
  assert "translation/base/default/seed=0" in report.integrity_lines(runs.load_records(out))[-1]
  _git(repo, "add", "code.py")
  _git(repo, "commit", "-q", "-m", "two")
  runs.run_all(study, out, wd, max_runs=1)
  record = runs.load_records(out)["translation/sft/learning_rate=0.001/seed=0"]
  assert record["dirty"] is False and "dirty_files" not in record and record["commit"] != head


def test_a_run_resumed_after_signals_records_the_time_of_every_attempt(tmp_path, fake, monkeypatch):
  """A stopped attempt's wall time is kept in the run's workdir and counted when the run resumes and records."""
  import time as real_time
  from grow_jax.errors import StudyInterrupted
  from grow_jax.train import loop
  clock = [1000.0]
  monkeypatch.setattr(runs, "time", types.SimpleNamespace(time=lambda: clock[0], strftime=real_time.strftime))
  trained = loop.train_and_evaluate
  attempts = []

  def stopped_twice(config, workdir):                 # 100 s an attempt; the first two are stopped by a signal
    attempts.append(workdir)
    clock[0] += 100.0
    if len(attempts) <= 2:
      os.makedirs(workdir, exist_ok=True)
      return {"step": len(attempts), "preempted": True}
    return trained(config, workdir)

  monkeypatch.setattr(loop, "train_and_evaluate", stopped_twice)
  study = runs.load_study(SMOKE)
  sweep = runs.pending(study, {})[1]
  out, wd = str(tmp_path / "out"), str(tmp_path / "wd")
  for _ in range(2):
    with pytest.raises(StudyInterrupted):
      runs.execute(study, sweep, out, wd)
  record = runs.execute(study, sweep, out, wd)
  assert len(set(attempts)) == 1                                   # every attempt trains in the same workdir
  assert record["stopped_seconds"] == 200.0
  assert record["train_seconds"] == 300.0 and record["seconds"] == 300.0
  assert runs.load_records(out)[sweep.id]["train_seconds"] == 300.0


def test_a_killed_or_failed_attempt_counts_to_its_last_heartbeat(tmp_path, fake, monkeypatch):
  """The running attempt writes its wall time every HEARTBEAT_SECONDS; what a killed attempt (no cleanup) leaves,
  and a failed attempt's final beat, count in the record of the run that resumes."""
  import time as real_time
  from grow_jax.train import loop
  clock = [1000.0]
  monkeypatch.setattr(runs, "time", types.SimpleNamespace(time=lambda: clock[0], strftime=real_time.strftime))
  monkeypatch.setattr(runs, "HEARTBEAT_SECONDS", 0.01)
  trained = loop.train_and_evaluate
  study = runs.load_study(SMOKE)
  sweep = runs.pending(study, {})[1]
  out, wd = str(tmp_path / "out"), str(tmp_path / "wd")
  beats = []

  def fails_after_a_beat(config, workdir):           # 100 s, a heartbeat seen, 20 s more, then an error
    clock[0] += 100.0
    attempt = os.path.join(workdir, runs.ATTEMPT_SECONDS)
    deadline = real_time.time() + 10
    while not (os.path.exists(attempt) and json.load(open(attempt))["seconds"] == 100.0):
      assert real_time.time() < deadline, "no heartbeat while training"
      real_time.sleep(0.005)
    beats.append(json.load(open(attempt))["seconds"])
    clock[0] += 20.0
    raise RuntimeError("out of memory")

  monkeypatch.setattr(loop, "train_and_evaluate", fails_after_a_beat)
  with pytest.raises(RuntimeError, match="out of memory"):
    runs.execute(study, sweep, out, wd)
  workdir = runs.run_config(study, sweep, wd)[1]
  assert beats == [100.0] and runs._stopped_seconds(workdir) == 120.0       # the failed attempt's final beat

  def finishes(config, workdir):
    clock[0] += 30.0
    return trained(config, workdir)

  monkeypatch.setattr(loop, "train_and_evaluate", finishes)
  with open(os.path.join(workdir, runs.ATTEMPT_SECONDS), "w") as f:   # as if this attempt had been killed at 50 s
    json.dump({"seconds": 50.0}, f)                                    # after a stopped one of 70 s
  with open(os.path.join(workdir, runs.STOPPED_SECONDS), "w") as f:
    json.dump({"seconds": 70.0}, f)
  record = runs.execute(study, sweep, out, wd)
  assert record["stopped_seconds"] == 120.0 and record["train_seconds"] == 150.0


def test_a_retrained_test_phase_counts_its_stopped_attempts(tmp_path, fake, monkeypatch):
  import time as real_time
  from grow_jax.errors import StudyInterrupted
  from grow_jax.train import loop
  study = runs.load_study(SMOKE)
  out, wd = str(tmp_path / "out"), str(tmp_path / "wd")
  runs.run_all(study, out, wd, max_runs=3)                                 # base and sft's grid, on this machine
  shutil.rmtree(os.path.join(wd, study.name, "params"))                    # the test phase retrains elsewhere
  test = next(r for r in runs.pending(study, runs.load_records(out, study)) if r.phase == "test")
  clock = [1000.0]
  monkeypatch.setattr(runs, "time", types.SimpleNamespace(time=lambda: clock[0], strftime=real_time.strftime))
  trained = loop.train_and_evaluate

  def stopped_once(config, workdir):                  # 100 s an attempt; the first is stopped by a signal
    clock[0] += 100.0
    if not os.path.exists(os.path.join(workdir, runs.STOPPED_SECONDS)):
      os.makedirs(workdir, exist_ok=True)
      return {"step": 1, "preempted": True}
    return trained(config, workdir)

  monkeypatch.setattr(loop, "train_and_evaluate", stopped_once)
  with pytest.raises(StudyInterrupted):
    runs.execute(study, test, out, wd)
  record = runs.execute(study, test, out, wd)
  assert record["test_seconds"] == 200.0                                   # both attempts of the retrain


def test_a_run_trained_in_one_go_has_no_stopped_seconds(tmp_path, fake):
  study = runs.load_study(SMOKE)
  sweep = runs.pending(study, {})[1]
  record = runs.execute(study, sweep, str(tmp_path / "out"), str(tmp_path / "wd"))
  assert "stopped_seconds" not in record and record["seconds"] >= record["train_seconds"]
