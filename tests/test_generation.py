"""Specification of `grow_jax.generation.generate`: cached decoding equals recomputing the full forward."""

import functools
import math
import re

import jax
import numpy as np
import pytest

from grow_jax.model import generation
from grow_jax.model.generation import decode_cache_size, generate, prompts_to_lists
from grow_jax.model.transformer import forward, init_params
from grow_jax.model.config import get_preset

CONFIG = get_preset("tiny")   # sliding_window 8: prompts + generation below run past it
NEW = 14
PROMPT_LENGTHS = (3, 11, 6, 1)
NO_EOS = 10_000               # an id the model never emits


def lively_params(config, seed=0):
  """Random params with a small embedding and large block weights: diverse tokens, attention matters."""
  params = init_params(config, jax.random.key(seed))

  def scale(path, x):
    name = jax.tree_util.keystr(path)
    return x * 0.125 if "embedding" in name else x if "scale" in name else x * 5

  return jax.tree_util.tree_map_with_path(scale, params)


@pytest.fixture(scope="module")
def params():
  return lively_params(CONFIG)


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  return [[2] + list(map(int, rng.integers(3, CONFIG.vocab_size, n - 1))) for n in PROMPT_LENGTHS]


def full_forward_decode(config, params, prompts, steps):
  """Reference: greedy tokens and their log-probs by re-running the whole sequence at every step."""
  fwd = jax.jit(functools.partial(forward, config))
  seqs = [list(p) for p in prompts]
  width = max(len(p) for p in prompts) + steps
  logprobs = np.zeros((len(seqs), steps), np.float32)
  first_logits = None
  for step in range(steps):
    tokens = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), bool)
    for b, s in enumerate(seqs):
      tokens[b, :len(s)], mask[b, :len(s)] = s, True
    logits = np.asarray(fwd(params, tokens, input_mask=mask))
    if first_logits is None:
      first_logits = np.stack([logits[b, len(s) - 1] for b, s in enumerate(seqs)])
    for b, s in enumerate(seqs):
      row = jax.nn.log_softmax(logits[b, len(s) - 1])
      s.append(int(np.argmax(row)))
      logprobs[b, step] = row[s[-1]]
  return np.array([s[len(p):] for s, p in zip(seqs, prompts)]), logprobs, first_logits


@pytest.fixture(scope="module")
def reference(params, prompts):
  return full_forward_decode(CONFIG, params, prompts, NEW)


def padded(prompts, side):
  width = max(map(len, prompts)) + 2
  tokens = np.zeros((len(prompts), width), np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for b, p in enumerate(prompts):
    sl = slice(0, len(p)) if side == "right" else slice(width - len(p), width)
    tokens[b, sl], mask[b, sl] = p, True
  return tokens, mask


def test_cached_greedy_equals_full_forward_recompute(params, prompts, reference):
  tokens, logprobs, _ = reference
  assert max(PROMPT_LENGTHS) + NEW > 2 * CONFIG.sliding_window
  out = generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=NO_EOS)
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_allclose(out.logprobs, logprobs, atol=1e-4)
  np.testing.assert_array_equal(out.lengths, NEW)
  assert not out.stopped.any()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_array_input_equals_list_input(params, prompts, reference, side):
  tokens, mask = padded(prompts, side)
  assert prompts_to_lists(tokens, mask) == prompts
  out = generate(CONFIG, params, tokens, input_mask=mask, max_new_tokens=NEW, eos_id=NO_EOS)
  np.testing.assert_array_equal(out.tokens, reference[0])


def test_reference_depends_on_the_sliding_window(params, prompts, reference):
  """Negative control: without the window the same sequences score differently, so the test above
  would catch a cache that ignored the window."""
  _, logprobs, _ = reference
  _, unwindowed, _ = full_forward_decode(CONFIG.replace(sliding_window=1024), params, prompts, NEW)
  assert np.abs(unwindowed - logprobs).max() > 1e-2


