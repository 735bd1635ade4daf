"""Sequential stages in the study runner (`after`): a task's runs start from the trained params of its parent task's
run of the same method and seed, and wait until those runs are done; per-(task, method) overrides name each stage's
task branches; a spec that would make the parent run ambiguous is refused in one line."""

import os
import textwrap

import pytest

from config_files import ROOT
from grow_jax.errors import ConfigError
from grow_jax.study import runs

STUDY = textwrap.dedent('''
    import importlib.util, os
    spec = importlib.util.spec_from_file_location("tiny_config", os.path.join({root!r}, "configs", "tiny.py"))
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)

    def get_config(arg=None):
      return tiny.get_config("steps=2")

    def get_study(arg=None):
      s = dict(name="stages", tasks={{"a": {{"data.task": "synthetic"}}, "b": {{"data.task": "synthetic"}}}},
               methods={{"sft": {{"train.mode": "sft"}}, "g_freeze": {{"train.mode": "g_freeze"}}}},
               grids={{"sft": {{"optimizer.learning_rate": [1e-3]}}, "g_freeze": {{"optimizer.learning_rate": [3e-3]}}}},
               seeds=[0, 1], sweep_seeds=2, validation_eval={{"a": [], "b": []}}, test_eval={{"a": [], "b": []}},
               after={{"b": "a"}},
               task_method_overrides={{"a": {{"g_freeze": {{"growth.task": "a"}}}}, "b": {{"g_freeze": {{"growth.task": "b"}}}}}})
      s.update({extra})
      return s

    def select(task, method, runs, reference):
      return runs[0]
''')


def study_file(tmp_path, extra="{}"):
  path = tmp_path / "stages.py"
  path.write_text(STUDY.format(root=ROOT, extra=extra))
  return str(path)


def record(run):
  return {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
          "seed": run.seed, "phase": run.phase, "steps": 2, "train_seconds": 1.0, "eval_seconds": 1.0,
          "seconds": 2.0, "final": {}}


def test_a_stage_waits_for_its_parent_runs_then_starts_from_their_params(tmp_path):
  study = runs.load_study(study_file(tmp_path))
  first = {r.id for r in runs.expand(study, {})}
  assert first == {"a/base/default/seed=0", "b/base/default/seed=0", "a/sft/learning_rate=0.001/seed=0",
                   "a/sft/learning_rate=0.001/seed=1", "a/g_freeze/learning_rate=0.003/seed=0",
                   "a/g_freeze/learning_rate=0.003/seed=1"}                  # b's runs wait for a's
  records = {r.id: record(r) for r in runs.expand(study, {})
             if r.task == "a" and r.method in ("g_freeze", "base")}          # a's g_freeze runs (and base) done
  selected = runs.selections(study, records)
  children = sorted(r.id for r in runs.expand(study, selected) if r.task == "b" and r.method != "base")
  assert children == ["b/g_freeze/learning_rate=0.003/seed=0", "b/g_freeze/learning_rate=0.003/seed=1"]
  child = runs.Run("b", "g_freeze", (("optimizer.learning_rate", 3e-3),), 1, "sweep")
  parent = runs.parent_run(study, child)
  assert parent == runs.Run("a", "g_freeze", (("optimizer.learning_rate", 3e-3),), 1, "sweep")
  config, _ = runs.run_config(study, child, "/scratch")
  assert config.init.source == "params:/scratch/stages/stages/a__g_freeze__learning_rate=0.003__seed=1.safetensors"
  assert config.growth.task == "b" and runs.run_config(study, parent, "/scratch")[0].growth.task == "a"
  # the identity names the parent run, not this machine's workdir root
  assert runs.training_config(study, child)["init.source"] == (
      "params:stages/stages/a__g_freeze__learning_rate=0.003__seed=1.safetensors")
  assert runs.run_config(study, runs.Run("b", "sft", (("optimizer.learning_rate", 1e-3),), 0, "sweep"),
                         "/scratch")[0].growth.task == ""


