"""Batched autoregressive decoding with the KV cache: greedy, temperature and top-k sampling.

    out = generate(config, params, [[2, 651, 6037], [2, 9259]], max_new_tokens=32)
    out.tokens   # (B, 32) int32: generated ids; after a row's EOS, `pad_id`
    out.lengths  # (B,) tokens before the stop (EOS not counted): `out.tokens[b, :out.lengths[b]]` is the text

How it runs (one jit-compiled program per (batch, prompt bucket, max_new_tokens, sampling mode); the
sampling mode is greedy, full sampling, or top-k sampling with k up to a power-of-two bucket >= 64; the
temperature, k, EOS ids and pad id are traced values):
  * Prompts are left-padded on the host to a bucket length P (a multiple of `prompt_bucket`), whatever
    padding the caller used, so every row's last prompt token sits in column P - 1 and one scalar cache
    index serves the whole batch. Positions skip the padding (0 at each row's first real token); the
    cache's key mask hides the padding slots.
  * Prefill: prompt tokens 0..P-2 go through `forward_with_cache` in one call. Their logits are unused,
    so XLA drops the (B, P, V) unembedding, which matters for a 262k vocabulary.
  * Decode: a `lax.while_loop` of single-token steps. Step i feeds the previous token (step 0: the last
    prompt token) and picks the next one. The loop ends when every row has emitted an EOS or after
    `max_new_tokens` steps; finished rows emit `pad_id`.
  * Weights for the loop are converted once per call, before it (`decode_weights`): matrices in the compute
    dtype, attention weights stored in the layout the step's matmuls read, so the compiled loop body copies
    no weight (see DECODE_PERMUTATIONS; tests/test_generation.py checks the optimized HLO).

Many prompts: `generate_batched` sorts them by length, runs fixed-size batches (one program per prompt
bucket) and returns the rows in the caller's order.

The cache holds P - 1 + max_new_tokens slots. Because each row's real tokens are contiguous in the
cache, the model's sliding window (on cache slots) equals the window on positions.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grow_jax.model.transformer import default_positions, forward_with_cache, init_cache
from grow_jax.model.config import ModelConfig
from grow_jax.types import Params


class GenerateOutput(NamedTuple):
  """Result of `generate`, as host numpy arrays.

  tokens:   (B, max_new_tokens) int32; a stopped row holds its EOS at `lengths[b]`, then `pad_id`.
  lengths:  (B,) int32, tokens generated before the stop token (EOS not counted).
  stopped:  (B,) bool, True where the row emitted an EOS.
  logprobs: (B, max_new_tokens) float32, log-probability of each emitted token under the model's
            untempered distribution (0 after the stop).
  """

  tokens: np.ndarray
  lengths: np.ndarray
  stopped: np.ndarray
  logprobs: np.ndarray


class TextStops(NamedTuple):
  """Stop strings as per-token masks (each (V,) bool), for decoding that ends where a caller will cut the text
  (e.g. answers cut at the first newline after leading whitespace is stripped, text_metrics.postprocess):

  contains:    the token's text contains a stop string
  text:        the token's text has a non-whitespace character
  after_text:  the token's text has a non-whitespace character before a stop string

  A row ends after the token that completes its first stop following some non-whitespace text; that token is
  kept (its text before the stop is part of the answer), so the cut text is exactly what decoding to the end
  would give, and the loop ends as soon as every row has its answer.
  """
  contains: np.ndarray
  text: np.ndarray
  after_text: np.ndarray


def round_up(n: int, multiple: int) -> int:
  """Smallest multiple of `multiple` that is >= max(n, 1)."""
  return max(multiple, -(-n // multiple) * multiple)


def prompts_to_lists(prompts, input_mask=None) -> list[list[int]]:
  """Token-id lists from a list of lists, or from a padded (B, T) array and its (B, T) mask.

  The mask may describe left or right padding (or any holes): the real tokens of a row are taken
  in order. Without a mask, every entry of the array is real.
  """
  if input_mask is None and isinstance(prompts, (list, tuple)) and (
      len(prompts) == 0 or np.ndim(prompts[0]) == 1):
    return [[int(t) for t in row] for row in prompts]
  tokens = np.asarray(prompts)
  if tokens.ndim != 2:
    raise ValueError(f"prompts: expected a list of token-id lists or a (batch, length) array, got an "
                     f"array of shape {tokens.shape}")
  mask = np.ones(tokens.shape, bool) if input_mask is None else np.asarray(input_mask, bool)
  if mask.shape != tokens.shape:
    raise ValueError(f"input_mask shape {mask.shape} does not match prompts shape {tokens.shape}")
  return [[int(t) for t in row[m]] for row, m in zip(tokens, mask)]


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, mask) of shape (len(rows), length): each row right-aligned, padding on the left."""
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for b, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"row {b} has {len(row)} tokens, more than the padded length {length}")
    if row:
      tokens[b, length - len(row):] = row
      mask[b, length - len(row):] = True
  return tokens, mask


