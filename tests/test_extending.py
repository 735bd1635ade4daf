"""Adding a data task and an evaluation from OUTSIDE the package, each one file, as docs/design.md
("Extending grow_jax") says: a module in a temporary directory is imported, registers itself through the
top-level surface, and the trainer / the evaluation CLI use it by name. Nothing in grow_jax is edited."""

import importlib
import sys
import textwrap

import pytest

from grow_jax import evaluate
from grow_jax.data import tasks
from grow_jax.errors import ConfigError
from grow_jax.evaluation import registry
from grow_jax.train import loop
from byte_tokenizer import byte_tokenizer
from config_files import load_config

TASK_FILE = '''
"""Capital-city questions as a two-way choice: a data task kept outside grow_jax."""
from grow_jax import Task, register_task

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
         ("Spain", "Madrid"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana")]


def records(split):
  pairs = PAIRS[:7] if split == "train" else PAIRS[7:]
  return [{"id": country, "country": country, "city": city, "other": PAIRS[(i + 3) % len(PAIRS)][1]}
          for i, (country, city) in enumerate(pairs)]


@register_task("capital_choice")
def capital_choice(limit: int | None = None) -> Task:
  return Task(name="capital_choice", splits=("train", "validation"),
              source=lambda split: records(split)[:limit],
              prompt=lambda r: f"The capital of {r['country']} is", target=lambda r: r["city"],
              choices=lambda r: [r["city"], r["other"]], gold=lambda r: 0, metrics=("acc", "acc_norm"),
              description="capital cities, two-way choice (an outside task)")
'''

EVALUATION_FILE = '''
"""Perplexity of two greetings: an evaluation kept outside grow_jax."""
from grow_jax import EvalContext, EvalTask, Evaluator, register_evaluation

TEXTS = ["Hello there, how are you today?", "Good morning, and welcome to the meeting."]


@register_evaluation("greetings_ppl")
def greetings_ppl(ctx: EvalContext, split):
  evaluator = Evaluator(ctx.tokenizer, [EvalTask("greetings_ppl", "perplexity", TEXTS[:ctx.limit])],
                        batch_size=ctx.batch_size, max_len=ctx.max_len)
  return lambda params: evaluator(ctx.model_config, params)["greetings_ppl"]


@register_evaluation("greetings_kl", needs_base=True)
def greetings_kl(ctx: EvalContext, split):
  evaluator = Evaluator(ctx.tokenizer, [EvalTask("greetings_kl", "kl", TEXTS)], base=ctx.base_model(),
                        batch_size=ctx.batch_size, max_len=ctx.max_len)
  return lambda params: evaluator(ctx.model_config, params)["greetings_kl"]
'''


@pytest.fixture
def outside(tmp_path, monkeypatch):
  """import_file(name, text): writes `name`.py in a directory outside grow_jax and imports it; every name it
  registered is forgotten afterwards."""
  before = (set(tasks.TASKS.names()), set(registry.EVALUATIONS.names()))
  monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
  (tmp_path / "plugins").mkdir()
  imported = []

  def import_file(name: str, text: str):
    (tmp_path / "plugins" / f"{name}.py").write_text(textwrap.dedent(text))
    imported.append(name)
    return importlib.import_module(name)

  yield import_file
  for name in imported:
    sys.modules.pop(name, None)
  for name in set(tasks.TASKS.names()) - before[0]:
    tasks.TASKS.remove(name)
  for name in set(registry.EVALUATIONS.names()) - before[1]:
    registry.EVALUATIONS.remove(name)


@pytest.mark.slow
def test_a_task_from_outside_the_package_is_trained_and_evaluated_on_the_tiny_config(outside, tmp_path):
  config = load_config("tiny", "steps=2,layers_n=1,seq_len=64")
  config.data.task = "capital_choice"
  config.data.tokenizer = byte_tokenizer(tmp_path / "tokenizer")
  config.eval.tasks = ("heldout_loss", "capital_choice")
  with pytest.raises(ConfigError, match=r"config.data.task='capital_choice'"):   # not there before the import
    loop.train_and_evaluate(config, str(tmp_path / "refused"))
  module = outside("capital_task", TASK_FILE)
  assert "capital_choice" in tasks.list_tasks() and tasks.get_task("capital_choice").description.endswith("task)")
  config.data.options.limit = 5                     # its own option, set like a built-in task's
  out = loop.train_and_evaluate(config, str(tmp_path / "wd"))
  assert 0.0 <= out["eval/capital_choice/acc"] <= 1.0 and out["eval/heldout_loss/tokens"] > 0, sorted(out)
  assert tasks.TASKS.get("capital_choice") is module.capital_choice
  with pytest.raises(tasks.TaskError, match=r"task 'capital_choice' is already registered \(by "
                     r"capital_task.capital_choice\); pass replace=True"):
    tasks.register_task("capital_choice")(lambda: None)


@pytest.mark.slow
def test_an_evaluation_from_outside_the_package_is_run_by_the_evaluator(outside):
  with pytest.raises(ConfigError, match="unknown"):
    evaluate.run("random:tiny", ["greetings_ppl"], tokenizer="bytes")
  outside("greetings_eval", EVALUATION_FILE)
  kwargs = dict(tokenizer="bytes", batch_size=2, max_len=64)
  results = evaluate.run("random:tiny", ["greetings_ppl"], **kwargs)
  assert set(results) == {"greetings_ppl"} and results["greetings_ppl"]["perplexity"] > 1.0
  assert evaluate.run("random:tiny", ["greetings_ppl"], limit=1, **kwargs) != results      # ctx.limit reaches it
  with pytest.raises(ConfigError, match=r"^evaluation 'greetings_kl' computes KL\(base ‖ model\) and needs a base "
                     r"model \(--base\)$"):                                   # its declared need, checked first
    evaluate.run("random:tiny", ["greetings_kl"], **kwargs)
  kl = evaluate.run("random:tiny", ["greetings_kl"], base="random:tiny", **kwargs)["greetings_kl"]
  assert kl["kl"] == pytest.approx(0.0, abs=1e-5)                       # the model against itself