def test_every_stage_measures_kl_against_the_untrained_model_not_the_stage_it_started_from(tmp_path, monkeypatch):
  from grow_jax import formats
  from grow_jax.evaluation import registry
  study = runs.load_study(study_file(tmp_path))
  child = runs.Run("b", "g_freeze", (("optimizer.learning_rate", 3e-3),), 1, "test")
  config, _ = runs.run_config(study, child, "/scratch")
  assert config.init.source.startswith("params:/scratch/stages/")             # b starts from a's trained params
  reference = runs.reference_config(study, child, "/scratch")
  assert reference.init.source == "random:tiny" and reference.seed == config.seed
  parent = runs.parent_run(study, child)
  assert runs.reference_config(study, parent, "/scratch").init.source == "random:tiny"    # a first stage: itself
  loaded = []
  monkeypatch.setattr(formats, "load_checkpoint", lambda source, **kw: loaded.append(source) or ("cfg", "params"))

  def kl_entry(entry, ctx):
    return lambda params: ({"kl": 0.0}, []) if ctx.base_model() == ("cfg", "params") and ctx.base_id else None
  monkeypatch.setattr(registry, "build", kl_entry)
  scores = runs.evaluate([["stdlib_text:test", 2]], config, None, None, None, reference=reference)
  assert loaded == ["random:tiny"] and scores == {"stdlib_text:test/kl": 0.0}
  runs.evaluate([["stdlib_text:test", 2]], config, None, None, None)
  assert loaded[-1] == config.init.source                                     # without a reference: its own


def test_a_stage_whose_parent_params_are_gone_says_how_to_retrain_it(tmp_path):
  study = runs.load_study(study_file(tmp_path))
  child = runs.Run("b", "sft", (("optimizer.learning_rate", 1e-3),), 0, "sweep")
  with pytest.raises(ConfigError, match=r"run b/sft/learning_rate=0.001/seed=0 continues a/sft/learning_rate=0.001/"
                                        r"seed=0, whose trained params are not at .*: delete .*a__sft__learning_rate="
                                        r"0.001__seed=0.json to train that run again"):
    runs.execute(study, child, str(tmp_path / "out"), str(tmp_path / "work"))


@pytest.mark.parametrize("extra, message", [
    ('{"grids": {"sft": {"optimizer.learning_rate": [1e-3, 3e-3]}, "g_freeze": {"optimizer.learning_rate": [1e-3]}}}',
     r"method 'sft''s grid must be one point of literal values"),
    ('{"sweep_seeds": 1}', r"every seed must sweep \(sweep_seeds=2\)"),
    ('{"after": {"b": "c"}}', r"\['after'\]\['b'\] is 'c'; expected another task of the study"),
    ('{"task_methods": {"a": ["sft"]}}', r"task 'b' continues 'a', which does not run \['g_freeze'\]"),
    ('{"task_method_overrides": {"z": {}}}', r"\['task_method_overrides'\] names tasks \['z'\]"),
])
def test_ambiguous_stages_are_refused(tmp_path, extra, message):
  with pytest.raises(ConfigError, match=message):
    runs.load_study(study_file(tmp_path, extra))


@pytest.mark.slow
def test_the_sequential_study_smoke_runs_both_stages_and_b_starts_from_a(tmp_path):
  """experiments/studies/sequential_270m.py:smoke end to end: stage A's runs, then stage B's from A's params; the
  G-Freeze stage-B model carries both tasks' branches and switched to A alone is A's model bit for bit."""
  import numpy as np
  from grow_jax import tree_paths
  from grow_jax.formats import params_file
  from grow_jax.growth import tasks
  study = runs.load_study(os.path.join(ROOT, "experiments", "studies", "sequential_270m.py") + ":smoke")
  out, work = str(tmp_path / "out"), str(tmp_path / "work")
  runs.run_all(study, out, work, keep_params=True)
  records = runs.load_records(out, study)
  assert sorted(records) == sorted(f"{t}/{m}/default/seed=0" for t in ("translation", "arithmetic_after")
                                   for m in ("base", "sft", "g_freeze"))
  kept = lambda task: runs.params_path(work, study, runs.Run(task, "g_freeze", (), 0, "sweep"), "kept")
  a_config, a_params = params_file.load_params_file(kept("translation"))
  b_config, b_params = params_file.load_params_file(kept("arithmetic_after"))
  assert tasks.task_names(a_config) == ("translation",) and tasks.task_names(b_config) == ("translation", "arithmetic")
  config, params = tasks.select_tasks(b_config, b_params, ["translation"])
  assert config == a_config
  for key, value in tree_paths.flatten(a_params).items():
    np.testing.assert_array_equal(np.asarray(tree_paths.flatten(params)[key]), np.asarray(value), err_msg=key)
  # the report's stages section: a row per method with both stages, and its figure
  from grow_jax.study import report
  text = report.write_report(study, records, runs.selections(study, records), out)
  section = text.split("### translation, then arithmetic_after")[1]
  assert [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:] == [
      "base (untrained)", "sft", "g_freeze"]
  assert os.path.exists(os.path.join(out, "arithmetic_after_stages.png"))