def generate(config: ModelConfig, params: Params, prompts, *, max_new_tokens: int,
             input_mask=None, temperature: float = 0.0, top_k: int | None = None, rng=None,
             eos_id: int | Sequence[int] | None = None, pad_id: int | None = None,
             max_len: int | None = None, prompt_bucket: int = 32,
             text_stops: TextStops | None = None) -> GenerateOutput:
  """Continue each prompt by up to `max_new_tokens` tokens with the KV cache.

  Args:
    config, params: the model.
    prompts: a list of token-id lists (each non-empty, normally starting with BOS), or a padded (B, T)
      int array with `input_mask` (B, T) bool marking real tokens (left or right padding).
    max_new_tokens: decode steps at most.
    temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
    top_k: when sampling, keep only the k most likely tokens (top_k=1 is greedy).
    rng: a `jax.random.key`, required when temperature > 0; the same key gives the same samples.
    eos_id: token id(s) that stop a row (default `config.eos_token_id`).
    pad_id: id emitted after a row stops and used for padding (default `config.pad_token_id`).
    max_len: cap on prompt + generated tokens per row; longer prompts keep their last
      `max_len - max_new_tokens` tokens (lm-eval's left truncation).
    prompt_bucket: prompt lengths are padded up to a multiple of this, so batches of similar lengths
      share one compiled program.
    text_stops: also end a row once its text reaches a stop string (see TextStops); None: EOS only.

  Returns:
    GenerateOutput (host numpy arrays).

  Many prompts of mixed lengths: `generate_batched` sorts them by length and runs fixed-size batches.
  """
  options = _check_options(config, max_new_tokens, temperature, top_k, rng, eos_id, pad_id, max_len)
  rows = _truncate(_check_rows(prompts_to_lists(prompts, input_mask)), max_new_tokens, max_len)
  return _generate_rows(config, params, rows, None, rng, prompt_bucket, text_stops=text_stops, **options)


