"""One registry of named evaluations, shared by the trainer (`config.eval.tasks`) and `python -m grow_jax.evaluate`.

An entry is `name` or `name:split`. A name is either registered here (`@register(name)` on a factory
`(ctx, split) -> eval_fn`) or a `grow_jax.data` task, scored as `evaluation/tasks.py` says (translation:
BLEU/chrF by greedy decoding; multiple choice: acc / acc_norm; plain text: perplexity and KL(base ‖ model)).
An `eval_fn(params) -> {metric: value}` takes the params `model.forward` takes (LoRA merged).

    ctx = EvalContext(model_config, tokenizer=tok, limit=100, base_model=lambda: load_checkpoint("gemma3-270m"))
    fns = build_all(["capitals:test", "stdlib_text"], ctx)          # {entry name: eval_fn}
    results = {name: fn(params) for name, fn in fns.items()}

With `EvalContext(items=True)` an eval_fn returns `items.Scored(metrics, per-item records)` instead (the same
metrics; an evaluation without items, such as heldout_loss, gives an empty list).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from grow_jax.errors import ConfigError, DataError
from grow_jax.evaluation import tasks as task_eval
from grow_jax.evaluation.evaluator import KINDS, EvalTask, Evaluator
from grow_jax.evaluation.items import Scored
from grow_jax.model.config import ModelConfig
from grow_jax.registry import Registry
from grow_jax.types import Params

Metrics = dict[str, float]
EvalFn = Callable[[Params], Metrics]


@dataclasses.dataclass
class EvalContext:
  """What an evaluation factory may use. The trainer fills the trainer-only fields (heldout_batches, mesh; the
  KL base reference lives on `mesh` when it is given)."""

  model_config: ModelConfig
  tokenizer: Any = None
  split: str | None = None          # default split of a data task (None: validation if it has one, else test)
  limit: int | None = None          # at most this many examples per task (None: all)
  batch_size: int = 8
  max_len: int = 512
  max_new_tokens: int = task_eval.DEFAULT_MAX_NEW_TOKENS
  cache_dir: str | None = None      # where the KL base model's hidden states are cached
  base_model: Callable[[], tuple[ModelConfig, Params]] | None = None   # the KL reference, loaded when needed
  base_id: str | None = None        # a stable name of the base weights (KL cache key); None: hash them
  heldout_batches: Callable[[str, int, int | None], Iterable] | None = None   # (split, batch, n) -> batches
  mesh: Any = None
  loss_chunk: int = 0
  items: bool = False               # eval_fns return Scored(metrics, per-item records) instead of metrics


Factory = Callable[[EvalContext, "str | None"], EvalFn]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """A named evaluation: its factory `(ctx, split) -> eval_fn` and what it needs from the `EvalContext`.

  needs_tokenizer: it reads text (the trainer loads a tokenizer for it; a synthetic run without one needs none).
  needs_base: it compares with the base model (KL): `ctx.base_model` must be given (the CLI's --base).
  needs_trainer: it scores the trainer's own held-out batches (`ctx.heldout_batches`, `ctx.mesh`).
  """

  name: str
  factory: Factory
  needs_tokenizer: bool = True
  needs_base: bool = False
  needs_trainer: bool = False

  def check(self, ctx: EvalContext) -> None:
    """One-line ConfigError naming what `ctx` lacks of what this evaluation needs."""
    if self.needs_base and ctx.base_model is None:
      raise ConfigError(f"evaluation {self.name!r} computes KL(base ‖ model) and needs a base model (--base)")
    if self.needs_trainer and (ctx.heldout_batches is None or ctx.mesh is None):
      raise ConfigError(f"evaluation {self.name!r} needs the trainer's data pipeline (it scores the training "
                        "task's held-out split); use it in config.eval.tasks")
    if self.needs_tokenizer and ctx.tokenizer is None:
      raise ConfigError(f"evaluation {self.name!r} reads text and needs a tokenizer (--tokenizer)")


# Named evaluations; the modules of grow_jax.evaluation are imported on the first lookup (grow_jax/registry.py).
EVALUATIONS: Registry[Evaluation] = Registry("evaluation", package="grow_jax.evaluation", error=ConfigError,
                                             origin=lambda e: e.factory)


def register(name: str, *, needs_tokenizer: bool = True, needs_base: bool = False, needs_trainer: bool = False,
             replace: bool = False) -> Callable[[Factory], Factory]:
  """Decorator: `@register('my_eval')` on a factory `(ctx, split) -> eval_fn(params) -> metrics`, declaring
  what it needs (see `Evaluation`). A name already registered is a ConfigError unless `replace=True`; a
  registered name is looked up before the data tasks'."""
  def wrap(factory: Factory) -> Factory:
    EVALUATIONS.add(name, Evaluation(name, factory, needs_tokenizer, needs_base, needs_trainer), replace=replace)
    return factory
  return wrap


def _data_tasks() -> list[str]:
  """The data tasks an evaluation can score: those read as text records (not those that make token batches)."""
  from grow_jax.data import tasks
  return [n for n in tasks.list_tasks() if tasks.build_task(n).needs_tokenizer]


def names() -> list[str]:
  """Registered evaluations, then the data tasks."""
  return sorted(EVALUATIONS.names()) + _data_tasks()


def is_known(entry: str) -> bool:
  name = entry.partition(":")[0]
  return name in EVALUATIONS or name in _data_tasks()


def check(entries: Sequence[str], field: str = "eval.tasks") -> None:
  """Raises ConfigError naming the unknown entries and listing the known names."""
  unknown = [e for e in entries if not is_known(e)]
  if unknown:
    raise ConfigError(f"{field}={list(entries)}: unknown {unknown}; expected names from {sorted(EVALUATIONS.names())} "
                      f"or grow_jax.data tasks {_data_tasks()} (optionally 'task:split')")


def evaluation(entry: str) -> Evaluation:
  """What entry 'name' or 'name:split' is: a registered `Evaluation`, or a data task's (scored as
  evaluation/tasks.py says: it needs a tokenizer, and a base model when the task's metrics include 'kl')."""
  name = entry.partition(":")[0]
  if name in EVALUATIONS:
    return EVALUATIONS.get(name)
  check([entry], field="evaluation")
  from grow_jax.data import tasks
  return Evaluation(name, lambda ctx, split: _data_task_fn(name, split, ctx),
                    needs_base="kl" in tasks.build_task(name).metrics)


def needs_tokenizer(entries: Sequence[str]) -> bool:
  """Whether any of `entries` reads text."""
  return any(evaluation(e).needs_tokenizer for e in entries)


def build(entry: str, ctx: EvalContext) -> EvalFn:
  """The eval_fn of one entry ('name' or 'name:split'), after checking that `ctx` has what it needs."""
  name, _, split = entry.partition(":")
  spec = evaluation(entry)
  spec.check(ctx)
  fn = spec.factory(ctx, split or None)
  if not ctx.items or name not in EVALUATIONS:
    return fn
  return lambda params: _as_scored(fn(params))


def _as_scored(result) -> Scored:
  """A registered evaluation's result with items: as it is when it gave them, else its metrics and no items."""
  return result if isinstance(result, Scored) else Scored(result, [])


def build_all(entries: Sequence[str], ctx: EvalContext) -> dict[str, EvalFn]:
  """{name: eval_fn} for entries (named without their split, as results and logs show them)."""
  check(entries)
  return {entry.partition(":")[0]: build(entry, ctx) for entry in entries}


# ---- data tasks ----------------------------------------------------------------------------------------
def _default_split(name: str) -> str:
  from grow_jax import data
  splits = data.get_task(name).splits
  return "validation" if "validation" in splits else "test" if "test" in splits else splits[0]


def merged_metrics(results: Mapping[str, Metrics], tasks: Sequence[EvalTask]) -> Metrics:
  """One flat dict for a data task's evaluations (e.g. perplexity and KL of one corpus); a metric name that
  two evaluations share keeps its first value and the later one is prefixed by its kind ('kl/num_tokens')."""
  out: Metrics = {}
  for task in tasks:
    for key, value in results[task.name].items():
      out[key if key not in out else f"{task.kind}/{key}"] = value
  return out


def _data_task_fn(name: str, split: str | None, ctx: EvalContext) -> EvalFn:
  split = split or ctx.split or _default_split(name)
  tasks = task_eval.eval_tasks(name, split=split, limit=ctx.limit, max_new_tokens=ctx.max_new_tokens)
  base = ctx.base_model() if any(KINDS[t.kind].needs_base for t in tasks) else None
  evaluator = Evaluator(ctx.tokenizer, tasks, base=base, base_id=ctx.base_id, batch_size=ctx.batch_size,
                        max_len=ctx.max_len, cache_dir=ctx.cache_dir, mesh=ctx.mesh)
  if not ctx.items:
    return lambda params: merged_metrics(evaluator(ctx.model_config, params), tasks)

  def scored(params) -> Scored:
    results = evaluator(ctx.model_config, params, items=True)
    return Scored(merged_metrics({t.name: results[t.name].metrics for t in tasks}, tasks),
                  [item for t in tasks for item in results[t.name].items])
  return scored


# ---- the trainer's held-out loss -----------------------------------------------------------------------
@register("heldout_loss", needs_tokenizer=False, needs_trainer=True)
def heldout_loss(ctx: EvalContext, split: str | None) -> EvalFn:
  """Mean target-token cross-entropy (and perplexity) on a held-out split of the training task (the trainer's
  data pipeline provides the batches: `ctx.heldout_batches`)."""
  import jax
  import numpy as np
  from grow_jax.train import sharding, step
  groups = sharding.data_parallel_size(ctx.mesh)
  compiled = {}

  def eval_fn(params):
    batches = [sharding.to_microbatches(b, 1) for b in ctx.heldout_batches(split, ctx.batch_size, ctx.limit)]
    capacity = step.target_capacity_for(batches, groups=max(groups // sharding.batch_blocks(ctx.mesh)[1], 1))
    if jax.process_count() > 1:      # one program on every process: the largest capacity any needs (0: dense)
      from jax.experimental import multihost_utils
      every = multihost_utils.process_allgather(np.asarray(capacity if capacity else 1 << 30))
      capacity = int(every.max()) if int(every.max()) != 1 << 30 else 0
    if capacity not in compiled:     # the output head only at target positions, as in training
      compiled[capacity] = jax.jit(step.make_eval_step(ctx.model_config, loss_chunk=ctx.loss_chunk,
                                                       target_capacity=capacity, groups=groups),
                                   out_shardings=sharding.replicated(ctx.mesh))
    total, count = 0.0, 0.0
    for micro in batches:
      s, n = compiled[capacity](params, sharding.global_batch(
          {k: v[0] for k, v in micro.items()}, ctx.mesh, 1))
      total, count = total + float(s), count + float(n)
    if count == 0:
      raise DataError(f"heldout_loss: split {split!r} gave no target tokens")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}

  return eval_fn


# ---- smoke tasks: tiny sanity checks of the plumbing (not benchmarks) ---------------------------------
_CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
             ("Canada", "Ottawa"), ("Spain", "Madrid"), ("Kenya", "Nairobi"), ("Peru", "Lima"))
_SMOKE_TEXTS = (
    "The river runs through the old town, past the market and the church, before it reaches the sea.",
    "Water boils at one hundred degrees Celsius at sea level, and at lower temperatures on high mountains.",
    "She opened the letter slowly, read it twice, and then put it back in the drawer without a word.",
    "The committee will meet again next week to discuss the budget for the coming year.",
)


def _smoke(task: EvalTask, ctx: EvalContext) -> EvalFn:
  base = ctx.base_model() if KINDS[task.kind].needs_base else None
  evaluator = Evaluator(ctx.tokenizer, [task], base=base, base_id=ctx.base_id, batch_size=ctx.batch_size,
                        max_len=ctx.max_len, cache_dir=ctx.cache_dir, mesh=ctx.mesh)
  return lambda params: evaluator(ctx.model_config, params, items=ctx.items)[task.name]


@register("smoke_capitals")
def smoke_capitals(ctx: EvalContext, split: str | None) -> EvalFn:
  from grow_jax.data import Example
  names = [city for _, city in _CAPITALS]
  examples = [Example(id=country, prompt=f"The capital of {country} is", target=city,
                      choices=tuple([city] + [names[(i + k) % len(names)] for k in (1, 3, 5)]), gold=0)
              for i, (country, city) in enumerate(_CAPITALS[:ctx.limit])]
  return _smoke(EvalTask("smoke_capitals", "multiple_choice", examples), ctx)


@register("smoke_ppl")
def smoke_ppl(ctx: EvalContext, split: str | None) -> EvalFn:
  return _smoke(EvalTask("smoke_ppl", "perplexity", list(_SMOKE_TEXTS[:ctx.limit])), ctx)


@register("smoke_kl", needs_base=True)
def smoke_kl(ctx: EvalContext, split: str | None) -> EvalFn:
  return _smoke(EvalTask("smoke_kl", "kl", list(_SMOKE_TEXTS[:ctx.limit])), ctx)
