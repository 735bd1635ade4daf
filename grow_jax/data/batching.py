"""From `Example`s to fixed-shape numpy batches: tokenisation, padding or packing, resumable shuffling, and
per-process slicing for multi-host training.

Tokenisation: any object with `encode(text) -> list[int]` (no BOS), `bos_id`, `eos_id`, `pad_id`.
A training sequence is `[BOS] + encode(prompt) + encode(target_delimiter + target) + [EOS]` (the delimiter goes
with the target, as lm-evaluation-harness scores continuations); `loss_mask` is 1 on those target tokens and EOS
only.
Too long: the prompt is cut from the left (its end, next to the target, is kept). If even the bare
`[BOS] + target + [EOS]` does not fit, the example is an error, or skipped and counted (`on_overflow="skip"`):
a target is never dropped silently.

Batch (numpy, shapes (B, T)):
    tokens       int32    token ids, `pad_id` in padding
    loss_mask    float32  1.0 where the token is a target token (aligned with `tokens`, NOT shifted: the
                          logits at position t predict tokens[t + 1], weighted by loss_mask[t + 1])
    positions    int32    0, 1, 2, ... restarting at every packed segment; 0 in padding
    segment_ids  int32    1, 2, 3, ... per packed example (1 for the single example of a padded row); 0 = pad
    input_mask   bool     segment_ids > 0
Packed segments never attend across each other when attention is masked with `segment_ids` equality; a
segment's first token is its BOS, whose loss_mask is 0, so no loss crosses a segment boundary either.

Iteration: `BatchIterator` streams the sequences in a seeded permutation per epoch (epochs concatenate: a batch
may straddle two epochs). Its position is `state() == {"epoch": e, "index": i}` (JSON-able);
`restore(state)` makes the following batches identical to those of the run that saved it. Every process
builds the same global batch and returns its own contiguous slice of rows: the global batch does not depend on
the process count. The slices are data blocks (`grow_jax.train.sharding.batch_blocks`): processes whose devices
address the same rows of the sharded batch (a tensor group spanning hosts) share a block and load the same rows.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from grow_jax.errors import DataError
from grow_jax.data.tasks import Example

Batch = dict[str, np.ndarray]
BATCH_KEYS = ("tokens", "loss_mask", "positions", "segment_ids", "input_mask")
_OVERFLOW = ("error", "skip")


class Tokenizer(Protocol):
  """What batching needs from a tokenizer (grow_jax.tokenizer provides one for Gemma 3)."""

  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS."""


class SequenceTooLongError(DataError):
  """An example whose target (with BOS/EOS) does not fit `max_len`; the message names it and the lengths."""


@dataclasses.dataclass(frozen=True)
class TokenizedSequence:
  """One sequence: `tokens` int32 (L,) and `loss_mask` bool (L,); `id` of the example it came from."""

  tokens: np.ndarray
  loss_mask: np.ndarray
  id: str = ""

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


# -- tokenisation -----------------------------------------------------------------------------------------

def make_sequence(prompt_ids: Sequence[int], target_ids: Sequence[int], *, bos_id: int, eos_id: int | None,
                  max_len: int, id: str = "") -> TokenizedSequence:
  """`[BOS] + prompt + target (+ [EOS])`, prompt cut from the left to fit `max_len`; loss on target (+ EOS)."""
  target = list(target_ids) + ([eos_id] if eos_id is not None else [])
  if not target_ids:
    raise ValueError(f"example {id!r}: the target tokenises to no tokens")
  room = max_len - 1 - len(target)
  if room < 0:
    raise SequenceTooLongError(
        f"example {id!r}: target needs {len(target) + 1} tokens with BOS/EOS, more than max_len={max_len}")
  prompt = list(prompt_ids)[max(0, len(prompt_ids) - room):]
  tokens = np.asarray([bos_id] + prompt + target, dtype=np.int32)
  loss_mask = np.zeros(len(tokens), dtype=bool)
  loss_mask[1 + len(prompt):] = True
  return TokenizedSequence(tokens, loss_mask, id)


def tokenize_example(example: Example, tokenizer: Tokenizer, max_len: int, *, add_eos: bool = True
                     ) -> TokenizedSequence:
  """The training sequence of `example`; raises `SequenceTooLongError` if its target cannot fit."""
  prompt_ids = tokenizer.encode(example.prompt) if example.prompt else []
  target_ids = tokenizer.encode(example.target_delimiter + example.target)
  return make_sequence(prompt_ids, target_ids, bos_id=tokenizer.bos_id,
                       eos_id=tokenizer.eos_id if add_eos else None, max_len=max_len, id=example.id)