def generate_batched(config: ModelConfig, params: Params, prompts, *, batch_size: int, max_new_tokens: int,
                     input_mask=None, temperature: float = 0.0, top_k: int | None = None, rng=None,
                     eos_id: int | Sequence[int] | None = None, pad_id: int | None = None,
                     max_len: int | None = None, prompt_bucket: int = 32,
                     text_stops: TextStops | None = None) -> GenerateOutput:
  """`generate` over any number of prompts, `batch_size` rows at a time; results in the caller's order.

  The prompts are sorted by length (after `max_len` truncation), longest first, and cut into batches of
  `batch_size` consecutive prompts, so each batch pads only to the prompt bucket of its own longest prompt
  and its rows tend to finish together. Every batch has `batch_size` rows (the last one is filled with rows
  marked finished from the start, which never keep the decode loop running), so there is one compiled
  program per prompt bucket. Arguments are those of `generate`; with sampling, batch i uses
  `jax.random.fold_in(rng, i)`, so samples depend on the batching (greedy results do not).

  Returns:
    GenerateOutput with len(prompts) rows, row i for prompts[i] (no prompts: zero rows).
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
  options = _check_options(config, max_new_tokens, temperature, top_k, rng, eos_id, pad_id, max_len)
  rows = prompts_to_lists(prompts, input_mask)
  n = len(rows)
  result = GenerateOutput(np.full((n, max_new_tokens), options["pad_id"], np.int32), np.zeros((n,), np.int32),
                          np.zeros((n,), bool), np.zeros((n, max_new_tokens), np.float32))
  if not rows:
    return result
  rows = _truncate(_check_rows(rows), max_new_tokens, max_len)
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))        # stable: ties keep input order
  for b, start in enumerate(range(0, len(order), batch_size)):
    members = order[start:start + batch_size]
    batch = [rows[i] for i in members]
    fill = batch_size - len(batch)
    batch += [batch[-1]] * fill                                          # same bucket as the batch
    done = np.arange(batch_size) >= len(members)
    key = None if rng is None else jax.random.fold_in(rng, b)
    out = _generate_rows(config, params, batch, done, key, prompt_bucket, text_stops=text_stops, **options)
    for field, dest in zip(out, result):
      dest[members] = field[:len(members)]
  return result


def _check_options(config, max_new_tokens, temperature, top_k, rng, eos_id, pad_id, max_len) -> dict:
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a positive integer")
  if temperature < 0 or not math.isfinite(temperature):
    raise ValueError(f"temperature={temperature!r}: expected 0 (greedy) or a positive number")
  if top_k is not None and not 1 <= top_k <= config.vocab_size:
    raise ValueError(f"top_k={top_k!r}: expected None or 1..vocab_size={config.vocab_size}")
  if temperature != 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(seed)")
  if max_len is not None and max_len - max_new_tokens < 1:
    raise ValueError(f"max_len={max_len} leaves no room for a prompt with max_new_tokens={max_new_tokens}")
  eos_ids = _as_tuple(config.eos_token_id if eos_id is None else eos_id)
  pad_id = config.pad_token_id if pad_id is None else int(pad_id)
  return dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=top_k,
              eos_ids=eos_ids, pad_id=pad_id, room=None if max_len is None else max_len - max_new_tokens)


def _check_rows(rows: list[list[int]]) -> list[list[int]]:
  if not rows:
    raise ValueError("prompts is empty")
  empty = [b for b, row in enumerate(rows) if not row]
  if empty:
    raise ValueError(f"prompts {empty[:10]} have no tokens; start every prompt with BOS at least")
  return rows


def _truncate(rows: list[list[int]], max_new_tokens: int, max_len: int | None) -> list[list[int]]:
  if max_len is None:
    return rows
  return [row[-(max_len - max_new_tokens):] for row in rows]


def _generate_rows(config: ModelConfig, params: Params, rows: list[list[int]], done, rng, prompt_bucket: int, *,
                   max_new_tokens: int, temperature: float, top_k: int | None, eos_ids: tuple[int, ...],
                   pad_id: int, room: int | None, text_stops: TextStops | None = None) -> GenerateOutput:
  """One `_decode` call on checked, truncated rows; `done` (B,) bool or None marks filler rows."""
  greedy = temperature == 0
  length = round_up(max(len(row) for row in rows), prompt_bucket)
  if room is not None:
    length = min(length, room)
  tokens, mask = left_pad(rows, length, pad_id)
  if rng is None:
    rng = jax.random.key(0)
  if done is None:
    done = np.zeros((len(rows),), bool)
  # EOS ids padded (with repeats) to a multiple of 4 so a different stop set rarely recompiles.
  eos_ids = eos_ids + eos_ids[:1] * (-len(eos_ids) % 4)
  if text_stops is not None:
    text_stops = TextStops(*(jnp.asarray(np.asarray(m, bool)) for m in text_stops))
  out = _decode(params, jnp.asarray(tokens), jnp.asarray(mask), rng, jnp.float32(max(temperature, 1e-6)),
                jnp.asarray(eos_ids, jnp.int32), jnp.int32(pad_id), jnp.int32(top_k or 0), jnp.asarray(done),
                text_stops, config=config, max_new_tokens=max_new_tokens, top_k_bucket=_top_k_bucket(top_k, config, greedy),
                greedy=greedy, permutations=decode_permutations(params))
  tokens, lengths, stopped, logprobs = jax.device_get(out)
  return GenerateOutput(tokens, lengths, stopped, logprobs)


def _as_tuple(ids) -> tuple[int, ...]:
  if isinstance(ids, (int, np.integer)):
    return (int(ids),)
  ids = tuple(int(i) for i in ids)
  if not ids:
    raise ValueError("eos_id: expected a token id or a non-empty sequence of ids")
  return ids


def _top_k_bucket(top_k: int | None, config: ModelConfig, greedy: bool) -> int | None:
  """Static size of the top-k search: the next power of two >= top_k (at least 64, at most V)."""
  if greedy or top_k is None:
    return None
  return min(config.vocab_size, max(64, 1 << (top_k - 1).bit_length()))


def sample_logits(key, logits, temperature, top_k=None, top_k_bucket: int | None = None):
  """Sample ids (B,) from logits (B, V) / temperature, restricted to the top_k entries if given.

  top_k may be traced; `top_k_bucket` (static, >= top_k) bounds the search (default: top_k itself).
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    bucket = top_k if top_k_bucket is None else top_k_bucket
    best = jax.lax.top_k(logits, bucket)[0]                                        # (B, bucket)
    kth = jnp.take_along_axis(best, jnp.broadcast_to(jnp.asarray(top_k) - 1, (best.shape[0], 1)), axis=-1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# ---- weights for the decode loop ------------------------------------------------------------------------
# XLA assigns layouts after it hoists loop invariants, so a weight that a matmul of the loop body wants in
# another layout is transposed (copied) on every decode step: for Gemma 3 270M on CPU, all q, kv and
# attn_vec weights, every step. `_decode` stores each attention weight transposed once, before the loop,
# and the loop body views it through the inverse transpose, which XLA then compiles to a bitcast.
# The permutations are the layouts the platform's single-token matmuls read, found in the compiled loop
# (experiments/decode_hlo.py prints them): on XLA:CPU q as (D, N, H), kv as (C, K, H, D), attn_vec as
# (H, N, D). Each is its own inverse. Platforms not listed keep the weights as they are (unmeasured).
DECODE_PERMUTATIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "cpu": {"q_einsum": (1, 0, 2), "kv_einsum": (0, 1, 3, 2), "attn_vec_einsum": (1, 0, 2)},
}


