"""A synthetic sequence-to-sequence task: a stand-in data source with the batch interface of `grow_jax.data`.

Each example is `[BOS] x_1 .. x_L [SEP] y_1 .. y_L [EOS]` with `y_i = perm(x_i)` for a fixed random
permutation `perm` of a small alphabet; the loss covers `y_1 .. y_L [EOS]`. A tiny model learns it in a few
dozen steps, so loss curves in tests move.

Batches are dicts of numpy arrays, one row per sequence (B = this process's share of the global batch):
    tokens      int32 (B, T)   token ids (0 = padding)
    loss_mask   float32 (B, T) 1 where tokens[t] is a target token (predicted from position t - 1)
    input_mask  bool (B, T)    True for real tokens, False for padding
    positions   int32 (B, T)   position within its own example
    segment_ids int32 (B, T)   1, 2, ... per packed example, 0 for padding

Determinism: row `g` (global index) of the stream depends only on (seed, split, g), so the global batch is
the same whatever the number of processes, and `restore(state())` continues exactly.

It is the registered task 'synthetic' (`config.data.task`, the default): a `Task` that makes its token batches
itself (`Task.batches`), so it needs no tokenizer, and has no records to stage and no options.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grow_jax.data.tasks import Task, register_task
from grow_jax.errors import DataError, TaskError

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
BATCH_KEYS = ("tokens", "loss_mask", "positions", "segment_ids", "input_mask")   # as grow_jax.data
_DTYPES = {"loss_mask": np.float32, "input_mask": np.bool_}



class SyntheticSource:
  """Iterator of local batches of the synthetic task; `state()` / `restore()` give its exact position."""

  def __init__(self, *, split: str, global_batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
               packing: bool = False, num_examples: int = -1, process_index: int = 0, process_count: int = 1,
               alphabet_size: int = 32, min_len: int = 2, max_len: int = 6, bos_id: int = 2, eos_id: int = 1):
    if split not in _SPLIT_IDS:
      raise DataError(f"config.data split {split!r}: the synthetic task has splits {sorted(_SPLIT_IDS)}")
    if num_examples == 0:
      raise DataError(f"config.data.num_examples=0: the synthetic split {split!r} is empty; expected -1 "
                      "(unbounded) or a positive count")
    if global_batch_size % process_count:
      raise DataError(f"batch_size={global_batch_size} is not divisible by the process count {process_count}")
    alphabet_size = min(alphabet_size, vocab_size - 4)
    if alphabet_size < 2:
      raise DataError(f"vocab_size={vocab_size} is too small for the synthetic task (need >= 6)")
    if seq_len < 2 * max_len + 3:
      max_len = max(1, (seq_len - 3) // 2)
      min_len = min(min_len, max_len)
    if seq_len < 5:
      raise DataError(f"config.data.seq_len={seq_len}: the synthetic task needs at least 5 tokens")
    self.split, self.seq_len, self.seed, self.packing = split, seq_len, seed, packing
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.num_examples = num_examples
    self.min_len, self.max_len = min_len, max_len
    self.bos_id, self.eos_id = bos_id, eos_id
    self.first = 3                              # alphabet: ids 3 .. 3 + A - 1; SEP = 3 + A
    self.alphabet_size = alphabet_size
    self.sep_id = self.first + alphabet_size
    # The task's rule is fixed by the seed alone (same for every split).
    self.perm = np.random.default_rng([seed, 99]).permutation(alphabet_size)
    self._batch_index = 0

  # ---- the iterator interface shared with grow_jax.data -------------------------------------------
  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    start = self._batch_index * self.global_batch_size + self.process_index * self.local_batch_size
    rows = [self._row(start + r) for r in range(self.local_batch_size)]
    self._batch_index += 1
    return {k: np.stack([row[k] for row in rows]) for k in BATCH_KEYS}

  def state(self) -> dict[str, Any]:
    return {"batch_index": self._batch_index, "split": self.split, "seed": self.seed}

  def restore(self, state: dict[str, Any]) -> None:
    if state.get("split", self.split) != self.split:
      raise DataError(f"data state is for split {state.get('split')!r}, this source reads {self.split!r}")
    self._batch_index = int(state["batch_index"])

  # ---- examples ----------------------------------------------------------------------------------
  def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss_mask) of example `index` of this split (cycles when num_examples > 0)."""
    if self.num_examples > 0:
      index %= self.num_examples
    rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
    length = int(rng.integers(self.min_len, self.max_len + 1))
    x = rng.integers(0, self.alphabet_size, size=length)
    y = self.perm[x]
    tokens = np.concatenate([[self.bos_id], self.first + x, [self.sep_id], self.first + y, [self.eos_id]])
    mask = np.zeros_like(tokens)
    mask[length + 2:] = 1
    return tokens.astype(np.int32), mask.astype(np.int32)

  def _row(self, global_row: int) -> dict[str, np.ndarray]:
    T = self.seq_len
    row = {k: np.zeros(T, _DTYPES.get(k, np.int32)) for k in BATCH_KEYS}
    fill, segment = 0, 0
    per_row = max(1, T // (2 * self.max_len + 3)) if self.packing else 1
    for k in range(per_row):
      tokens, mask = self.example(global_row * per_row + k)
      n = len(tokens)
      if fill + n > T:
        break
      segment += 1
      sl = slice(fill, fill + n)
      row["tokens"][sl], row["loss_mask"][sl] = tokens, mask
      row["input_mask"][sl] = True
      row["positions"][sl] = np.arange(n)
      row["segment_ids"][sl] = segment
      fill += n
    return row


# ---- the registered task ---------------------------------------------------------------------------------------
NAME = "synthetic"


def batches(split: str, *, batch_size: int, seq_len: int, model_config, seed: int, packing: bool, num_examples: int,
            process_index: int = 0, process_count: int = 1) -> SyntheticSource:
  """`Task.batches` of the synthetic task: this process's batches of `split`."""
  return SyntheticSource(split=split, global_batch_size=batch_size, seq_len=seq_len,
                         vocab_size=model_config.vocab_size, seed=seed, packing=packing, num_examples=num_examples,
                         process_index=process_index, process_count=process_count,
                         bos_id=model_config.bos_token_id, eos_id=model_config.eos_token_id)


def _no_records(record_or_split):
  raise TaskError(f"task {NAME!r} makes token batches itself (Task.batches); it has no text records")


@register_task(NAME)
def synthetic_task() -> Task:
  return Task(name=NAME, splits=tuple(_SPLIT_IDS), source=_no_records, prompt=_no_records, target=_no_records,
              metrics=(), batches=batches,
              description="a synthetic permutation task made as token ids (tests, plumbing; no tokenizer)")
