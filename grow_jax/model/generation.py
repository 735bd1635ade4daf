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

The cache holds P - 1 + max_new_tokens slots. Because each row's real tokens are contiguous in the
cache, the model's sliding window (on cache slots) equals the window on positions.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grow_jax.model.transformer import default_positions, forward_with_cache, init_cache
from grow_jax.model.config import ModelConfig

Params = dict[str, Any]


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
             max_len: int | None = None, prompt_bucket: int = 32) -> GenerateOutput:
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

  Returns:
    GenerateOutput (host numpy arrays).
  """
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a positive integer")
  if temperature < 0 or not math.isfinite(temperature):
    raise ValueError(f"temperature={temperature!r}: expected 0 (greedy) or a positive number")
  if top_k is not None and not 1 <= top_k <= config.vocab_size:
    raise ValueError(f"top_k={top_k!r}: expected None or 1..vocab_size={config.vocab_size}")
  greedy = temperature == 0
  if not greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(seed)")
  eos_ids = _as_tuple(config.eos_token_id if eos_id is None else eos_id)
  pad_id = config.pad_token_id if pad_id is None else int(pad_id)

  rows = prompts_to_lists(prompts, input_mask)
  if not rows:
    raise ValueError("prompts is empty")
  empty = [b for b, row in enumerate(rows) if not row]
  if empty:
    raise ValueError(f"prompts {empty[:10]} have no tokens; start every prompt with BOS at least")
  room = None
  if max_len is not None:
    room = max_len - max_new_tokens
    if room < 1:
      raise ValueError(f"max_len={max_len} leaves no room for a prompt with max_new_tokens={max_new_tokens}")
    rows = [row[-room:] for row in rows]
  length = round_up(max(len(row) for row in rows), prompt_bucket)
  if room is not None:
    length = min(length, room)
  tokens, mask = left_pad(rows, length, pad_id)
  if rng is None:
    rng = jax.random.key(0)
  # EOS ids padded (with repeats) to a multiple of 4 so a different stop set rarely recompiles.
  eos_ids = eos_ids + eos_ids[:1] * (-len(eos_ids) % 4)
  out = _decode(params, jnp.asarray(tokens), jnp.asarray(mask), rng, jnp.float32(max(temperature, 1e-6)),
                jnp.asarray(eos_ids, jnp.int32), jnp.int32(pad_id), jnp.int32(top_k or 0), config=config,
                max_new_tokens=int(max_new_tokens), top_k_bucket=_top_k_bucket(top_k, config, greedy),
                greedy=greedy)
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


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k_bucket", "greedy"))
def _decode(params, tokens, mask, rng, temperature, eos, pad_id, top_k, *, config: ModelConfig,
            max_new_tokens: int, top_k_bucket: int | None, greedy: bool):
  """The compiled prefill + decode loop over left-padded (B, P) prompts (see the module docstring)."""
  B, P = tokens.shape
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
    step, cache, token, position, done, lengths, out, out_logprobs = state
    logits, cache = forward_with_cache(config, params, token[:, None], position[:, None], key_mask, cache)
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
    return step + 1, cache, new, position + 1, done | is_eos, lengths, out, out_logprobs

  state = (jnp.int32(0), cache, tokens[:, -1], positions[:, -1], jnp.zeros((B,), bool),
           jnp.zeros((B,), jnp.int32), jnp.full((B, max_new_tokens), pad_id, jnp.int32),
           jnp.zeros((B, max_new_tokens), jnp.float32))
  _, _, _, _, done, lengths, out, out_logprobs = jax.lax.while_loop(cond, body, state)
  return out, lengths, done, out_logprobs


def decode_cache_size() -> int:
  """How many decode programs are compiled so far (for tests and benchmarks of recompilation)."""
  return _decode._cache_size()