def decode_permutations(params=None, platform: str | None = None) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """The (module name, permutation) pairs for the platform of `params` (default: JAX's default backend),
  as the hashable static argument of `_decode`."""
  if platform is None:
    leaf = next(iter(jax.tree.leaves(params)), None) if params is not None else None
    devices = getattr(leaf, "devices", None)
    platform = next(iter(devices())).platform if callable(devices) else jax.default_backend()
  return tuple(sorted(DECODE_PERMUTATIONS.get(platform, {}).items()))


def _permutation(path, permutations) -> tuple[int, ...] | None:
  names = [getattr(k, "key", None) for k in path]
  if len(names) >= 2 and names[-1] == "w":
    return dict(permutations).get(names[-2])
  return None


def decode_weights(config: ModelConfig, params: Params, permutations=()) -> Params:
  """The params as the decode loop stores them: matrices in the compute dtype (the model casts them to it
  anyway; norm scales stay as they are) and the weights of the modules named in `permutations` transposed.
  `model_weights` undoes the transposes: `forward` on `model_weights(decode_weights(c, p, perms), perms)`
  computes the same values as on `p`."""
  dtype = jnp.dtype(config.dtype)

  def convert(path, x):
    if getattr(path[-1], "key", None) == "scale" or not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    x = x.astype(dtype)
    perm = _permutation(path, permutations)
    return x if perm is None else jnp.transpose(x, perm)

  return jax.tree_util.tree_map_with_path(convert, params)


