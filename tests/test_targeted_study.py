"""experiments/studies/targeted_270m.py: its layer sets come from a plan's scores and budget rule, and every
run it names builds a valid config for the trainer (checked without training, on its smoke variant)."""

import os

import pytest

from config_files import ROOT
from grow_jax.errors import ConfigError
from grow_jax.growth import analysis, plan as plan_lib
from grow_jax.model.config import get_preset
from grow_jax.study import runs
from grow_jax.train import config as config_lib, setup

STUDY = os.path.join(ROOT, "experiments", "studies", "targeted_270m.py")


def _plan(tmp_path):
  config = get_preset("tiny", num_layers=6, vocab_size=262_144)       # the smoke variant's model
  rel = [0.1, 0.5, 0.2, 0.4, 0.3, 0.05]
  stats = [{"layer": i, "fro": r, **{f"{m}/{s}": r for m in analysis.MATRICES for s in analysis.STATS}}
           for i, r in enumerate(rel)]
  path = str(tmp_path / "plan.json")
  plan_lib.write_plan(plan_lib.make_plan(config, stats, num_layers=2, base="random:tiny"), path)
  return path


def test_targeted_study_runs_build_valid_configs(tmp_path):
  path = _plan(tmp_path)
  study = runs.load_study(f"{STUDY}:plan={path},lr=0.001,variant=smoke")
  methods = study.methods("translation")
  assert methods[:7] == ["g_freeze_all", "g_freeze_plan_third", "g_freeze_lowest_third", "g_freeze_random_third",
                         "g_freeze_plan_half", "g_freeze_lowest_half", "g_freeze_random_half"]
  assert set(methods[7:]) == {"g_freeze_norms", "g_freeze_attn", "g_freeze_x3", "g_freeze_x4", "g_train",
                              "g_train_noise"}
  spec = study.spec.methods
  assert spec["g_freeze_plan_third"]["growth.layers"] == "1,3"
  assert spec["g_freeze_lowest_third"]["growth.layers"] == "0,5"
  assert spec["g_freeze_plan_half"]["growth.layers"] == "1,3,4"
  assert len(spec["g_freeze_random_half"]["growth.layers"].split(",")) == 3
  todo = runs.pending(study, {})
  arms = methods[:7]
  assert len(todo) == 1 + 2 * len(arms) + len(methods[7:])                # the arms: 2 rates each (smoke)
  assert all(r.seed == 0 for r in todo)
  for run in todo:
    config, _ = runs.run_config(study, run, str(tmp_path / "wd"))
    rates = (0.001, 0.003) if run.method in arms else (0.001,)
    assert config.optimizer.learning_rate in rates or run.method == "base"
    config_lib.check(config)
    mc = setup.grown_model_config(config, setup.base_model_config(config))
    if run.method == "g_freeze_attn":
      assert mc.attn_grown and not mc.is_grown
    elif run.method == "g_freeze_x4":
      assert mc.layer_mlp_branches(0) == (128,) * 4
    elif run.method == "g_freeze_plan_third":
      assert [len(mc.layer_mlp_branches(i)) for i in range(6)] == [1, 2, 1, 2, 1, 1]
  with pytest.raises(ConfigError, match="give plan=<growth-plan JSON> and lr="):
    runs.load_study(f"{STUDY}:variant=smoke")


def test_the_cpu_variant_borrows_runs_that_train_exactly_like_the_forgetting_studys():
  plan = os.path.join(ROOT, "experiments", "results", "plans", "translation_sft_lr3e-05.json")
  study = runs.load_study(f"{STUDY}:plan={plan},lr=0.0001")
  forgetting = runs.load_study(os.path.join(ROOT, "experiments", "studies", "forgetting_270m.py"))
  assert {m: twin for m, (_, _, twin) in study.spec.borrow.items()} == {
      "base": "base", "g_freeze_all": "g_freeze", "g_train": "g_train"}
  for run in runs.pending(study, {}):
    if run.method in study.spec.borrow:
      twin = runs.Run(run.task, study.spec.borrow[run.method][2], run.hparams, run.seed, run.phase)
      assert runs.training_config(study, run) == runs.training_config(forgetting, twin)
  assert study.spec.seeded_methods == ["g_freeze_all"] + [f"g_freeze_{n}_{b}" for b in ("third", "half")
                                                         for n in ("plan", "lowest", "random")]


def test_each_layer_set_arm_is_tuned_on_validation_then_tested_and_seeded():
  plan = os.path.join(ROOT, "experiments", "results", "plans", "translation_sft_lr3e-05.json")
  study = runs.load_study(f"{STUDY}:plan={plan},lr=0.0001,borrow=")
  assert study.spec.borrow == {}                                             # borrow='': every run trains here
  todo = runs.pending(study, {})
  sweep = [r for r in todo if r.method == "g_freeze_plan_third"]
  assert [dict(r.hparams)["optimizer.learning_rate"] for r in sweep] == [1e-4, 3e-4, 1e-3]
  assert [dict(r.hparams)["optimizer.learning_rate"] for r in todo if r.method == "g_freeze_all"] == [3e-5, 1e-4, 3e-4]
  assert [len(r.hparams) for r in todo if r.method == "g_freeze_x3"] == [1]  # an ablation: the given rate only
  final = lambda chrf: {"gettext_en_fr:validation/chrf": chrf, "capitals_gen:validation/exact_match_norm": 0.5}
  records = {todo[0].id: {"id": todo[0].id, "hparams": [], "final": final(26.0)}}           # base
  records.update({r.id: {"id": r.id, "hparams": [list(kv) for kv in r.hparams], "final": final(chrf)}
                  for r, chrf in zip(sweep, (58.0, 60.0, 59.0))})
  assert dict(runs.selections(study, records)[("translation", "g_freeze_plan_third")]["hparams"]) == {
      "optimizer.learning_rate": 3e-4}                                       # the best validation chrF
  nxt = [r.key for r in runs.pending(study, records) if r.method == "g_freeze_plan_third"]
  assert nxt == ["translation/g_freeze_plan_third/learning_rate=0.0003/seed=0#test",
                 "translation/g_freeze_plan_third/learning_rate=0.0003/seed=1",
                 "translation/g_freeze_plan_third/learning_rate=0.0003/seed=2"]
