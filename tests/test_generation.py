"""Specification of `grow_jax.generation.generate`: cached decoding equals recomputing the full forward."""

import functools
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from grow_jax.model import generation
from grow_jax.model.generation import decode_cache_size, generate, generate_batched, prompts_to_lists
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


@pytest.mark.slow
def test_cached_greedy_equals_full_forward_recompute(params, prompts, reference):
  tokens, logprobs, _ = reference
  assert max(PROMPT_LENGTHS) + NEW > 2 * CONFIG.sliding_window
  out = generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=NO_EOS)
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_allclose(out.logprobs, logprobs, atol=1e-4)
  np.testing.assert_array_equal(out.lengths, NEW)
  assert not out.stopped.any()


@pytest.mark.slow
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


@pytest.mark.slow
def test_top_k_1_sampling_equals_greedy(params, prompts, reference):
  out = generate(CONFIG, params, prompts, max_new_tokens=NEW, eos_id=NO_EOS, temperature=0.7, top_k=1,
                 rng=jax.random.key(3))
  np.testing.assert_array_equal(out.tokens, reference[0])


@pytest.mark.slow
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


@pytest.mark.slow
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


def _decode_hlo():
  """experiments/decode_hlo.py (the loop-body weight-copy finder), loaded by path."""
  path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "decode_hlo.py"
  spec = importlib.util.spec_from_file_location("decode_hlo", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
@pytest.mark.parametrize("permuted", [True, False])
def test_decode_loop_copies_no_weight(params, permuted):
  """No per-step copy of any weight inside the compiled decode loop.

  XLA assigns layouts after hoisting loop invariants, so a weight the einsums need transposed (or sliced)
  is copied on every step: the MLP gating slices cost ~half a decode step of Gemma 3 270M on CPU (fixed in
  transformer.mlp_branch), the attention weights ~112 MiB of copies per step (fixed by storing them
  transposed for the loop: generation.decode_weights). Negative control (permuted=False): without the
  transposed storage the detector finds a copy of every attention weight of every layer.
  """
  decode_hlo = _decode_hlo()
  perms = generation.decode_permutations(params) if permuted else ()
  hlo, shapes = decode_hlo.compile_decode(CONFIG, 1, 8, 4, perms)
  copies, _ = decode_hlo.weight_copies(hlo, shapes)
  if permuted:
    assert dict(perms).keys() == {"q_einsum", "kv_einsum", "attn_vec_einsum"}
    assert not copies, f"the decode loop copies weight-sized arrays every step: {copies}"
  else:
    assert len(copies) == 3 * CONFIG.num_layers, copies


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_weights_are_the_model_weights(params, dtype):
  config = CONFIG.replace(dtype=dtype)
  perms = generation.decode_permutations(platform="cpu")
  stored = generation.decode_weights(config, params, perms)
  assert stored["layer_0"]["attn"]["q_einsum"]["w"].shape == (CONFIG.embed_dim, CONFIG.num_heads, CONFIG.head_dim)
  back = generation.model_weights(stored, perms)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(back)):
    name = jax.tree_util.keystr(path)
    expected = a if "scale" in name else a.astype(dtype)             # norm scales keep their dtype
    assert b.dtype == expected.dtype, name
    np.testing.assert_array_equal(np.asarray(b, np.float32), np.asarray(expected, np.float32), err_msg=name)


MIXED_LENGTHS = (40, 3, 33, 1, 12, 70, 5)


@pytest.fixture(scope="module")
def mixed_prompts():
  rng = np.random.default_rng(1)
  return [[2] + list(map(int, rng.integers(3, CONFIG.vocab_size, n - 1))) for n in MIXED_LENGTHS]


@pytest.mark.slow
def test_generate_batched_returns_rows_in_the_callers_order(params, mixed_prompts):
  """Each row equals `generate` on that prompt alone; one program per prompt bucket."""
  out = generation.generate_batched(CONFIG, params, mixed_prompts, batch_size=3, max_new_tokens=6, eos_id=NO_EOS)
  assert out.tokens.shape == (len(mixed_prompts), 6)
  for i, prompt in enumerate(mixed_prompts):
    alone = generate(CONFIG, params, [prompt], max_new_tokens=6, eos_id=NO_EOS)
    np.testing.assert_array_equal(out.tokens[i], alone.tokens[0], err_msg=f"prompt {i}")
    np.testing.assert_allclose(out.logprobs[i], alone.logprobs[0], atol=1e-4)
  np.testing.assert_array_equal(out.lengths, 6)
  before = decode_cache_size()
  generation.generate_batched(CONFIG, params, mixed_prompts[::-1], batch_size=3, max_new_tokens=6, eos_id=NO_EOS)
  assert decode_cache_size() == before                                 # same buckets, nothing new to compile