def model_weights(stored: Params, permutations=()) -> Params:
  """Inverse of the transposes of `decode_weights`: the params in the model's shapes."""

  def view(path, x):
    perm = _permutation(path, permutations)
    return x if perm is None else jnp.transpose(x, np.argsort(perm))

  return jax.tree_util.tree_map_with_path(view, stored)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k_bucket", "greedy",
                                             "permutations"))
def _decode(params, tokens, mask, rng, temperature, eos, pad_id, top_k, done, text_stops=None, *,
            config: ModelConfig, max_new_tokens: int, top_k_bucket: int | None, greedy: bool, permutations=()):
  """The compiled prefill + decode loop over left-padded (B, P) prompts (see the module docstring).
  `done` (B,) bool marks rows that are finished from the start (batch filler): they emit `pad_id`.
  `text_stops` (TextStops of (V,) masks, or None) also ends a row after its first text stop."""
  B, P = tokens.shape
  # Converted once per call, outside the loop; the loop body views them through `model_weights`.
  stored = decode_weights(config, params, permutations)
  cache = init_cache(config, B, P - 1 + max_new_tokens)
  # Slot P-1+i holds the token fed at step i: the last prompt token, then generated tokens (all real).
  key_mask = jnp.concatenate([mask, jnp.ones((B, max_new_tokens - 1), bool)], axis=1)
  positions = default_positions(mask)
  if P > 1:
    _, cache = forward_with_cache(config, params, tokens[:, :-1], positions[:, :-1], key_mask, cache)

  def cond(state):
    step, _, _, _, done, *_ = state
    return jnp.logical_and(step < max_new_tokens, jnp.logical_not(jnp.all(done)))

  def body(state):
    step, cache, token, position, done, lengths, out, out_logprobs, seen = state
    # The barrier ties the stored weights to the loop step, so XLA can neither hoist the view out of the
    # loop nor cancel it against the transposes of `decode_weights`.
    weights, _ = jax.lax.optimization_barrier((stored, step))
    logits, cache = forward_with_cache(config, model_weights(weights, permutations), token[:, None],
                                       position[:, None], key_mask, cache)
    logits = logits[:, -1]
    if greedy:
      new = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      new = sample_logits(jax.random.fold_in(rng, step), logits, temperature,
                          None if top_k_bucket is None else top_k, top_k_bucket)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), new[:, None], axis=-1)[:, 0]
    new = jnp.where(done, pad_id, new)
    is_eos = jnp.logical_and(jnp.isin(new, eos), jnp.logical_not(done))
    lengths = lengths + jnp.logical_not(jnp.logical_or(done, is_eos)).astype(jnp.int32)
    out = out.at[:, step].set(new)
    out_logprobs = out_logprobs.at[:, step].set(jnp.where(done, 0.0, logprob))
    finished = done | is_eos
    if text_stops is not None:               # the token is kept: its text before the stop is the answer's end
      ends = (seen & text_stops.contains[new]) | text_stops.after_text[new]
      seen = seen | text_stops.text[new]
      finished = finished | ends
    return step + 1, cache, new, position + 1, finished, lengths, out, out_logprobs, seen

  state = (jnp.int32(0), cache, tokens[:, -1], positions[:, -1], jnp.asarray(done, bool),
           jnp.zeros((B,), jnp.int32), jnp.full((B, max_new_tokens), pad_id, jnp.int32),
           jnp.zeros((B, max_new_tokens), jnp.float32), jnp.zeros((B,), bool))
  _, _, _, _, done, lengths, out, out_logprobs, _ = jax.lax.while_loop(cond, body, state)
  return out, lengths, done, out_logprobs


def decode_cache_size() -> int:
  """How many decode programs are compiled so far (for tests and benchmarks of recompilation)."""
  return _decode._cache_size()
