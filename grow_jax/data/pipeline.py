"""The trainer's data pipeline: a config's task -> this process's batches, and a prefetching wrapper.

    it = batch_iterator(config, "train", batch_size=8, model_config=mc, tokenizer=tok)    # endless, shuffled
    for batch in batch_iterator(config, "validation", batch_size=8, ..., finite=True, max_examples=64): ...
    it = Prefetcher(it, transform=lambda b: sharding.global_batch(b, mesh))  # next batch built while training

Every iterator has `state()` / `restore(state)`, which the trainer checkpoints, so a resumed run continues
with exactly the batches it would have seen.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from grow_jax.data import synthetic
from grow_jax.errors import DataError


def batch_iterator(config, split: str, *, batch_size: int, model_config, tokenizer=None, task: str | None = None,
                   max_examples: int | None = None, finite: bool = False, seed: int | None = None,
                   process_index: int = 0, process_count: int = 1):
  """Batches of `config.data.task` (or `task`) for one process: an iterator with state() / restore().

  finite=True: one ordered pass over at most `max_examples` examples (evaluation); else an endless
  shuffled stream (training). Each process gets its rows of the global batch.
  """
  task = task or config.data.task
  seed = config.seed if seed is None else seed
  if task == "synthetic":
    n = config.data.num_examples
    if finite:
      n = max_examples if max_examples else n
    source = synthetic.SyntheticSource(
        split=split, global_batch_size=batch_size, seq_len=config.data.seq_len, vocab_size=model_config.vocab_size,
        seed=seed, packing=config.data.packing, num_examples=n, process_index=process_index,
        process_count=process_count, bos_id=model_config.bos_token_id, eos_id=model_config.eos_token_id)
    if finite:
      rows = n if n > 0 else batch_size
      return _take(source, -(-rows // batch_size))
    return source
  from grow_jax import data
  limit = max_examples if max_examples and max_examples > 0 else None
  if not finite and config.data.num_examples > 0:
    limit = config.data.num_examples
  examples = data.get_task(task).examples(split, limit=limit)
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