def test_eos_stops_a_row_and_it_emits_pad_after(params, prompts, reference):
  tokens = reference[0]
  eos = int(tokens[1, 3])
  first = [int(np.argmax(row == eos)) if (row == eos).any() else NEW for row in tokens]
  out = generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=eos, pad_id=0)
  for b, stop in enumerate(first):
    assert out.lengths[b] == stop
    assert out.stopped[b] == (stop < NEW)
    np.testing.assert_array_equal(out.tokens[b, :stop], tokens[b, :stop])
    if stop < NEW:
      assert out.tokens[b, stop] == eos
      np.testing.assert_array_equal(out.tokens[b, stop + 1:], 0)
      np.testing.assert_array_equal(out.logprobs[b, stop + 1:], 0.0)
  assert out.lengths[1] <= 3


def test_top_k_1_sampling_equals_greedy(params, prompts, reference):
  out = generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=NO_EOS, temperature=0.7, top_k=1,
                 rng=jax.random.key(3))
  np.testing.assert_array_equal(out.tokens, reference[0])


def test_sampling_is_reproducible_and_stays_in_the_top_k(params, prompts, reference):
  sample = lambda seed: generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=NO_EOS, temperature=2.0,
                                 top_k=3, rng=jax.random.key(seed)).tokens
  a, b, c = sample(7), sample(7), sample(8)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  # The first sampled token of every row is among that row's 3 most likely next tokens.
  for b, first_logits in enumerate(reference[2]):
    top3 = set(np.argsort(-first_logits)[:3].tolist())
    assert {int(a[b, 0]), int(c[b, 0])} <= top3


def test_one_program_per_prompt_bucket(params, prompts):
  generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=NO_EOS)
  before = decode_cache_size()
  shorter = [p[:2] for p in prompts]                     # same bucket (32), batch size and length
  generate(CONFIG, params, shorter, max_new_tokens=NEW, eos_id=[NO_EOS, 5], pad_id=3)
  assert decode_cache_size() == before


def test_max_len_keeps_the_end_of_long_prompts(params, prompts):
  cut = generate(CONFIG, params, prompts, max_new_tokens=NEW, max_len=NEW + 5, eos_id=NO_EOS)
  tail = generate(CONFIG, params, [p[-5:] for p in prompts], max_new_tokens=NEW, eos_id=NO_EOS)
  np.testing.assert_array_equal(cut.tokens, tail.tokens)


def test_errors_name_the_problem(params):
  with pytest.raises(ValueError, match="no tokens"):
    generate(CONFIG, params, [[2, 5], []], max_new_tokens=2)
  with pytest.raises(ValueError, match="rng"):
    generate(CONFIG, params, [[2, 5]], max_new_tokens=2, temperature=1.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(CONFIG, params, [[2, 5]], max_new_tokens=0)
  with pytest.raises(ValueError, match="does not match"):
    generate(CONFIG, params, np.ones((2, 3), np.int32), input_mask=np.ones((2, 4), bool), max_new_tokens=2)


def test_decode_loop_does_not_copy_mlp_weights(params):
  """No per-step copy of an MLP weight inside the compiled decode loop.

  XLA assigns layouts after hoisting loop invariants, so a weight the einsums need transposed (or
  sliced) is copied on every step; for Gemma 3 270M on CPU the gating slices cost ~half a decode step.
  (The attention weights are still transposed every step: removing that changed f32 rounding enough
  to break tests/test_step.py::test_grad_accumulation_equals_big_batch.)
  """
  args = (np.zeros((1, 8), np.int32), np.ones((1, 8), bool), jax.random.key(0), np.float32(1e-6),
          np.zeros((4,), np.int32), np.int32(0), np.int32(0))
  hlo = generation._decode.lower(params, *args, config=CONFIG, max_new_tokens=4, top_k_bucket=None,
                                 greedy=True).compile().as_text()
  weight_sizes = {math.prod(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if "mlp" in jax.tree_util.keystr(path)}
  computations = re.split(r"\n(?=\S.*\{\n)", hlo)
  body = max(computations, key=lambda c: c.count("get-tuple-element"))  # the loop body: the widest state
  ops = re.findall(r"= \w+\[([\d,]+)\]\S* (copy|transpose|fusion)\(", body)
  copies = [shape for shape, _ in ops if math.prod(map(int, shape.split(","))) in weight_sizes]
  assert not copies, f"the decode loop copies weight-sized arrays every step: {copies}"
