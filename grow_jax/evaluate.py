r"""Evaluate a model on named tasks; print a table and write {task: {metric: value}} as JSON.

  python -m grow_jax.evaluate --checkpoint=gemma3-270m --tasks=smoke_capitals,smoke_ppl --out=results.json
  python -m grow_jax.evaluate --checkpoint=/path/to/workdir --tasks=... --base=gemma3-270m --out=...
  python -m grow_jax.evaluate --checkpoint=random:tiny --tokenizer=bytes --tasks=smoke_ppl   # plumbing check

--checkpoint is a trainer workdir (a directory), a source for `grow_jax.checkpoints.load_checkpoint`
(e.g. 'gemma3-270m'), or 'random:<preset>' (random weights, for checking the plumbing).
Tasks come from a registry: the built-in smoke tasks below, plus those `register_task` adds (the
`grow_jax.data` tasks are connected in `_register_data_tasks`). 'kl' tasks need --base.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from absl import app, flags, logging

from grow_jax.evaluation.scoring import (EvalTask, Evaluator, MultipleChoice, Params, format_table, write_results)
from grow_jax.model.config import ModelConfig

TaskBuilder = Callable[[int | None], EvalTask]   # limit (max examples, None = all) -> EvalTask

_FLAGS_DEFINED = False


# ---- model and tokenizer hooks -----------------------------------------------------------------------
def load_for_eval(path: str) -> tuple[ModelConfig, Params]:
  """(config, params) of what --checkpoint names: a trainer workdir (its latest checkpoint, LoRA merged),
  a model source ('gemma3-270m', 'hf:<dir>', 'gguf:<file>') or 'random:<preset>'."""
  if path.startswith("random:"):
    import jax
    from grow_jax.model.transformer import init_params
    from grow_jax.model.config import get_preset
    config = get_preset(path.split(":", 1)[1])
    return config, init_params(config, jax.random.key(0))
  if os.path.isdir(path):
    from grow_jax.train.checkpointing import load_trained_params
    config, params, meta = load_trained_params(path)
    logging.info("restored %s at step %s (mode %s)", path, meta.get("step"), meta.get("mode"))
    return config, params
  from grow_jax.formats.sources import load_checkpoint
  return load_checkpoint(path)


class ByteTokenizer:
  """UTF-8 bytes as ids 3..258 (0 pad, 1 eos, 2 bos): a stand-in for plumbing checks with random models."""

  pad_id, eos_id, bos_id = 0, 1, 2

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    return ([self.bos_id] if add_bos else []) + [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", errors="replace")


def load_tokenizer_for_eval(source: str):
  """The tokenizer named by --tokenizer: 'bytes' (ByteTokenizer) or a `grow_jax.tokenizer` source."""
  if source == "bytes":
    return ByteTokenizer()
  try:
    from grow_jax.model.tokenizer import load_tokenizer
  except ImportError as e:
    raise RuntimeError(f"--tokenizer={source!r} needs grow_jax.tokenizer ({e})") from e
  return load_tokenizer(source)


# ---- task registry -----------------------------------------------------------------------------------
_TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str, builder: TaskBuilder):
  """Make `name` available to --tasks; `builder(limit)` returns its EvalTask."""
  _TASKS[name] = builder


_CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
             ("Canada", "Ottawa"), ("Spain", "Madrid"), ("Kenya", "Nairobi"), ("Peru", "Lima"))
_SMOKE_TEXTS = (
    "The river runs through the old town, past the market and the church, before it reaches the sea.",
    "Water boils at one hundred degrees Celsius at sea level, and at lower temperatures on high mountains.",
    "She opened the letter slowly, read it twice, and then put it back in the drawer without a word.",
    "The committee will meet again next week to discuss the budget for the coming year.",
)


def _smoke_capitals(limit: int | None) -> EvalTask:
  names = [city for _, city in _CAPITALS]
  examples = []
  for i, (country, city) in enumerate(_CAPITALS[:limit]):
    choices = [city] + [names[(i + k) % len(names)] for k in (1, 3, 5)]
    examples.append(MultipleChoice(f"The capital of {country} is", choices, 0))
  return EvalTask("smoke_capitals", "multiple_choice", examples)


def _register_builtin_tasks():
  """Tiny sanity tasks (not benchmarks): they show the plumbing works and the model is sane."""
  register_task("smoke_capitals", _smoke_capitals)
  register_task("smoke_ppl", lambda limit: EvalTask("smoke_ppl", "perplexity", list(_SMOKE_TEXTS[:limit])))
  register_task("smoke_kl", lambda limit: EvalTask("smoke_kl", "kl", list(_SMOKE_TEXTS[:limit])))


def _register_data_tasks():
  """Every `grow_jax.data` task, as 'name' (its validation split, else test) or 'name:split'; scored as
  grow_jax.task_eval says (several evaluations per task where its metrics ask for them)."""
  from grow_jax import data
  from grow_jax.evaluation import tasks as task_eval
  for name in data.list_tasks():
    def builder(limit, name=name, split=None):
      if split is None:
        splits = data.get_task(name).splits
        split = "validation" if "validation" in splits else "test" if "test" in splits else splits[0]
      return task_eval.eval_tasks(name, split=split, limit=limit)
    register_task(name, builder)


def known_tasks() -> dict[str, TaskBuilder]:
  if not _TASKS:
    _register_builtin_tasks()
    _register_data_tasks()
  return dict(_TASKS)


def build_tasks(names: Sequence[str], limit: int | None = None) -> list[EvalTask]:
  """EvalTasks for task names; an unknown name is an error that lists the known ones."""
  registry = known_tasks()
  unknown = [n for n in names if n.partition(":")[0] not in registry]
  if unknown:
    raise ValueError(f"unknown task(s) {unknown}; known tasks: {sorted(registry)} (data tasks also as 'task:split')")
  if not names:
    raise ValueError(f"no tasks given; known tasks: {sorted(registry)}")
  tasks = []
  for entry in names:
    name, _, split = entry.partition(":")
    built = registry[name](limit, split=split) if split else registry[name](limit)
    tasks.extend(built if isinstance(built, list) else [built])
  return tasks


# ---- the run -----------------------------------------------------------------------------------------
def run(checkpoint: str, tasks: Sequence[str], *, out: str | None = None, tokenizer: str | None = None,
        base: str | None = None, limit: int | None = None, **evaluator_kwargs: Any) -> dict[str, dict[str, float]]:
  """Load the model, build the tasks, evaluate, print a table and write JSON (if `out`)."""
  eval_tasks = build_tasks(list(tasks), limit)       # fail on bad task names before loading anything
  needs_base = [t.name for t in eval_tasks if t.kind == "kl"]
  if needs_base and not base:
    raise ValueError(f"task(s) {needs_base} compute KL(base ‖ model) and need --base (e.g. --base=gemma3-270m)")
  if tokenizer is None:
    if os.path.isdir(checkpoint) or checkpoint.startswith("random:"):
      raise ValueError(f"--checkpoint={checkpoint!r} names no tokenizer: pass --tokenizer")
    tokenizer = checkpoint
  config, params = load_for_eval(checkpoint)
  tok = load_tokenizer_for_eval(tokenizer)
  base_model = None
  if needs_base:
    base_model = (config, params) if base == checkpoint else load_for_eval(base)
  evaluator = Evaluator(tok, eval_tasks, base=base_model, base_id=base if base and not os.path.isdir(base)
                        and not base.startswith("random:") else None, **evaluator_kwargs)
  results = evaluator(config, params)
  print(format_table(results))
  if out:
    write_results(results, out)
    logging.info("wrote %s", out)
  return results


def define_flags():
  global _FLAGS_DEFINED
  if _FLAGS_DEFINED:
    return
  _FLAGS_DEFINED = True
  flags.DEFINE_string("checkpoint", None, "Trainer workdir, checkpoint source (e.g. gemma3-270m) or random:<preset>.")
  flags.DEFINE_list("tasks", [], "Comma-separated task names.")
  flags.DEFINE_string("out", None, "Write results JSON here.")
  flags.DEFINE_string("tokenizer", None, "Tokenizer source (default: --checkpoint when it is a source), or 'bytes'.")
  flags.DEFINE_string("base", None, "Base model for KL tasks (a source or workdir).")
  flags.DEFINE_integer("limit", None, "At most this many examples per task.")
  flags.DEFINE_integer("batch_size", 8, "Sequences per batch.")
  flags.DEFINE_integer("max_len", 512, "Longest scored sequence; longer inputs lose tokens on the left.")
  flags.DEFINE_string("cache_dir", None, "Directory for the KL base cache (default: memory only).")
  flags.mark_flag_as_required("checkpoint")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    build_tasks(f.tasks)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  run(f.checkpoint, f.tasks, out=f.out, tokenizer=f.tokenizer, base=f.base, limit=f.limit,
      batch_size=f.batch_size, max_len=f.max_len, cache_dir=f.cache_dir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
