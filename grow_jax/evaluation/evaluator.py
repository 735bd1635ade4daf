"""The evaluator: named evaluation tasks of a few kinds, prepared once and scored for any params.

An `EvalTask` is a name, a kind (multiple_choice, partial, generation, perplexity, kl), its examples
(`grow_jax.data.Example`s; plain strings for perplexity / kl) and kind-specific options. Each kind is a `Kind`
in `KINDS`: the options it takes, whether it needs the base model, how it prepares a task (once) and scores it. `Evaluator` tokenizes
each task once and keeps the KL base reference, so scoring a model every few hundred training steps pays only
for the model's forward passes. Asked for items (`items=True`), an evaluation also returns one record per
example (`items.Scored`; fields by kind in grow_jax/evaluation/items.py); its metrics are the same either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Mapping, Sequence

from grow_jax import files, tables
from grow_jax.evaluation import corpus, generative, items as item_records, scoring
from grow_jax.evaluation.items import Scored
from grow_jax.evaluation.scoring import Metrics, Params
from grow_jax.model.config import ModelConfig

_log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class EvalTask:
  """A named evaluation: its kind (one of TASK_KINDS), examples, and kind-specific options.

  examples by kind: multiple_choice -> `Example`s with prompt, choices, gold; partial -> with contexts,
  continuation, gold; generation -> with prompt and references; perplexity, kl -> strings.
  options: multiple_choice {target_delimiter, length_unit}; partial {target_delimiter};
  generation {metrics, ignore_case, max_new_tokens, stop, stop_ids}.
  ids: the examples' stable ids for per-item records (default: each example's `id`, else its index).
  """
  name: str
  kind: str
  examples: Sequence[Any]
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  ids: Sequence[str] | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"task {self.name!r}: kind={self.kind!r}, expected one of {list(TASK_KINDS)}")
    known = KINDS[self.kind].options
    unknown = sorted(set(self.options) - known)
    if unknown:
      raise ValueError(f"task {self.name!r} ({self.kind}): unknown option(s) {unknown}; known: {sorted(known)}")
    if not self.examples:
      raise ValueError(f"task {self.name!r} has no examples")
    if self.ids is not None and len(self.ids) != len(self.examples):
      raise ValueError(f"task {self.name!r}: {len(self.ids)} ids for {len(self.examples)} examples")


class Evaluator:
  """Scores models on a fixed list of tasks; build once, call with each (config, params) to score.

  Tokenization and the KL base reference are prepared on first use and kept, so calling it every few
  hundred training steps pays only for the model's forward passes.

  Args:
    tokenizer: duck-typed tokenizer (encode(text, add_bos=False), decode, bos_id, eos_id, pad_id).
    tasks: EvalTasks (unique names).
    base: (config, params) of the base model, needed by 'kl' tasks.
    base_id: a stable name of the base weights for the KL disk cache key (default: hash the params).
    batch_size, max_len, bucket, logits_chunk: batching (see the module docstring).
    cache_dir: where the KL base hidden states are stored (None: memory only).
    mesh: the device mesh the KL base reference lives on, sharded (the trainer's; None: one device).
  """

  def __init__(self, tokenizer, tasks: Sequence[EvalTask], *, base: tuple[ModelConfig, Params] | None = None,
               base_id: str | None = None, batch_size: int = 8, max_len: int = 512, bucket: int = 32,
               logits_chunk: int = 64, cache_dir: str | None = None, mesh=None):
    names = [t.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
      raise ValueError(f"task names must be unique; repeated: {repeated}")
    if base is None and any(KINDS[t.kind].needs_base for t in tasks):
      raise ValueError(f"task(s) {[t.name for t in tasks if KINDS[t.kind].needs_base]} compute KL(base ‖ model) "
                       "and need base=(base_config, base_params)")
    self.tokenizer, self.tasks, self.base, self.base_id = tokenizer, list(tasks), base, base_id
    self.batch = dict(batch_size=batch_size, bucket=bucket, logits_chunk=logits_chunk)
    self.max_len, self.cache_dir, self.mesh = max_len, cache_dir, mesh
    self._prepared: dict[str, Any] = {}

  def _prepare(self, task: EvalTask):
    """Token-level inputs of a task (params-independent), computed once by its kind."""
    if task.name not in self._prepared:
      self._prepared[task.name] = KINDS[task.kind].prepare(self, task)
    return self._prepared[task.name]

  def evaluate_task(self, config: ModelConfig, params: Params, task: EvalTask, *,
                    items: bool = False) -> Metrics | Scored:
    """The task's metrics; with `items`, `Scored(metrics, per-item records)` (the same metrics)."""
    prepared = self._prepare(task)
    ids = item_records.item_ids(task.examples, task.ids) if items else None
    metrics, records = KINDS[task.kind].score(self, config, params, task, prepared, ids)
    if not items:
      return metrics
    return Scored(metrics, [{"kind": task.kind, **record} for record in records])

  def eval_fn(self, config: ModelConfig, task: str | None = None) -> Callable[[Params], Metrics]:
    """`params -> metrics` (the trainer's evaluator shape): one task's metrics, or with no task name
    every task's as {"<task>/<metric>": value}."""
    if task is not None:
      [match] = [t for t in self.tasks if t.name == task] or [None]
      if match is None:
        raise ValueError(f"no task {task!r}; tasks: {[t.name for t in self.tasks]}")
      return lambda params: self.evaluate_task(config, params, match)
    return lambda params: {f"{name}/{metric}": value for name, metrics in self(config, params).items()
                           for metric, value in metrics.items()}

  def __call__(self, config: ModelConfig, params: Params, *, items: bool = False) -> dict[str, Metrics | Scored]:
    """{task name: metrics}, or with `items` {task name: Scored(metrics, per-item records)}."""
    results = {}
    for task in self.tasks:
      start = time.time()
      results[task.name] = self.evaluate_task(config, params, task, items=items)
      _log.info("eval %s: %s (%.1f s)", task.name, results[task.name].metrics if items else results[task.name],
                time.time() - start)
    return results


# ---- the kinds: what each needs, how it prepares (once) and scores (per params) -------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
  """One kind of evaluation.

  options: the `EvalTask.options` it takes. needs_base: it compares with the base model (`Evaluator(base=...)`).
  prepare(evaluator, task) -> the task's params-independent inputs (tokenized once).
  score(evaluator, config, params, task, prepared, ids) -> (metrics, per-item records when `ids` is given, else
    None); the metrics are the same either way.
  """

  name: str
  options: frozenset[str]
  prepare: Callable[["Evaluator", EvalTask], Any]
  score: Callable[..., tuple[Metrics, list | None]]
  needs_base: bool = False


def _request_rows(requests_of):
  def prepare(ev: Evaluator, task: EvalTask):
    requests = requests_of(task.examples, task.options.get("target_delimiter", " "))
    return [scoring.request_row(*scoring.encode_pair(ev.tokenizer, c, x), ev.max_len) for c, x in requests]
  return prepare


def _score_multiple_choice(ev: Evaluator, config, params, task: EvalTask, prepared, ids):
  total, _, _ = scoring.score_rows(config, params, prepared, **ev.batch)
  unit = task.options.get("length_unit", "chars")
  return (scoring.multiple_choice_metrics(task.examples, total, unit),
          None if ids is None else scoring.multiple_choice_items(task.examples, total, unit, ids))


def _score_partial(ev: Evaluator, config, params, task: EvalTask, prepared, ids):
  total, _, _ = scoring.score_rows(config, params, prepared, **ev.batch)
  return (scoring.partial_scoring_metrics(task.examples, total),
          None if ids is None else scoring.partial_scoring_items(task.examples, total, ids))


def _score_generation(ev: Evaluator, config, params, task: EvalTask, prepared, ids):
  opts = task.options
  names, ignore_case = tuple(opts.get("metrics", ("exact_match",))), opts.get("ignore_case", False)
  generative.check_metrics(names)
  gen_opts = {k: v for k, v in opts.items() if k not in ("metrics", "ignore_case")}
  prompts = [scoring.example_field(ex, "prompt", i, "generation") for i, ex in enumerate(task.examples)]
  references = generative.references_of(task.examples)
  predictions = generative.generate_texts(config, params, ev.tokenizer, prompts,
                                          batch_size=ev.batch["batch_size"], max_len=ev.max_len, **gen_opts)
  metrics = generative.score_predictions(predictions, references, metrics=names, ignore_case=ignore_case)
  return metrics, None if ids is None else generative.prediction_items(ids, predictions, references, metrics=names,
                                                                       ignore_case=ignore_case)


def _score_perplexity(ev: Evaluator, config, params, task: EvalTask, prepared, ids):
  rows, num_bytes, row_docs = prepared
  total, count, _ = scoring.score_rows(config, params, rows, **ev.batch)
  return (corpus.perplexity_metrics(total, count, num_bytes),
          None if ids is None else corpus.document_items(ids, task.examples, row_docs, {"nll": -total, "tokens": count}))


def _prepare_kl(ev: Evaluator, task: EvalTask):
  base_config, base_params = ev.base
  return corpus.BaseReference.from_texts(base_config, base_params, ev.tokenizer, task.examples, max_len=ev.max_len,
                                         cache_dir=ev.cache_dir, base_id=ev.base_id, mesh=ev.mesh, **ev.batch)


def _score_kl(ev: Evaluator, config, params, task: EvalTask, prepared, ids):
  if ids is None:
    return corpus.kl_divergence(config, params, prepared), None
  metrics, per_row = corpus.kl_scores(config, params, prepared)
  return metrics, corpus.document_items(ids, task.examples, prepared.row_docs, per_row)


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("multiple_choice", frozenset({"target_delimiter", "length_unit"}),
         _request_rows(scoring.multiple_choice_requests), _score_multiple_choice),
    Kind("partial", frozenset({"target_delimiter"}), _request_rows(scoring.partial_scoring_requests),
         _score_partial),
    Kind("generation", frozenset({"metrics", "ignore_case", "max_new_tokens", "stop", "stop_ids"}),
         lambda ev, task: None, _score_generation),
    Kind("perplexity", frozenset(), lambda ev, task: corpus.document_rows(ev.tokenizer, task.examples, ev.max_len),
         _score_perplexity),
    Kind("kl", frozenset(), _prepare_kl, _score_kl, needs_base=True),
)}
TASK_KINDS = tuple(KINDS)


def write_results(results: Mapping[str, Mapping[str, float]], path: str):
  """Write results as JSON, atomically."""
  files.write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A plain-text table: one line per (task, metric)."""
  return tables.text(("task", "metric", "value"),
                     [(task, name, value) for task, metrics in results.items() for name, value in metrics.items()])


def evaluate_all(config: ModelConfig, params: Params, tokenizer, tasks: Sequence[EvalTask], *,
                 out: str | None = None, **kwargs) -> dict[str, Metrics]:
  """Score one model on `tasks`; write {task: {metric: value}} to `out` as JSON if given.

  kwargs go to `Evaluator` (base, base_id, batch_size, max_len, bucket, logits_chunk, cache_dir, mesh).
  """
  results = Evaluator(tokenizer, tasks, **kwargs)(config, params)
  if out:
    write_results(results, out)
  return results
