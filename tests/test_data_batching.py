"""Tokenisation, padding, packing, the resumable shuffling iterator and per-process slices."""

import json

import numpy as np
import pytest

from grow_jax.data import batching
from grow_jax.data.batching import BatchIterator, SequenceTooLongError, TokenizedSequence
from grow_jax.data.tasks import Example


class CharTokenizer:
  """One token per character (ord + 3); 0 pad, 1 BOS, 2 EOS. Reversible, so tests can read tokens back."""

  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text):
    return [ord(c) + 3 for c in text]

  def decode(self, ids):
    return "".join(chr(i - 3) for i in ids if i > 2)


TOK = CharTokenizer()


def seqs(lengths, seed=0):
  """Distinct sequences of the given lengths: BOS, then target tokens (loss on all but BOS)."""
  rng = np.random.default_rng(seed)
  out = []
  for i, n in enumerate(lengths):
    tokens = np.concatenate([[TOK.bos_id], rng.integers(10, 100, n - 1)]).astype(np.int32)
    mask = np.arange(n) >= n // 2
    out.append(TokenizedSequence(tokens, mask, id=f"s{i}"))
  return out


# -- tokenisation -------------------------------------------------------------------------------------------

def test_sequence_is_bos_prompt_target_eos_with_loss_on_target_and_eos_only():
  seq = batching.tokenize_example(Example("e", "Q: 2+2?", "4"), TOK, max_len=32)
  assert seq.tokens.tolist() == [TOK.bos_id] + TOK.encode("Q: 2+2?") + TOK.encode(" 4") + [TOK.eos_id], \
      "the delimiter is tokenized with the target"
  assert seq.tokens.dtype == np.int32 and seq.loss_mask.dtype == bool
  assert seq.loss_mask.tolist() == [False] * 8 + [True] * 3
  assert TOK.decode(seq.tokens[seq.loss_mask]) == " 4"


def test_long_prompt_is_cut_from_the_left_and_the_target_kept_whole():
  seq = batching.tokenize_example(Example("e", "abcdefghij", "XYZ"), TOK, max_len=10)
  assert len(seq) == 10
  assert TOK.decode(seq.tokens) == "ghij XYZ"          # BOS + the last 4 prompt chars + target + EOS
  assert TOK.decode(seq.tokens[seq.loss_mask]) == " XYZ" and seq.loss_mask[-1]


def test_target_that_cannot_fit_is_an_error_or_skipped_and_counted(caplog):
  too_long = Example("long-one", "p", "x" * 20)
  with pytest.raises(SequenceTooLongError, match=r"example 'long-one': target needs 23 tokens .* max_len=16"):
    batching.tokenize_example(too_long, TOK, max_len=16)
  kept, skipped = batching.tokenize_examples([Example("a", "p", "ok"), too_long], TOK, 16, on_overflow="skip")
  assert [s.id for s in kept] == ["a"] and skipped == 1
  assert "skipped 1 of 2 examples" in caplog.text
  with pytest.raises(SequenceTooLongError):
    batching.tokenize_examples([too_long], TOK, 16)


# -- padding and packing ------------------------------------------------------------------------------------

def check_batch_schema(batch, shape):
  assert set(batch) == set(batching.BATCH_KEYS)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "tokens": (shape, np.int32), "loss_mask": (shape, np.float32), "positions": (shape, np.int32),
      "segment_ids": (shape, np.int32), "input_mask": (shape, np.bool_)}
  np.testing.assert_array_equal(batch["input_mask"], batch["segment_ids"] > 0)
  assert not batch["loss_mask"][~batch["input_mask"]].any(), "no loss on padding"
  assert (batch["tokens"][~batch["input_mask"]] == TOK.pad_id).all()


def test_pad_batch_right_pads_each_sequence_and_empty_rows():
  a, b = seqs([5, 3])
  batch = batching.pad_batch([a, b], batch_size=3, seq_len=6, pad_id=TOK.pad_id)
  check_batch_schema(batch, (3, 6))
  assert batch["tokens"][0].tolist() == a.tokens.tolist() + [0]
  assert batch["segment_ids"].tolist() == [[1] * 5 + [0], [1] * 3 + [0] * 3, [0] * 6]
  assert batch["positions"][1].tolist() == [0, 1, 2, 0, 0, 0]
  np.testing.assert_array_equal(batch["loss_mask"][0, :5], a.loss_mask)


def unpack(batch):
  """The sequences in a batch, read back from segment ids: [(tokens, loss_mask)] in row order."""
  out = []
  for r in range(batch["tokens"].shape[0]):
    for s in range(1, batch["segment_ids"][r].max() + 1):
      where = batch["segment_ids"][r] == s
      idx = np.flatnonzero(where)
      assert (np.diff(idx) == 1).all(), "a segment is contiguous"
      assert batch["positions"][r, idx].tolist() == list(range(len(idx))), "positions restart per segment"
      assert batch["tokens"][r, idx[0]] == TOK.bos_id and batch["loss_mask"][r, idx[0]] == 0, \
          "a segment starts with BOS, so no loss crosses the boundary"
      out.append((batch["tokens"][r, idx].tolist(), batch["loss_mask"][r, idx].astype(bool).tolist()))
  return out


