"""Which evaluator scores which `grow_jax.data` task: data tasks -> `evaluation.EvalTask`s.

A task's `metrics` decide its evaluations:
  partial-scoring tasks (WinoGrande)          -> 'partial'          acc
  multiple-choice tasks (capitals, SciQ, ...) -> 'multiple_choice'  acc, acc_norm
  'bleu' / 'chrf' (translation)               -> 'generation'       greedy decode, sacrebleu BLEU / chrF
  tasks with `Task.generation` (generative    -> 'generation'       the task's own options (metrics,
    probes: capitals_gen, capitals_lettered)                        max_new_tokens, stop); `max_new_tokens` unused
  'perplexity' (plain-text corpora)           -> 'perplexity'
  'kl' (plain-text corpora, with a base model) -> 'kl'              KL(base ‖ model) and perplexity, one pass

The trainer (`config.eval.tasks`) and `python -m grow_jax.evaluate --tasks=...` both build their
evaluations here, so a task is scored the same way everywhere.
"""

from __future__ import annotations

from typing import Any, Mapping

from grow_jax.evaluation.evaluator import EvalTask
from grow_jax.errors import TaskError

# Generation length for translation-style tasks: the offline en->fr targets average ~32 tokens.
DEFAULT_MAX_NEW_TOKENS = 48


def eval_tasks(name: str, *, split: str, limit: int | None = None, with_kl: bool = True,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, task_options: Mapping[str, Any] | None = None
               ) -> list[EvalTask]:
  """The evaluations of data task `name` on `split` (at most `limit` examples)."""
  from grow_jax import data
  task = data.get_task(name, **dict(task_options or {}))
  examples = task.examples(split, limit=limit)
  if not examples:
    raise TaskError(f"task {name!r} split {split!r} has no examples to evaluate")
  metrics = set(task.metrics)
  out: list[EvalTask] = []
  if task.partial is not None:
    out.append(EvalTask(name, "partial", examples))
  elif task.is_multiple_choice:
    out.append(EvalTask(name, "multiple_choice", examples))
  generation_metrics = tuple(m for m in ("bleu", "chrf") if m in metrics)
  if task.generation is not None:
    out.append(EvalTask(name, "generation", examples, dict(task.generation)))
  elif generation_metrics:
    out.append(EvalTask(name, "generation", examples,
                        {"metrics": generation_metrics, "max_new_tokens": max_new_tokens}))
  texts, ids = [e.text for e in examples], [e.id for e in examples]
  if "kl" in metrics and with_kl:                 # KL(base ‖ model) and perplexity from one forward pass
    out.append(EvalTask(name, "kl", texts, ids=ids))
  elif "perplexity" in metrics:
    out.append(EvalTask(name, "perplexity", texts, ids=ids))
  if not out:
    raise TaskError(f"task {name!r} has metrics {sorted(metrics)}, none of which grow_jax.evaluation "
                         "scores")
  return out
