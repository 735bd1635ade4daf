"""Specification of how data tasks are evaluated, in the trainer and in `python -m grow_jax.evaluate`."""

import json
import os

import jax
import numpy as np
import pytest

from config_files import load_config
from grow_jax.errors import ConfigError, TaskError

from grow_jax import evaluate
from grow_jax.train import checkpointing
from grow_jax.evaluation import tasks as task_eval
from grow_jax.train import loop as train
from grow_jax.train import summary
from grow_jax.model.transformer import forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "data")


def _tiny_config(arg=""):
  return load_config("tiny", arg)


def test_each_task_kind_gets_its_evaluations():
  kinds = lambda name, split: [(t.name, t.kind) for t in task_eval.eval_tasks(name, split=split, limit=3)]
  assert kinds("capitals", "test") == [("capitals", "multiple_choice")]
  assert kinds("arithmetic", "validation") == [("arithmetic", "multiple_choice")]
  assert kinds("stdlib_text", "validation") == [("stdlib_text", "kl")]      # KL and perplexity in one pass
  assert [t.kind for t in task_eval.eval_tasks("stdlib_text", split="validation", limit=3, with_kl=False)] == [
      "perplexity"]


def test_winogrande_is_scored_by_partial_scoring_and_translation_by_generation(tmp_path):
  files = lambda name, *splits: {s: os.path.join(FIXTURES, name, f"{s}.jsonl") for s in splits}
  wino = task_eval.eval_tasks("winogrande", split="validation", limit=2, task_options={
      "data_files": files("winogrande", "train", "validation"), "cache_dir": str(tmp_path)})
  assert [t.kind for t in wino] == ["partial"]
  assert wino[0].examples[0].contexts and wino[0].examples[0].continuation
  [mt] = task_eval.eval_tasks("translation_en_fr", split="test", limit=2, max_new_tokens=7, task_options={
      "data_files": files("wmt14", "train", "validation", "test"), "cache_dir": str(tmp_path)})
  assert mt.kind == "generation" and mt.options == {"metrics": ("bleu", "chrf"), "max_new_tokens": 7}


def test_unknown_task_and_split_are_named():
  with pytest.raises(TaskError, match="nosuchtask"):
    task_eval.eval_tasks("nosuchtask", split="test")
  with pytest.raises(TaskError, match="'capitals'.*'train'"):
    task_eval.eval_tasks("capitals", split="train")


def test_before_after_table_keeps_measurements_only():
  first = {"eval/capitals/acc": 0.9, "eval/capitals/num_examples": 40, "eval/seconds": 3.0, "loss": 2.0}
  last = {"eval/capitals/acc": 0.8, "eval/capitals/num_examples": 40, "eval/seconds": 2.0, "loss": 1.0}
  assert summary.before_after_table(first, last) == [("capitals/acc", 0.9, 0.8)]


def test_trainer_rejects_unknown_eval_task_before_writing(tmp_path):
  config = _tiny_config("steps=1,layers_n=1,seq_len=16")
  config.eval.tasks = ("heldout_loss", "nosuchtask:test")
  with pytest.raises(ConfigError, match="eval.tasks"):
    train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_a_trained_workdir_is_evaluated_with_its_trained_params(tmp_path):
  config = _tiny_config("mode=lora,steps=2,layers_n=1,seq_len=16")
  config.eval.tasks = ()
  config.eval.at_start = True
  seen = []
  train.train_and_evaluate(config, str(tmp_path / "wd"), eval_fns={"probe": lambda p: seen.append(p) or {"x": 1.0}})
  mc, params, meta = checkpointing.load_trained_params(str(tmp_path / "wd"))
  assert meta["step"] == 2 and "lora" not in params
  tokens = np.arange(1, 9, dtype=np.int32)[None]
  np.testing.assert_allclose(forward(mc, params, tokens), forward(mc, jax.device_get(seen[-1]), tokens),
                             rtol=1e-6, atol=1e-6)
  config_e, params_e = evaluate.load_for_eval(str(tmp_path / "wd"))
  assert config_e == mc
  out = tmp_path / "results.json"
  results = evaluate.run(str(tmp_path / "wd"), ["smoke_ppl"], tokenizer="bytes", out=str(out), max_len=32)
  assert json.loads(out.read_text()) == results and results["smoke_ppl"]["perplexity"] > 1.0
  # The run started with an evaluation, so it ends with a before/after summary.
  summary = json.loads((tmp_path / "wd" / "summary.json").read_text())
  assert summary["steps"] == [0, 2] and summary["metrics"]["probe/x"] == {"before": 1.0, "after": 1.0}