def tokenize_examples(examples: Iterable[Example], tokenizer: Tokenizer, max_len: int, *,
                      on_overflow: str = "error", add_eos: bool = True) -> tuple[list[TokenizedSequence], int]:
  """(sequences, number skipped). on_overflow: "error" raises on the first example that cannot fit;
  "skip" drops such examples, counts them and logs a warning."""
  if on_overflow not in _OVERFLOW:
    raise ValueError(f"on_overflow must be one of {_OVERFLOW}, got {on_overflow!r}")
  out, skipped = [], 0
  for example in examples:
    try:
      out.append(tokenize_example(example, tokenizer, max_len, add_eos=add_eos))
    except SequenceTooLongError:
      if on_overflow == "error":
        raise
      skipped += 1
  if skipped:
    logging.warning("skipped %d of %d examples whose target does not fit max_len=%d",
                    skipped, skipped + len(out), max_len)
  return out, skipped


# -- batches ----------------------------------------------------------------------------------------------

def _empty(batch_size: int, seq_len: int, pad_id: int) -> Batch:
  return {"tokens": np.full((batch_size, seq_len), pad_id, np.int32),
          "loss_mask": np.zeros((batch_size, seq_len), np.float32),
          "positions": np.zeros((batch_size, seq_len), np.int32),
          "segment_ids": np.zeros((batch_size, seq_len), np.int32)}


def pack_rows(rows: Sequence[Sequence[TokenizedSequence]], batch_size: int, seq_len: int, pad_id: int) -> Batch:
  """A batch whose row r holds the sequences rows[r] back to back (segments 1, 2, ...), then padding.

  One sequence per row is plain padding. Rows beyond len(rows) are all padding (input_mask False).
  """
  if len(rows) > batch_size:
    raise ValueError(f"{len(rows)} rows do not fit batch_size={batch_size}")
  batch = _empty(batch_size, seq_len, pad_id)
  for r, row in enumerate(rows):
    start = 0
    for s, seq in enumerate(row, 1):
      end = start + len(seq)
      if end > seq_len:
        raise ValueError(f"row {r}: sequences of total length {sum(map(len, row))} exceed seq_len={seq_len}")
      batch["tokens"][r, start:end] = seq.tokens
      batch["loss_mask"][r, start:end] = seq.loss_mask
      batch["positions"][r, start:end] = np.arange(len(seq))
      batch["segment_ids"][r, start:end] = s
      start = end
  batch["input_mask"] = batch["segment_ids"] > 0
  return batch


def pad_batch(sequences: Sequence[TokenizedSequence], batch_size: int, seq_len: int, pad_id: int) -> Batch:
  """One sequence per row, right-padded to `seq_len`; missing rows are all padding."""
  return pack_rows([[s] for s in sequences], batch_size, seq_len, pad_id)