@pytest.mark.slow
def test_generate_batched_stops_rows_at_eos(params, mixed_prompts):
  first = generation.generate_batched(CONFIG, params, mixed_prompts, batch_size=4, max_new_tokens=8, eos_id=NO_EOS)
  eos = int(first.tokens[2, 1])
  out = generation.generate_batched(CONFIG, params, mixed_prompts, batch_size=4, max_new_tokens=8, eos_id=eos,
                                    pad_id=0)
  for i, row in enumerate(first.tokens):
    stop = int(np.argmax(row == eos)) if (row == eos).any() else 8
    assert out.lengths[i] == stop and out.stopped[i] == (stop < 8), i
    np.testing.assert_array_equal(out.tokens[i, :stop], row[:stop])
    np.testing.assert_array_equal(out.tokens[i, stop + 1:], 0)
  assert out.lengths[2] <= 1


@pytest.mark.slow
def test_rows_marked_done_emit_padding(params, prompts):
  """The batch filler of generate_batched: rows finished from the start emit pad_id and stop nothing."""
  rows = [list(p) for p in prompts]
  tokens, mask = generation.left_pad(rows, 32, 0)
  done = np.array([False, True, False, True])
  out = generation._decode(params, tokens, mask, jax.random.key(0), np.float32(1e-6), np.full((4,), NO_EOS, np.int32),
                           np.int32(7), np.int32(0), done, config=CONFIG, max_new_tokens=5, top_k_bucket=None,
                           greedy=True, permutations=generation.decode_permutations(params))
  out_tokens, lengths, stopped, logprobs = jax.device_get(out)
  reference = generate(CONFIG, params, rows, max_new_tokens=5, eos_id=NO_EOS)
  np.testing.assert_array_equal(out_tokens[~done], reference.tokens[~done])
  np.testing.assert_array_equal(out_tokens[done], 7)
  np.testing.assert_array_equal(lengths, np.where(done, 0, 5))
  np.testing.assert_array_equal(logprobs[done], 0.0)


def test_generate_batched_errors_and_empty_input(params):
  empty = generation.generate_batched(CONFIG, params, [], batch_size=4, max_new_tokens=3)
  assert empty.tokens.shape == (0, 3) and empty.lengths.shape == (0,)
  with pytest.raises(ValueError, match="batch_size"):
    generation.generate_batched(CONFIG, params, [[2, 5]], batch_size=0, max_new_tokens=2)
  with pytest.raises(ValueError, match="no tokens"):
    generation.generate_batched(CONFIG, params, [[2, 5], []], batch_size=2, max_new_tokens=2)


# ---- stopping at a stop string ---------------------------------------------------------------------------
class _Chars:
  """A stand-in tokenizer: ids map to '\\n', ' ' or a letter, so random models write text with newlines."""

  def decode(self, ids):
    return "".join("\n" if i % 7 == 0 else " " if i % 5 == 0 else "ab\n" if i % 11 == 0
                   else chr(97 + i % 26) for i in (int(x) for x in ids))


@pytest.mark.slow
def test_text_stops_end_rows_where_the_cut_text_is_complete():
  """Decoding that ends at the first stop after some text gives exactly the cut text of decoding to the end,
  and ends earlier."""
  from grow_jax.evaluation import generative, text_metrics
  config = get_preset("tiny", num_layers=2)
  params = init_params(config, jax.random.key(3))
  tok = _Chars()
  stops = generative.text_stops(tok, ("\n",), config.vocab_size)
  assert stops.contains[7] and not stops.text[7] and not stops.after_text[7]           # "\n"
  assert stops.contains[11] and stops.text[11] and stops.after_text[11]                # "ab\n"
  assert not stops.contains[1] and stops.text[1]                                       # "b"
  prompts = [[2] + list(np.random.default_rng(i).integers(3, config.vocab_size, 5 + i)) for i in range(12)]
  full = generate_batched(config, params, prompts, batch_size=4, max_new_tokens=24)
  early = generate_batched(config, params, prompts, batch_size=4, max_new_tokens=24, text_stops=stops)
  cut = lambda out, i: text_metrics.postprocess(tok.decode(out.tokens[i, :out.lengths[i]]), ("\n",))
  assert [cut(early, i) for i in range(12)] == [cut(full, i) for i in range(12)]
  assert early.lengths.sum() < full.lengths.sum()