def test_packing_keeps_segments_apart_and_loses_nothing():
  data = seqs([7, 3, 12, 5, 5, 9, 2, 16, 4, 6, 11, 3])
  it = BatchIterator(data, batch_size=2, seq_len=16, pad_id=0, packing=True, shuffle=True, seed=1,
                     num_epochs=1, drop_remainder=False, process_index=0, process_count=1)
  batches = list(it)
  for b in batches:
    check_batch_schema(b, (2, 16))
    assert b["segment_ids"].max() > 1 or b is batches[-1], "rows hold several sequences"
  packed = [s for b in batches for s in unpack(b)]
  expected = [(s.tokens.tolist(), s.loss_mask.tolist()) for s in data]
  assert sorted(packed) == sorted(expected), "every sequence exactly once, intact"


def test_padding_mode_one_sequence_per_row_and_length_buckets():
  data = seqs([3, 4, 5, 20, 6, 2])
  it = BatchIterator(data, batch_size=2, seq_len=32, pad_id=0, shuffle=False, num_epochs=1,
                     length_buckets=[8, 16], process_index=0, process_count=1)
  shapes = [b["tokens"].shape for b in it]
  assert shapes == [(2, 8), (2, 32), (2, 8)]


# -- iteration ----------------------------------------------------------------------------------------------

def make_iterator(packing=False, **kw):
  kw = {"batch_size": 4, "seq_len": 24, "pad_id": 0, "packing": packing, "seed": 3, "process_index": 0,
        "process_count": 1, **kw}
  return BatchIterator(seqs([5, 9, 3, 14, 7, 7, 2, 11, 6, 8, 4, 10, 13]), **kw)


@pytest.mark.parametrize("packing", [False, True])
def test_restored_iterator_gives_identical_following_batches(packing):
  it = make_iterator(packing)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.state()))          # survives a JSON round trip (checkpoint metadata)
  expected = [next(it) for _ in range(6)]             # crosses at least one epoch boundary
  assert it.state()["epoch"] >= 1
  fresh = make_iterator(packing)
  fresh.restore(state)
  for want, got in zip(expected, [next(fresh) for _ in range(6)]):
    for key in batching.BATCH_KEYS:
      np.testing.assert_array_equal(got[key], want[key])


def test_epochs_are_reshuffled_deterministically_by_seed():
  def epoch_orders(seed):
    it = make_iterator(False, seed=seed, batch_size=1, num_epochs=2)
    return [b["tokens"][0, 1] for b in it]   # first token after BOS identifies the sequence
  a = epoch_orders(0)
  assert len(a) == 26 and a[:13] != a[13:] and sorted(a[:13]) == sorted(a[13:])
  assert epoch_orders(0) == a and epoch_orders(1) != a


def test_drop_remainder_at_the_end_of_a_finite_stream():
  kept = list(make_iterator(False, num_epochs=1, drop_remainder=True))
  padded = list(make_iterator(False, num_epochs=1, drop_remainder=False))
  assert len(kept) == 3 and len(padded) == 4      # 13 sequences, batches of 4
  assert padded[-1]["input_mask"].any(axis=1).tolist() == [True, False, False, False]


@pytest.mark.parametrize("packing", [False, True])
def test_process_slices_reassemble_the_global_batch(packing):
  full = list(make_iterator(packing, batch_size=8, num_epochs=2))      # one process: the global batches
  for n in (2, 4, 8):
    parts = [list(make_iterator(packing, batch_size=8, num_epochs=2, process_index=p, process_count=n))
             for p in range(n)]
    assert all(len(p) == len(full) for p in parts)
    for step, global_batch in enumerate(full):
      assert parts[0][step]["tokens"].shape[0] == 8 // n
      for key in batching.BATCH_KEYS:
        np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), global_batch[key])


def test_batch_size_must_divide_among_processes():
  with pytest.raises(ValueError, match="batch_size 6 is not divisible by the process count 4"):
    make_iterator(False, batch_size=6, process_index=1, process_count=4)


def test_default_process_layout_comes_from_jax():
  it = BatchIterator(seqs([4]), batch_size=2, seq_len=8, pad_id=0)
  assert (it.process_index, it.process_count) == (0, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 10}, r"sequence 3 \(id 's3'\) has length 14 > seq_len=10"),
    ({"length_buckets": [64]}, r"length_buckets must lie in \[1, seq_len=24\]"),
    ({"packing": True, "length_buckets": [8]}, "length_buckets apply to padding mode only"),
    ({"num_epochs": 0}, "num_epochs must be None"),
    ({"process_index": 2, "process_count": 2}, r"process_index must be in \[0, 2\), got 2"),
])
def test_iterator_argument_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    make_iterator(**{"packing": False, **kwargs})


def test_restore_rejects_a_foreign_state():
  it = make_iterator(False)
  with pytest.raises(ValueError, match="keys 'epoch' and 'index'"):
    it.restore({"step": 3})
  with pytest.raises(ValueError, match=r"out of range: index must be in \[0, 13\]"):
    it.restore({"epoch": 0, "index": 99})


def test_no_sequences_is_an_error():
  with pytest.raises(ValueError, match="at least one sequence"):
    BatchIterator([], batch_size=2, seq_len=8, pad_id=0, process_index=0, process_count=1)


def test_plain_text_example_scores_every_token_after_bos():
  seq = batching.tokenize_example(Example("c", "", "Hello world.", target_delimiter=""), TOK, max_len=32)
  assert seq.tokens.tolist() == [TOK.bos_id] + TOK.encode("Hello world.") + [TOK.eos_id]
  assert seq.loss_mask.tolist() == [False] + [True] * 13