def process_slice(batch: Mapping[str, np.ndarray], process_index: int, process_count: int) -> Batch:
  """Rows [p * B/n, (p + 1) * B/n) of a global batch: process p's share."""
  size = next(iter(batch.values())).shape[0]
  _check_divisible(size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  local = size // process_count
  return {k: v[process_index * local:(process_index + 1) * local] for k, v in batch.items()}


def _check_divisible(batch_size: int, process_count: int) -> None:
  if process_count < 1 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the process count {process_count}")


class BatchIterator(Iterator[Batch]):
  """Batches of `sequences`: shuffled per epoch (seeded), padded or packed, this process's rows, resumable.

  Args:
    sequences: tokenized sequences (each at most `seq_len` long).
    batch_size: the GLOBAL batch size (rows); each process gets batch_size / process_count rows.
    seq_len: T, the row length (packing) or the longest padded length.
    pad_id: token id of padding.
    packing: pack several sequences per row (segment_ids 1, 2, ...) instead of one per row.
    shuffle, seed: a seeded permutation per epoch (`np.random.default_rng([seed, epoch])`); else in order.
    num_epochs: None streams forever; otherwise stops after that many passes.
    drop_remainder: at the end of a finite stream, drop the last partial batch (else pad it with empty rows).
    length_buckets: padding mode only: pad each batch to the smallest bucket length >= its longest sequence
      (seq_len is always a bucket); None pads to seq_len.
    process_index, process_count: this process's data block and the number of blocks (the trainer passes
      `sharding.batch_blocks(mesh)`); default `jax.process_index()` / `jax.process_count()`, right when every
      process's devices address rows of their own.
  """

  def __init__(self, sequences: Sequence[TokenizedSequence], *, batch_size: int, seq_len: int, pad_id: int,
               packing: bool = False, shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
               drop_remainder: bool = True, length_buckets: Sequence[int] | None = None,
               process_index: int | None = None, process_count: int | None = None):
    if not sequences:
      raise ValueError("BatchIterator needs at least one sequence, got none")
    if batch_size < 1 or seq_len < 1:
      raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    longest = max(range(len(sequences)), key=lambda i: len(sequences[i]))
    if len(sequences[longest]) > seq_len:
      raise ValueError(f"sequence {longest} (id {sequences[longest].id!r}) has length "
                       f"{len(sequences[longest])} > seq_len={seq_len}; tokenize with max_len <= seq_len")
    if process_index is None or process_count is None:
      import jax
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    _check_divisible(batch_size, process_count)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    buckets = sorted(set(length_buckets or ()) | {seq_len})
    if buckets[0] < 1 or buckets[-1] > seq_len:
      raise ValueError(f"length_buckets must lie in [1, seq_len={seq_len}], got {list(length_buckets or ())}")
    if packing and length_buckets:
      raise ValueError("length_buckets apply to padding mode only (packed rows are always seq_len long)")
    self._sequences = sequences
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
    self.packing, self.shuffle, self.seed = packing, shuffle, seed
    self.num_epochs, self.drop_remainder, self._buckets = num_epochs, drop_remainder, buckets
    self.process_index, self.process_count = process_index, process_count
    self._epoch, self._index = 0, 0
    self._order_cache: tuple[int, np.ndarray] | None = None

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  # -- position -------------------------------------------------------------------------------------------

  def state(self) -> dict[str, int]:
    """The position of the next batch: {"epoch": e, "index": i} (i-th sequence of epoch e's order)."""
    return {"epoch": int(self._epoch), "index": int(self._index)}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a position saved by `state()` (of an iterator over the same sequences and options)."""
    if not isinstance(state, Mapping) or set(state) != {"epoch", "index"}:
      raise ValueError(f"iterator state must be a dict with keys 'epoch' and 'index', got {state!r}")
    epoch, index = state["epoch"], state["index"]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (epoch, index)):
      raise ValueError(f"iterator state values must be integers, got {state!r}")
    if epoch < 0 or not 0 <= index <= len(self._sequences):
      raise ValueError(f"iterator state {dict(state)} out of range: index must be in "
                       f"[0, {len(self._sequences)}] for {len(self._sequences)} sequences, epoch >= 0")
    self._epoch, self._index = int(epoch), int(index)

  def _order(self, epoch: int) -> np.ndarray:
    if self._order_cache is None or self._order_cache[0] != epoch:
      n = len(self._sequences)
      order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n))
      self._order_cache = (epoch, order)
    return self._order_cache[1]

  def _peek(self) -> TokenizedSequence | None:
    if self._index >= len(self._sequences):
      self._epoch, self._index = self._epoch + 1, 0
    if self.num_epochs is not None and self._epoch >= self.num_epochs:
      return None
    return self._sequences[int(self._order(self._epoch)[self._index])]

  def _advance(self) -> None:
    self._index += 1

  # -- batches --------------------------------------------------------------------------------------------

  def global_batch(self) -> Batch:
    """The next global batch (all processes' rows); advances the position. Raises StopIteration at the end."""
    rows = self._next_rows()
    if not rows or (len(rows) < self.batch_size and self.drop_remainder):
      raise StopIteration
    length = self.seq_len
    if not self.packing:
      longest = max(len(row[0]) for row in rows)
      length = next(b for b in self._buckets if b >= longest)
    return pack_rows(rows, self.batch_size, length, self.pad_id)

  def _next_rows(self) -> list[list[TokenizedSequence]]:
    rows: list[list[TokenizedSequence]] = []
    if not self.packing:
      while len(rows) < self.batch_size and (seq := self._peek()) is not None:
        rows.append([seq])
        self._advance()
      return rows
    current: list[TokenizedSequence] = []
    used = 0
    while (seq := self._peek()) is not None:
      if used + len(seq) > self.seq_len:
        rows.append(current)
        current, used = [], 0
        if len(rows) == self.batch_size:
          return rows
      current.append(seq)
      used += len(seq)
      self._advance()
    if current:
      rows.append(current)
    return rows

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Batch:
    """This process's rows of the next global batch."""
    return process_slice(self.global_batch(), self.process_index, self.process_count)
