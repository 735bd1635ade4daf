"""Scores of a text corpus: perplexity, and KL(base ‖ model) against a base model (drift).

Perplexity: each text is [BOS] + tokens, cut into disjoint windows of `max_len` predictions (lm-eval's rolling
windows with one token of context); token-level perplexity = exp(total NLL / total tokens).

KL(base ‖ model) caches the base model's final hidden states (B, T, D) per batch, not its logits: for
Gemma 3 270M that is 640 floats per token instead of 262,144. Each evaluation recomputes the base logits
from the cached hidden states and the base's (kept) embedding matrix, chunk by chunk next to the
model's, so the KL is exact in float32 and memory stays O(batch * chunk * V). The cache lives in memory
and optionally on disk or gs:// (`cache_dir`), keyed by a hash of the base config, base parameters (or a given
`base_id`) and the corpus tokens.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grow_jax import files
from grow_jax.evaluation.scoring import (Metrics, Params, Row, encode_text, make_batches, map_chunks,
                                         score_rows, scored_hidden)
from grow_jax.model.config import ModelConfig
from grow_jax.model.transformer import unembed

_log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("config",))
def _final_hidden(params, inputs, input_mask, score_positions, *, config: ModelConfig):
  return scored_hidden(config, params, inputs, input_mask, score_positions)


@functools.partial(jax.jit, static_argnames=("config", "base_softcap", "chunk"))
def _nll_and_kl(params, inputs, input_mask, score_positions, targets, base_hidden, base_embedding, *,
                config: ModelConfig, base_softcap: float | None, chunk: int):
  """Per scored position (B, W): the model's NLL of the next token and KL(base ‖ model) of the next-token
  distributions, from one forward pass."""
  hidden = scored_hidden(config, params, inputs, input_mask, score_positions)
  embedding = params["embedder"]["input_embedding"]

  def one(h, hb, t):
    logp = jax.nn.log_softmax(unembed(embedding, h, config.final_logit_softcap), axis=-1)
    logq = jax.nn.log_softmax(unembed(base_embedding, hb, base_softcap), axis=-1)
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    return nll, jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)

  return map_chunks(one, chunk, hidden, base_hidden.astype(hidden.dtype), targets)


def rolling_rows(tokens: Sequence[int], max_len: int) -> list[Row]:
  """Disjoint windows predicting tokens[1:], each at most `max_len` predictions, every token once.

  Window j feeds tokens[j*L : j*L + L] and predicts tokens[j*L + 1 : j*L + L + 1] (lm-eval's rolling
  windows with one token of context); tokens[0] is the BOS and is never predicted.
  """
  if max_len < 1:
    raise ValueError(f"max_len={max_len}: expected a positive integer")
  tokens = list(tokens)
  rows = []
  for a in range(0, len(tokens) - 1, max_len):
    end = min(a + max_len, len(tokens) - 1)
    rows.append(Row(tokens[a:end], tokens[a + 1:end + 1]))
  return rows


def corpus_rows(tokenizer, texts: Sequence[str], max_len: int) -> tuple[list[Row], int]:
  """Rolling windows of every text ([BOS] + tokens) and the corpus's UTF-8 byte count."""
  if not texts:
    raise ValueError("no texts to evaluate")
  rows = []
  for i, text in enumerate(texts):
    ids = encode_text(tokenizer, text)
    if not ids:
      raise ValueError(f"text {i} has no tokens: {text!r:.80}")
    rows += rolling_rows([int(tokenizer.bos_id)] + ids, max_len)
  return rows, sum(len(t.encode("utf-8")) for t in texts)


def perplexity_from_rows(config: ModelConfig, params: Params, rows: Sequence[Row], num_bytes: int | None = None,
                         **kwargs) -> Metrics:
  total, count, _ = score_rows(config, params, rows, **kwargs)
  nll, tokens = -float(total.sum()), int(count.sum())
  results = {"perplexity": math.exp(nll / tokens), "nll_per_token": nll / tokens, "num_tokens": float(tokens)}
  if num_bytes:
    results["bits_per_byte"] = nll / (math.log(2) * num_bytes)
  return results


def perplexity(config: ModelConfig, params: Params, tokenizer, texts: Sequence[str], *, max_len: int = 512,
               **kwargs) -> Metrics:
  """Token-level perplexity exp(total NLL / total tokens) of `texts`, plus nll_per_token and bits_per_byte."""
  rows, num_bytes = corpus_rows(tokenizer, texts, max_len)
  return perplexity_from_rows(config, params, rows, num_bytes, **kwargs)


