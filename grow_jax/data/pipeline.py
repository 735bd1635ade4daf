"""The trainer's data pipeline: a config's task -> this process's batches, and a prefetching wrapper.

    it = batch_iterator(config, "train", batch_size=8, model_config=mc, tokenizer=tok)    # endless, shuffled
    for batch in batch_iterator(config, "validation", batch_size=8, ..., finite=True, max_examples=64): ...
    it = Prefetcher(it, transform=lambda b: sharding.global_batch(b, mesh))  # next batch built while training

Every iterator has `state()` / `restore(state)`, which the trainer checkpoints, so a resumed run continues
with exactly the batches it would have seen.

Which data: `config.data.task` with `config.data.options` (its options; other tasks get their defaults), read
from the staged copy `config.data.staged` (else `$GROW_JAX_STAGED_DATA`) when one is set, else from each task's
own source. The trainer hands this view to the whole process with `use_config(config)` (so its evaluations read
the same data as its training), which also checks, before any heavy work, that a staged copy holds every task,
option set and split the run reads (`data_reads`: what `python -m grow_jax.data.stage --config=...` stages).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Iterator, Mapping

from grow_jax.data import staged as staged_copy, tasks
from grow_jax.errors import DataError


def task_options(config, name: str) -> dict[str, Any]:
  """The options `config` gives task `name`: the set (not None) `config.data.options` for its own task,
  none for any other."""
  options = config.data.get("options") if name == config.data.task else None
  if not options:
    return {}
  return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in options.items() if v is not None}


def staged_dir(config) -> str | None:
  """The staged data a run reads: `config.data.staged`, else `$GROW_JAX_STAGED_DATA`, else None."""
  return config.data.get("staged") or os.environ.get(tasks.ENV_STAGED) or None


def data_reads(config) -> dict[str, tuple[dict[str, Any], list[str]]]:
  """Every data task a run of `config` reads, {task: (options, [splits])}: the training task's train split
  (and the eval split `heldout_loss` scores), each data task of `config.eval.tasks` on its split
  (`task:split`, else `config.eval.split`, else the task's validation/test split, as the evaluation registry
  picks), and the reference text of a method that needs one (EWC)."""
  from grow_jax import methods
  reads: dict[str, tuple[dict[str, Any], list[str]]] = {}
  known = tasks.list_tasks()

  def add(name: str, split: str) -> None:
    if name not in known or not tasks.build_task(name).needs_tokenizer:   # token batches: no records read
      return
    splits = reads.setdefault(name, (task_options(config, name), []))[1]
    if split not in splits:
      splits.append(split)

  add(config.data.task, config.data.train_split)
  for entry in config.eval.tasks:
    name, _, split = entry.partition(":")
    if name == "heldout_loss":
      add(config.data.task, split or config.data.eval_split)
    elif name in known:
      add(name, split or config.eval.split or _default_split(name, task_options(config, name)))
  if methods.method_class(config.train.mode).needs_reference_data:
    add(reference_task(config), config.data.eval_split)
  return reads


def reference_task(config) -> str:
  """The original-domain text a method's reference batches come from (EWC's Fisher): `train.reference_task`,
  else general English prose (stdlib_text), or the training task itself when it needs no tokenizer (synthetic)."""
  if config.train.reference_task:
    return config.train.reference_task
  return "stdlib_text" if tasks.build_task(config.data.task).needs_tokenizer else config.data.task


def needs_tokenizer(config) -> bool:
  """Whether a run of `config` reads text for its training data or its reference batches (the evaluations
  declare their own needs: evaluation.registry.needs_tokenizer)."""
  return any(tasks.build_task(name).needs_tokenizer for name in (config.data.task, reference_task(config)))


def _default_split(name: str, options: Mapping[str, Any]) -> str:
  splits = tasks.build_task(name, **options).splits
  return "validation" if "validation" in splits else "test" if "test" in splits else splits[0]


def use_config(config) -> None:
  """The trainer's hand-off: this process reads data as `config` says (`tasks.use_run_data`): its own task with
  `config.data.options` wherever it is named (training, heldout loss, evaluations), and every task from the
  staged copy, if one is set, which is checked here to hold all that `data_reads(config)` lists."""
  staged = staged_dir(config)
  own = {config.data.task: task_options(config, config.data.task)}
  tasks.use_run_data(staged, own)
  if staged:
    staged_copy.check_reads(staged, data_reads(config))


def batch_iterator(config, split: str, *, batch_size: int, model_config, tokenizer=None, task: str | None = None,
                   max_examples: int | None = None, finite: bool = False, seed: int | None = None,
                   process_index: int = 0, process_count: int = 1):
  """Batches of `config.data.task` (or `task`) for one process: an iterator with state() / restore().

  finite=True: one ordered pass over at most `max_examples` examples (evaluation); else an endless
  shuffled stream (training). Each process gets its rows of the global batch.
  """
  task = task or config.data.task
  seed = config.seed if seed is None else seed
  source = tasks.open_task(task, task_options(config, task), staged=staged_dir(config))
  if source.batches is not None:     # a task that makes its token batches itself (synthetic)
    n = config.data.num_examples
    if finite:
      n = max_examples if max_examples else n
    made = source.batches(split, batch_size=batch_size, seq_len=config.data.seq_len, model_config=model_config,
                          seed=seed, packing=config.data.packing, num_examples=n, process_index=process_index,
                          process_count=process_count)
    if finite:
      rows = n if n > 0 else batch_size
      return _take(made, -(-rows // batch_size))
    return made
  from grow_jax import data
  limit = max_examples if max_examples and max_examples > 0 else None
  if not finite and config.data.num_examples > 0:
    limit = config.data.num_examples
  examples = source.examples(split, limit=limit)
  sequences, _ = data.tokenize_examples(examples, tokenizer, config.data.seq_len, on_overflow="skip")
  if not sequences:
    raise DataError(f"config.data.task={task!r} split {split!r} has no usable examples ({len(examples)} read, "
                    f"none fit seq_len={config.data.seq_len}); expected at least one")
  return data.BatchIterator(sequences, batch_size=batch_size, seq_len=config.data.seq_len, pad_id=tokenizer.pad_id,
                            packing=config.data.packing, shuffle=not finite, seed=seed,
                            num_epochs=1 if finite else None, drop_remainder=not finite,
                            process_index=process_index, process_count=process_count)


def _take(iterator, n):
  for _ in range(n):
    yield next(iterator)


class Prefetcher:
  """Builds the next `size` batches on a background thread (host batching and the transfer to devices
  overlap the device's compute). `state()` is the position after the last batch *taken*, so checkpoints
  never count a prefetched batch as seen."""

  _END = object()

  def __init__(self, iterator, transform: Callable[[Any], Any] = lambda b: b, size: int = 2):
    self._iterator, self._transform = iterator, transform
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._state = iterator.state()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="grow_jax-prefetch", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        try:
          batch = next(self._iterator)
        except StopIteration:
          self._put((self._END, None))
          return
        self._put((self._transform(batch), self._iterator.state()))
    except BaseException as e:  # handed to the consumer, raised there
      self._put((e, None))

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self) -> Iterator:
    return self

  def __next__(self):
    item, state = self._queue.get()
    if item is self._END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    self._state = state
    return item

  def state(self):
    return self._state

  def close(self) -> None:
    self._stop.set()
    while True:                      # unblock a producer waiting on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=5)
