"""experiments/dial_study.py: the pre-registered dial. SFT is moved by weight interpolation with exact ends; the
rule picks the smallest u that clears the bar; on a smoke study (SFT and G-Freeze, two seeds, params kept) the
validation curves and every seed's test score at u* are recorded once, and a re-run scores nothing."""

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from config_files import ROOT
from grow_jax.errors import ConfigError
from grow_jax.study import runs

sys.path.insert(0, os.path.join(ROOT, "experiments"))
_spec = importlib.util.spec_from_file_location("dial_study", os.path.join(ROOT, "experiments", "dial_study.py"))
dial_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dial_study)
SMOKE = os.path.join(ROOT, "experiments", "studies", "forgetting_270m.py")


def test_sft_is_interpolated_toward_its_base_with_exact_ends():
  from grow_jax import formats
  config, base = formats.load_checkpoint("random:tiny", seed=0, num_layers=1)
  trained = jax.tree.map(lambda b: b + 1.0, base)
  assert dial_sweep_move(config, trained, base, 1.0) is trained
  for got, want in zip(jax.tree.leaves(dial_sweep_move(config, trained, base, 0.0)), jax.tree.leaves(base)):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(dial_sweep_move(config, trained, base, 0.25)), jax.tree.leaves(base)):
    np.testing.assert_allclose(got, np.asarray(want) + 0.25, rtol=0, atol=1e-6)
  with pytest.raises(ConfigError, match="which need the same parameter tree"):
    dial_sweep_move(config, {**trained, "lora": {"a": np.zeros(2)}}, base, 0.5)


def dial_sweep_move(*args):
  return dial_study.dial_sweep.move(*args)


def test_the_rule_takes_the_smallest_u_that_clears_the_bar():
  curve = [(0.0, 26.6), (0.25, 56.7), (0.5, 60.0), (0.75, 62.2), (1.0, 61.9)]
  assert dial_study.choose_u(curve, 60.28 - 1.0) == 0.5
  assert dial_study.choose_u(curve, 62.0) == 0.75          # not monotone: the first that clears it
  assert dial_study.choose_u(curve, 70.0) == 1.0           # none clears it: the model as trained
  assert dial_study.choose_u(curve, 0.0) == 0.25           # never u = 0, the untrained model


def _smoke_study_with_growth(tmp_path) -> str:
  """The forgetting study's smoke variant with G-Freeze beside SFT, both seeded."""
  text = open(SMOKE).read()
  for old, new in [('"l2sp": {"train.mode": "l2sp"}}', '"g_freeze": {"train.mode": "g_freeze"}}'),
                   ('"l2sp": {lr: ["@sft"], "train.l2sp_coef": [0.1]}}', '"g_freeze": {lr: [3e-3]}}'),
                   ('s.seeded_methods = ["sft"]', 's.seeded_methods = ["sft", "g_freeze"]'),
                   ('s.task_methods = {"translation": ["sft", "l2sp"]}', 's.task_methods = {"translation": ["sft", "g_freeze"]}'),
                   ('s.order = [["translation", ["sft", "l2sp"]]]', 's.order = [["translation", ["sft", "g_freeze"]]]')]:
    assert old in text, old
    text = text.replace(old, new)
  path = tmp_path / "smoke_growth.py"
  path.write_text(text)
  return f"{path}:smoke"


def _study_records_and_kept_params(study, results: str, kept: str) -> None:
  """What a finished study leaves: a record per run (the untrained model, every grid point, the seeds; numbers
  made up here: the larger learning rate wins) and, from --keep_params, every trained run's params (SFT: base + a perturbation; G-Freeze: the
  grown base with perturbed copies) — the dial study reads nothing else."""
  from grow_jax import formats
  from grow_jax.formats import params_file
  from grow_jax.growth import operators as growth
  config = study.base_config()
  model_config, base = formats.load_checkpoint(config.init.source, seed=config.seed,
                                               num_layers=config.model.num_layers, vocab_size=config.model.vocab_size)
  grown_config, grown = growth.grow_mlp(model_config, base)
  score = {"capitals_gen:validation/exact_match_norm": 0.5,
           "gettext_en_fr:test_heldout/chrf": 2.0, "stdlib_text:test/kl": 0.1}
  for run in runs.expand(study, {}) + runs.expand(study, {("translation", m): {"hparams": [[
      "optimizer.learning_rate", 3e-3]]} for m in ("sft", "g_freeze")}):
    if run.phase == "test":
      continue
    record = {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
              "seed": run.seed, "phase": run.phase, "seconds": 1.0,
              "final": {**score, "gettext_en_fr:validation/chrf": 1.0 + sum(v for _, v in run.hparams)}}
    runs.write_record(results, run, record)
    if run.method != "base":
      rng = np.random.default_rng(run.seed)
      noise = lambda x: (np.asarray(x) + 0.01 * rng.standard_normal(np.shape(x))).astype(np.asarray(x).dtype)
      cfg, params = (model_config, jax.tree.map(noise, base)) if run.method == "sft" else (grown_config, grown)
      params_file.save_params_file(os.path.join(kept, os.path.basename(runs.params_path("", study, run))), cfg, params)


@pytest.mark.slow
def test_smoke_dial_study_scores_each_point_once(tmp_path):
  study_text = _smoke_study_with_growth(tmp_path)
  study = runs.load_study(study_text)
  results, kept, out = str(tmp_path / "results"), str(tmp_path / "kept"), str(tmp_path / "dial")
  _study_records_and_kept_params(study, results, kept)
  assert sorted(runs.selections(study, runs.load_records(results))) == [("translation", "g_freeze"),
                                                                         ("translation", "sft")]
  with pytest.raises(ConfigError, match="no params file of translation/g_freeze/"):
    dial_study.run(study_text, results, [str(tmp_path / "empty")], "translation", ["g_freeze"], out)
  log = []
  text = dial_study.run(study_text, results, [kept], "translation", ["g_freeze", "sft"], out, margin=1e9,
                        multiples=[0.5], log=log.append)
  names = sorted(os.listdir(os.path.join(out, "runs")))
  assert names == sorted(f"translation__{m}__u=0.5__seed={s}__{p}.json" for m in ("g_freeze", "sft")
                         for s, p in [(0, "validation"), (0, "test"), (1, "test")])
  test = json.loads(open(os.path.join(out, "runs", "translation__g_freeze__u=0.5__seed=1__test.json")).read())
  assert {"gettext_en_fr:test_heldout/chrf", "stdlib_text:test/kl"} <= set(test["final"])
  assert ["u", 0.5] in test["hparams"] and test["phase"] == "test"
  assert "u* = g_freeze 0.5, sft 0.5" in text and "g_freeze u*=0.5" in text
  assert {"results.md", "pareto.png", "validation.png"} <= set(os.listdir(out))
  log.clear()
  assert dial_study.run(study_text, results, [kept], "translation", ["g_freeze", "sft"], out, margin=1e9,
                        multiples=[0.5], log=log.append) == text
  assert not [line for line in log if line.startswith("scoring")]      # every point recorded: nothing scored
  with pytest.raises(ConfigError, match=r"--multiples=\[1.0\]: expected values strictly between 0 and 1"):
    dial_study.run(study_text, results, [kept], "translation", ["sft"], out, multiples=[1.0])
