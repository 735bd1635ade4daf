"""Tasks: a named data source plus the templates that turn its records into `Example`s; and the registry.

A `Task` is pure description. `task.examples(split)` reads the raw records of a split from `task.source` and
applies the templates to each:

    prompt(record)  -> str         text the model conditions on (may be empty: plain-text corpora)
    target(record)  -> str         text the model is trained to produce / scored on (never empty)
    choices(record) -> [str, ...]  multiple-choice tasks: the candidate continuations of `prompt`
    gold(record)    -> int         multiple-choice tasks: index of the right one in `choices`
    partial(record) -> ([context per choice], continuation)
                                   "partial scoring" (lm-eval-harness WinoGrande): each choice is substituted
                                   into its own context and the model scores one shared continuation
    aliases(record) -> [str, ...]  other answers that generative scoring accepts besides the target
                                   ("Washington" for "Washington D.C."); `Example.references` lists them

Text conventions (lm-evaluation-harness's, shared with grow_jax.evaluation; tests check them):
  * The training text is `prompt + target_delimiter + target`; the delimiter is " " for prompted tasks and ""
    for plain-text corpora. Targets, choices and continuations carry no leading space ("Paris").
  * A multiple-choice task has `target == choices[gold]`, so generative exact match and log-likelihood
    scoring judge the same answer.
  * `Example` is the one example type: tasks make them, the batching and every evaluator read them;
    `references` = (target, *aliases) for generation metrics.
  * A task whose answers are scored by generation with fixed decoding settings (the generative probes) carries
    them in `Task.generation` (options of grow_jax.evaluation's 'generation' evaluator); grow_jax.task_eval uses
    them as they are.

A record that a template cannot handle (missing field, wrong type, empty target, gold out of range) raises
`MalformedRecordError` naming the task, split, record index and id: it never becomes an empty example.

Registry (data/registry.py, re-exported here): task modules register factories `(**options) -> Task` with
`@register_task(name)` (one grow_jax.registry rule: a duplicate is an error unless `replace=True`; the modules of
grow_jax.data are discovered on the first lookup); `get_task(name, **options)` builds one. Options are the factory's keyword arguments (e.g. `data_files=` to
read a paper task from local JSON files, `limit=` to read only the first records of a hub dataset, `data_dir=`
for the offline tasks' cache); `check_options` refuses one a task does not take, naming the ones it does.
A training config sets them as `config.data.options` (the keys of `CONFIG_OPTIONS`).

Where records come from: `build_task(name, **options)` is the task reading its own source (the hub, the
offline cache). `get_task` is what the rest of grow_jax calls: the same, unless a staged copy is in use
(`python -m grow_jax.data.stage`; `$GROW_JAX_STAGED_DATA`, or the trainer's `config.data.staged` through
`use_run_data`), in which case the records come from that copy (`open_task`) and nothing touches the network;
inside a training run the config's options for its own task fill in the options not given, so its evaluations
read the same data as its training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from grow_jax.data import staged as staged_copy
from grow_jax.data.registry import (CONFIG_OPTIONS, TASKS, build_task, check_options, full_options,  # noqa: F401
                                     list_tasks, register_task, task_options)
from grow_jax.data.staged import ENV_STAGED
from grow_jax.errors import TaskError

Record = Mapping[str, Any]

# Metric names the evaluators understand. A task lists the ones that make sense for it.
KNOWN_METRICS = ("acc", "acc_norm", "exact_match", "exact_match_norm", "bleu", "chrf", "perplexity", "kl")

_MALFORMED_POLICIES = ("raise", "skip")


class MalformedRecordError(TaskError):
  """A record that cannot become an `Example`; the message names task, split, record index/id and field."""


class FieldError(ValueError):
  """Raised by templates for a bad field; `Task.example` rewraps it with the task/record context."""


def field(record: Record, name: str, *, allow_empty: bool = False) -> str:
  """`record[name]` as a string; raises `FieldError` naming the field if missing, not a string, or empty."""
  if name not in record:
    raise FieldError(f"missing field {name!r} (fields present: {sorted(record)})")
  value = record[name]
  if value is None:  # what a missing field becomes once `datasets` unifies the records' schema
    raise FieldError(f"missing field {name!r} (null)")
  if not isinstance(value, str):
    raise FieldError(f"field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
  if not allow_empty and not value.strip():
    raise FieldError(f"field {name!r} is empty")
  return value


@dataclasses.dataclass(frozen=True)
class Example:
  """One model-ready example; see the module docstring for the text conventions."""

  id: str
  prompt: str
  target: str
  choices: tuple[str, ...] | None = None
  gold: int | None = None
  contexts: tuple[str, ...] | None = None   # partial scoring: one context per choice
  continuation: str | None = None           # partial scoring: shared continuation
  target_delimiter: str = " "               # between prompt (or context) and target / choice / continuation
  aliases: tuple[str, ...] | None = None    # other accepted answers for generative scoring

  @property
  def is_multiple_choice(self) -> bool:
    return self.choices is not None

  @property
  def references(self) -> tuple[str, ...]:
    """The reference answers for generation metrics: (target, *aliases)."""
    return (self.target, *(self.aliases or ()))

  @property
  def text(self) -> str:
    """The full training text: prompt + target_delimiter + target."""
    return self.prompt + self.target_delimiter + self.target

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able dict (tuples as lists; unset optional fields dropped)."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
    return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Task:
  """A named data source and the templates that make `Example`s of its records (see module docstring).

  Attributes:
    name: registry name, used in every error message.
    splits: the splits `source` can serve.
    source: split -> iterable of raw records (dicts).
    prompt, target, choices, gold, partial, aliases: templates (record -> value); raise `FieldError`/
      `KeyError`/`ValueError` on a bad record.
    metrics: metric names from `KNOWN_METRICS`, in order of importance.
    record_id: (record, index) -> id string; default "<split>-<index>" (or the record's "id" field).
    target_delimiter: joins prompt and target (" "; "" for plain-text corpora).
    description: one line for listings and logs.
    generation: for tasks scored by generation with their own decoding settings: the options of
      grow_jax.evaluation's 'generation' evaluator ({"metrics": (...), "max_new_tokens": n, "stop": (...)});
      its metrics must be among `metrics`.
    batches: for a task that makes token batches itself instead of text records (the synthetic task):
      `batches(split, *, batch_size, seq_len, model_config, seed, packing, num_examples, process_index,
      process_count)` -> an iterator of batches with `state()` / `restore()` (the `BatchIterator` interface).
      Such a task needs no tokenizer, has no records to stage, and no evaluation scores it.
  """

  name: str
  splits: tuple[str, ...]
  source: Callable[[str], Iterable[Record]]
  prompt: Callable[[Record], str]
  target: Callable[[Record], str]
  metrics: tuple[str, ...]
  choices: Callable[[Record], Sequence[str]] | None = None
  gold: Callable[[Record], int] | None = None
  partial: Callable[[Record], tuple[Sequence[str], str]] | None = None
  record_id: Callable[[Record, int], str] | None = None
  target_delimiter: str = " "
  description: str = ""
  aliases: Callable[[Record], Sequence[str]] | None = None
  generation: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)
  batches: Callable[..., Iterator[Mapping[str, Any]]] | None = None

  def __post_init__(self):
    if not self.splits:
      raise TaskError(f"task {self.name!r} declares no splits")
    unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
    if unknown:
      raise TaskError(f"task {self.name!r}: unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")
    if (self.choices is None) != (self.gold is None):
      raise TaskError(f"task {self.name!r}: `choices` and `gold` must be given together")
    if self.partial is not None and self.choices is None:
      raise TaskError(f"task {self.name!r}: `partial` scoring needs `choices` and `gold`")
    if self.generation is not None:
      scored = tuple(self.generation.get("metrics", ()))
      if not scored or not set(scored) <= set(self.metrics):
        raise TaskError(f"task {self.name!r}: generation metrics {list(scored)} must be a non-empty subset of "
                        f"the task's metrics {list(self.metrics)}")

  @property
  def is_multiple_choice(self) -> bool:
    return self.choices is not None

  @property
  def needs_tokenizer(self) -> bool:
    """Whether the trainer needs a tokenizer for this task: it reads text records (not token `batches`)."""
    return self.batches is None

  def check_split(self, split: str) -> None:
    """Raises `TaskError` naming the task and its available splits if `split` is not one of them."""
    if split not in self.splits:
      raise TaskError(f"task {self.name!r} has no split {split!r}; available splits: {list(self.splits)}")

  def records(self, split: str, *, limit: int | None = None) -> Iterator[Record]:
    """The raw records of `split` (at most `limit`), as the source yields them."""
    self.check_split(split)
    records = iter(self.source(split))
    return itertools.islice(records, limit) if limit is not None else records

  def example(self, record: Record, index: int, split: str = "?") -> Example:
    """Applies the templates to one record; raises `MalformedRecordError` with full context on failure."""
    rid = self._record_id(record, index, split)
    try:
      return self._build(record, rid)
    except (FieldError, KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
      reason = f"missing field {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
      raise MalformedRecordError(
          f"task {self.name!r} split {split!r} record {index} (id {rid!r}): {reason}") from e

  def examples(self, split: str, *, limit: int | None = None, on_malformed: str = "raise") -> list[Example]:
    """The `Example`s of `split` (first `limit` records).

    on_malformed: "raise" (default) stops at the first bad record with `MalformedRecordError`; "skip" drops
      bad records and logs how many and the first reasons (for known-noisy hub data; never silent).
    """
    if on_malformed not in _MALFORMED_POLICIES:
      raise ValueError(f"on_malformed must be one of {_MALFORMED_POLICIES}, got {on_malformed!r}")
    out, skipped = [], []
    for i, record in enumerate(self.records(split, limit=limit)):
      try:
        out.append(self.example(record, i, split))
      except MalformedRecordError as e:
        if on_malformed == "raise":
          raise
        skipped.append(str(e))
    if skipped:
      logging.warning("task %r split %r: skipped %d malformed records of %d; first: %s",
                      self.name, split, len(skipped), len(skipped) + len(out), skipped[:3])
    return out

  # -- internals ------------------------------------------------------------------------------------------

  def _record_id(self, record: Record, index: int, split: str) -> str:
    try:
      if self.record_id is not None:
        return str(self.record_id(record, index))
      if isinstance(record, Mapping) and isinstance(record.get("id"), (str, int)) and record.get("id") != "":
        return str(record["id"])
    except Exception:  # an id is only for messages: never let it mask the real error
      pass
    return f"{split}-{index}"

  def _build(self, record: Record, rid: str) -> Example:
    if not isinstance(record, Mapping):
      raise FieldError(f"record must be a mapping of fields, got {type(record).__name__}")
    prompt = self.prompt(record)
    _check_text("prompt", prompt, allow_empty=True)
    choices = gold = contexts = continuation = aliases = None
    if self.choices is not None:   # checked before the target, which usually indexes the choices
      choices = tuple(self.choices(record))
      gold = self.gold(record)
      if len(choices) < 2:
        raise FieldError(f"needs at least 2 choices, got {len(choices)}")
      for j, c in enumerate(choices):
        self._check_answer(f"choice {j}", c)
      if len(set(choices)) != len(choices):
        raise FieldError(f"choices are not distinct: {list(choices)}")
      if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise FieldError(f"gold index must be an int in [0, {len(choices)}), got {gold!r}")
    target = self.target(record)
    self._check_answer("target", target)
    if choices is not None and target != choices[gold]:
      raise FieldError(f"target {target!r} must equal choices[gold] = {choices[gold]!r}")
    if self.partial is not None:
      ctxs, continuation = self.partial(record)
      contexts = tuple(ctxs)
      if len(contexts) != len(choices):
        raise FieldError(f"partial scoring needs one context per choice: {len(contexts)} != {len(choices)}")
      for j, c in enumerate(contexts):
        _check_text(f"context {j}", c, allow_empty=False)
      self._check_answer("continuation", continuation)
    if self.aliases is not None:
      aliases = tuple(self.aliases(record))
      for j, a in enumerate(aliases):
        self._check_answer(f"alias {j}", a)
    return Example(id=rid, prompt=prompt, target=target, choices=choices, gold=gold,
                   contexts=contexts, continuation=continuation, target_delimiter=self.target_delimiter,
                   aliases=aliases)

  def _check_answer(self, what: str, value: Any) -> None:
    """A target/choice/continuation: a non-empty string with no leading space when a delimiter supplies it."""
    _check_text(what, value, allow_empty=False)
    if self.target_delimiter and value[0].isspace():
      raise FieldError(f"{what} {value!r:.60} starts with whitespace; the target delimiter "
                       f"{self.target_delimiter!r} already separates it from the prompt")


def _check_text(what: str, value: Any, *, allow_empty: bool) -> None:
  if not isinstance(value, str):
    raise FieldError(f"{what} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise FieldError(f"{what} is empty")


_run_data: dict[str, Any] = {"staged": None, "options": {}}


def use_run_data(staged: str | None, options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
  """Sets this process's data view (the trainer calls it through `pipeline.use_config`): `staged`, a staged
  directory that every `get_task` then reads (None: `$GROW_JAX_STAGED_DATA`, if set), and per-task default
  options ({task: {option: value}}). Replaces the previous view; `use_run_data(None)` restores the default."""
  _run_data["staged"] = staged or None
  _run_data["options"] = {name: dict(opts) for name, opts in (options or {}).items()}


@contextlib.contextmanager
def run_data(staged: str | None, options: Mapping[str, Mapping[str, Any]] | None = None) -> Iterator[None]:
  """`use_run_data` for the duration of a `with` block, then the previous view again (for a tool that reads data
  as one run did, inside a process that may hold another view)."""
  previous = {"staged": _run_data["staged"], "options": dict(_run_data["options"])}
  use_run_data(staged, options)
  try:
    yield
  finally:
    _run_data.update(previous)


def staged_root() -> str | None:
  """The staged directory `get_task` reads: the run's (`use_run_data`), else `$GROW_JAX_STAGED_DATA`, else None."""
  return _run_data["staged"] or os.environ.get(ENV_STAGED) or None


def open_task(name: str, options: Mapping[str, Any] | None = None, *, staged: str | None = None) -> Task:
  """The task `name` with `options`; with `staged` (a directory or gs:// path of `python -m grow_jax.data.stage`)
  its records come from that staged copy, which must hold this task with these options (else a one-line
  `DataError` naming both)."""
  options = dict(options or {})
  task = build_task(name, **options)
  if not staged or not task.needs_tokenizer:   # a staged copy holds text records; token batches are made here
    return task
  return staged_copy.staged_task(staged, name, task, options)


def get_task(name: str, **options: Any) -> Task:
  """The registered task `name` with `options` (see the module docstring: inside a training run the run's
  options for `name` fill in those not given, and a staged copy in use supplies the records).

  Raises:
    TaskError: unknown task (the message lists the known ones) or an option the task does not take.
    DataError: a staged copy in use that does not hold this task with these options.
  """
  return open_task(name, {**_run_data["options"].get(name, {}), **options}, staged=staged_root())