# ---- KL(base ‖ model) --------------------------------------------------------------------------------
def params_fingerprint(params: Params) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes (about 1 s per GB on CPU)."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0])):
    array = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()


class BaseReference:
  """The base model's side of KL(base ‖ model) on a fixed corpus, computed once and cached.

  Holds the corpus batches, the base model's final hidden states per batch (float32, memory and
  optionally `cache_dir/kl_base_<key>.npz`) and the base embedding matrix. `kl_divergence` runs the
  model on the same batches and recomputes the base logits from the cached hidden states.
  """

  def __init__(self, base_config: ModelConfig, base_params: Params, rows: Sequence[Row], *,
               batch_size: int = 8, bucket: int = 32, logits_chunk: int = 64, cache_dir: str | None = None,
               base_id: str | None = None, num_bytes: int | None = None):
    self.base_config = base_config
    self.num_bytes = num_bytes
    self.logits_chunk = logits_chunk
    self.batches = make_batches(rows, batch_size=batch_size, bucket=bucket, chunk=logits_chunk,
                                pad_id=base_config.pad_token_id)
    self.embedding = base_params["embedder"]["input_embedding"]
    key = hashlib.sha256()
    key.update(base_config.to_json().encode())
    key.update((base_id or params_fingerprint(base_params)).encode())
    for batch in self.batches:
      for array in (batch.inputs, batch.input_mask, batch.score_positions):
        key.update(array.tobytes())
    self.key = key.hexdigest()[:24]
    start = time.time()
    path = os.path.join(cache_dir, f"kl_base_{self.key}.npz") if cache_dir else None     # local or gs://
    if path and files.as_path(path).exists():
      with files.as_path(path).open("rb") as f, np.load(f) as stored:
        self.hidden = [stored[f"batch_{i}"] for i in range(len(self.batches))]
      source = f"loaded from {path}"
    else:
      self.hidden = [np.asarray(jax.device_get(_final_hidden(base_params, b.inputs, b.input_mask,
                                                             b.score_positions, config=base_config)),
                                np.float32)
                     for b in self.batches]
      source = "computed"
      if path:
        files.write_with(path, lambda tmp: _savez(tmp, {f"batch_{i}": h for i, h in enumerate(self.hidden)}))
        source += f", saved to {path}"
    _log.info("KL base reference %s: %d batches, %.1f MiB of hidden states, %s in %.1f s", self.key,
              len(self.batches), self.nbytes / 2**20, source, time.time() - start)

  @classmethod
  def from_texts(cls, base_config: ModelConfig, base_params: Params, tokenizer, texts: Sequence[str], *,
                 max_len: int = 512, **kwargs) -> "BaseReference":
    rows, num_bytes = corpus_rows(tokenizer, texts, max_len)
    return cls(base_config, base_params, rows, num_bytes=num_bytes, **kwargs)

  @property
  def nbytes(self) -> int:
    return sum(h.nbytes for h in self.hidden)


def kl_divergence(config: ModelConfig, params: Params, reference: BaseReference) -> Metrics:
  """Mean per-token KL(base ‖ model) in nats over the reference corpus's predicted positions, and the model's
  perplexity on the same tokens (one forward pass serves both)."""
  if config.vocab_size != reference.base_config.vocab_size:
    raise ValueError(f"KL needs one vocabulary: model vocab_size={config.vocab_size}, base "
                     f"vocab_size={reference.base_config.vocab_size}")
  kl_total, nll_total, count, worst = 0.0, 0.0, 0, 0.0
  for batch, hidden in zip(reference.batches, reference.hidden):
    nll, kl = jax.device_get(_nll_and_kl(
        params, batch.inputs, batch.input_mask, batch.score_positions, batch.targets, hidden,
        reference.embedding, config=config, base_softcap=reference.base_config.final_logit_softcap,
        chunk=min(reference.logits_chunk, batch.targets.shape[1])))
    values = np.asarray(kl)[batch.score_mask]
    kl_total += float(values.sum(dtype=np.float64))
    nll_total += float(np.asarray(nll)[batch.score_mask].sum(dtype=np.float64))
    count += values.size
    worst = max(worst, float(values.max(initial=0.0)))
  out = {"kl": kl_total / count, "kl_max": worst, "perplexity": math.exp(nll_total / count),
         "nll_per_token": nll_total / count, "num_tokens": float(count)}
  if reference.num_bytes:
    out["bits_per_byte"] = nll_total / (math.log(2) * reference.num_bytes)
  return out


def _savez(path, arrays) -> None:
  with open(path, "wb") as f:        # a file object: np.savez would append ".npz" to a bare name
    np.savez(f, **arrays)
