"""Scores of a text corpus: perplexity, and KL(base ‖ model) against a base model (drift).

Perplexity: each text is [BOS] + tokens, cut into disjoint windows of `max_len` predictions (lm-eval's rolling
windows with one token of context); token-level perplexity = exp(total NLL / total tokens).

KL(base ‖ model) caches the base model's final hidden states (B, T, D) per batch, not its logits: for
Gemma 3 270M that is 640 floats per token instead of 262,144. Each evaluation recomputes the base logits
from the cached hidden states and the base's (kept) embedding matrix, chunk by chunk next to the
model's, so the KL is exact in float32 and memory stays O(batch * chunk * V). The cache lives in memory
and optionally on disk or gs:// (`cache_dir`), keyed by a hash of the base config, base parameters (or a given
`base_id`) and the corpus tokens.

Where the reference lives: on the device mesh (the trainer's; one device without one), put there once. The
base parameters are placed sharded like the model's (`train/sharding.py` PARAM_RULES) for the one forward pass
that computes the hidden states, then dropped; the hidden states stay with their batch rows split over the
data axes (`data`, `fsdp`) and the embedding sharded like the model's embedder. The hidden states are kept in
the dtype the base computes them in (bfloat16 for a bfloat16 model): the model side casts them to its own
compute dtype, so the KL is the same as with a float32 copy. The disk file holds float32 (numpy has no
bfloat16), the same format as before. Process 0 alone writes it; which branch every process takes (load or
compute) is process 0's decision, broadcast, since computing is a collective.
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

from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from grow_jax import files, tree_paths
from grow_jax.errors import ShardingError
from grow_jax.evaluation.scoring import (Metrics, Params, Row, encode_text, make_batches, map_chunks,
                                         score_rows, scored_hidden)
from grow_jax.model.config import ModelConfig
from grow_jax.model.transformer import unembed
from grow_jax.train import sharding

_log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("config", "out_sharding"))
def _final_hidden(params, inputs, input_mask, score_positions, *, config: ModelConfig,
                  out_sharding: NamedSharding | None = None):
  """The base's final hidden states (B, W, D) at the scored positions, left where `out_sharding` says."""
  return _constrained(scored_hidden(config, params, inputs, input_mask, score_positions), out_sharding)


def _constrained(tree, out_sharding: NamedSharding | None):
  return tree if out_sharding is None else jax.lax.with_sharding_constraint(tree, out_sharding)


@functools.partial(jax.jit, static_argnames=("config", "base_softcap", "chunk", "out_sharding"))
def _nll_and_kl(params, inputs, input_mask, score_positions, targets, base_hidden, base_embedding, *,
                config: ModelConfig, base_softcap: float | None, chunk: int,
                out_sharding: NamedSharding | None = None):
  """Per scored position (B, W): the model's NLL of the next token and KL(base ‖ model) of the next-token
  distributions, from one forward pass; both replicated (`out_sharding`), so every process can read them."""
  hidden = scored_hidden(config, params, inputs, input_mask, score_positions)
  embedding = params["embedder"]["input_embedding"]

  def one(h, hb, t):
    logp = jax.nn.log_softmax(unembed(embedding, h, config.final_logit_softcap), axis=-1)
    logq = jax.nn.log_softmax(unembed(base_embedding, hb, base_softcap), axis=-1)
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    return nll, jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)

  out = map_chunks(one, chunk, hidden, base_hidden.astype(hidden.dtype), targets)
  return _constrained(out, out_sharding)


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
  rows, num_bytes, _ = document_rows(tokenizer, texts, max_len)
  return rows, num_bytes


def document_rows(tokenizer, texts: Sequence[str], max_len: int) -> tuple[list[Row], int, list[int]]:
  """`corpus_rows` and, per row, the index of the text it comes from."""
  if not texts:
    raise ValueError("no texts to evaluate")
  rows, docs = [], []
  for i, text in enumerate(texts):
    ids = encode_text(tokenizer, text)
    if not ids:
      raise ValueError(f"text {i} has no tokens: {text!r:.80}")
    windows = rolling_rows([int(tokenizer.bos_id)] + ids, max_len)
    rows += windows
    docs += [i] * len(windows)
  return rows, sum(len(t.encode("utf-8")) for t in texts), docs


# Per-document sums of NLL / KL in item records: 4 decimals (nats).
NLL_DECIMALS = 4


def document_items(ids: Sequence[str], texts: Sequence[str], row_docs: Sequence[int],
                   per_row: dict[str, np.ndarray]) -> list[dict]:
  """Per text: {'id', 'bytes' (UTF-8), 'tokens' (predicted), and per row statistic summed over the text's
  windows: 'nll' and 'kl' (nats, rounded to NLL_DECIMALS); 'kl_max' is a maximum}. `per_row`: {name: (rows,)
  array}, with 'tokens'."""
  docs = np.asarray(row_docs)
  out = []
  for i, text in enumerate(texts):
    mine = docs == i
    item = {"id": ids[i], "bytes": len(text.encode("utf-8")), "tokens": int(per_row["tokens"][mine].sum())}
    for name, values in sorted(per_row.items()):
      if name == "kl_max":
        item[name] = round(float(values[mine].max(initial=0.0)), NLL_DECIMALS)
      elif name != "tokens":
        item[name] = round(float(values[mine].sum(dtype=np.float64)), NLL_DECIMALS)
    out.append(item)
  return out


def perplexity_from_rows(config: ModelConfig, params: Params, rows: Sequence[Row], num_bytes: int | None = None,
                         **kwargs) -> Metrics:
  total, count, _ = score_rows(config, params, rows, **kwargs)
  return perplexity_metrics(total, count, num_bytes)


def perplexity_metrics(total: np.ndarray, count: np.ndarray, num_bytes: int | None = None) -> Metrics:
  """Perplexity, nll_per_token, num_tokens (and bits_per_byte) from per-row summed log-probs and token counts."""
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


def reference_mesh() -> Mesh:
  """The mesh of a reference built without one: this process's first device alone (where a jit of host
  arrays runs anyway)."""
  return Mesh(np.asarray(jax.local_devices()[:1]).reshape((1,) * len(sharding.MESH_AXES)), sharding.MESH_AXES,
              axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES))


def _base_shardings(params: Params, mesh: Mesh):
  """The model's sharding rules for the base parameters; a leaf whose dims this mesh does not divide (the
  base's MLP may be narrower than the grown model the mesh was chosen for) is replicated instead."""
  def one(path, leaf):
    spec = sharding.spec_for(path)
    try:
      sharding.check_spec(path, leaf.shape, spec, mesh)
    except ShardingError:
      spec = P()
    return NamedSharding(mesh, spec)

  return tree_paths.map_with_path(one, params)


def _put(x, target: NamedSharding) -> jax.Array:
  """A leaf (host array, the same on every process, or a jax.Array) as a global array with `target`."""
  if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
    return jax.device_put(x, target)
  return sharding.put_global(np.asarray(x), target)


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole of a global array on this host (an all-gather across processes: every process calls it)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _decided_by_process_0(value: bool) -> bool:
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


class BaseReference:
  """The base model's side of KL(base ‖ model) on a fixed corpus, computed once and cached.

  Holds the corpus batches and, on `mesh` (default: `reference_mesh()`), the base model's final hidden
  states per batch (`hidden`: jax.Arrays in the base's compute dtype, rows over the data axes; also
  `cache_dir/kl_base_<key>.npz` in float32) and the base embedding matrix (`embedding`, sharded like the
  model's). `kl_divergence` runs the model on the same batches and recomputes the base logits from them.
  `batch_size` must be a multiple of the mesh's data * fsdp size (the trainer checks eval.batch_size so).
  """

  def __init__(self, base_config: ModelConfig, base_params: Params, rows: Sequence[Row], *,
               batch_size: int = 8, bucket: int = 32, logits_chunk: int = 64, cache_dir: str | None = None,
               base_id: str | None = None, num_bytes: int | None = None, mesh: Mesh | None = None,
               row_docs: Sequence[int] | None = None):
    self.base_config = base_config
    self.num_bytes = num_bytes
    self.num_rows = len(rows)
    self.row_docs = list(row_docs) if row_docs is not None else list(range(len(rows)))   # row -> its text
    self.logits_chunk = logits_chunk
    self.mesh = mesh if mesh is not None else reference_mesh()
    groups = sharding.data_parallel_size(self.mesh)
    if batch_size % groups:
      raise ShardingError(f"KL reference: batch_size={batch_size} is not divisible by the data-parallel size "
                          f"data*fsdp={groups} (mesh {sharding.describe(self.mesh)}); expected a multiple of {groups}")
    self.rows_sharding = NamedSharding(self.mesh, P(sharding.BATCH_AXES))
    self.replicated = sharding.replicated(self.mesh)
    self.batches = make_batches(rows, batch_size=batch_size, bucket=bucket, chunk=logits_chunk,
                                pad_id=base_config.pad_token_id)
    key = hashlib.sha256()
    key.update(base_config.to_json().encode())
    key.update((base_id or params_fingerprint(base_params)).encode())
    for batch in self.batches:
      for array in (batch.inputs, batch.input_mask, batch.score_positions):
        key.update(array.tobytes())
    self.key = key.hexdigest()[:24]
    start = time.time()
    path = os.path.join(cache_dir, f"kl_base_{self.key}.npz") if cache_dir else None     # local or gs://
    shardings = _base_shardings(base_params, self.mesh)
    dtype = jnp.dtype(base_config.dtype)
    if path and _decided_by_process_0(files.as_path(path).exists()):
      with files.as_path(path).open("rb") as f, np.load(f) as stored:
        self.hidden = [_put(stored[f"batch_{i}"].astype(dtype), self.rows_sharding) for i in range(len(self.batches))]
      self.embedding = _put(base_params["embedder"]["input_embedding"], shardings["embedder"]["input_embedding"])
      source = f"loaded from {path}"
    else:
      placed = jax.tree.map(_put, base_params, shardings)
      self.hidden = [_final_hidden(placed, b.inputs, b.input_mask, b.score_positions, config=base_config,
                                   out_sharding=self.rows_sharding) for b in self.batches]
      self.embedding = placed["embedder"]["input_embedding"]
      del placed                                     # only the embedding stays on the devices
      source = "computed"
      if path:
        stored = {f"batch_{i}": _to_host(h).astype(np.float32) for i, h in enumerate(self.hidden)}   # every process
        if jax.process_index() == 0:                 # one writer per file
          files.write_with(path, lambda tmp: _savez(tmp, stored))
          source += f", saved to {path}"
    _log.info("KL base reference %s: %d batches, %.1f MiB of hidden states (%s) and a %s embedding on mesh %s, "
              "%s in %.1f s", self.key, len(self.batches), self.nbytes / 2**20, dtype.name,
              "x".join(map(str, self.embedding.shape)), sharding.describe(self.mesh), source, time.time() - start)

  @classmethod
  def from_texts(cls, base_config: ModelConfig, base_params: Params, tokenizer, texts: Sequence[str], *,
                 max_len: int = 512, **kwargs) -> "BaseReference":
    rows, num_bytes, row_docs = document_rows(tokenizer, texts, max_len)
    return cls(base_config, base_params, rows, num_bytes=num_bytes, row_docs=row_docs, **kwargs)

  @property
  def nbytes(self) -> int:
    """Bytes of the cached hidden states (all batches, the whole mesh)."""
    return sum(h.size * h.dtype.itemsize for h in self.hidden)


def kl_divergence(config: ModelConfig, params: Params, reference: BaseReference) -> Metrics:
  """Mean per-token KL(base ‖ model) in nats over the reference corpus's predicted positions, and the model's
  perplexity on the same tokens (one forward pass serves both)."""
  return kl_scores(config, params, reference)[0]


def kl_scores(config: ModelConfig, params: Params, reference: BaseReference) -> tuple[Metrics, dict[str, np.ndarray]]:
  """`kl_divergence`'s metrics and, per row of the reference corpus, its summed 'nll' and 'kl', 'kl_max' and
  'tokens' (`document_items` gathers them by text)."""
  if config.vocab_size != reference.base_config.vocab_size:
    raise ValueError(f"KL needs one vocabulary: model vocab_size={config.vocab_size}, base "
                     f"vocab_size={reference.base_config.vocab_size}")
  per_row = {name: np.zeros(reference.num_rows, dtype) for name, dtype in
             (("nll", np.float64), ("kl", np.float64), ("kl_max", np.float64), ("tokens", np.int64))}
  kl_total, nll_total, count, worst = 0.0, 0.0, 0, 0.0
  for batch, hidden in zip(reference.batches, reference.hidden):
    nll, kl = jax.device_get(_nll_and_kl(
        params, batch.inputs, batch.input_mask, batch.score_positions, batch.targets, hidden,
        reference.embedding, config=config, base_softcap=reference.base_config.final_logit_softcap,
        chunk=min(reference.logits_chunk, batch.targets.shape[1]), out_sharding=reference.replicated))
    nll, kl = np.asarray(nll), np.asarray(kl)
    values = kl[batch.score_mask]
    kl_total += float(values.sum(dtype=np.float64))
    nll_total += float(nll[batch.score_mask].sum(dtype=np.float64))
    count += values.size
    worst = max(worst, float(values.max(initial=0.0)))
    for b, i in enumerate(batch.index):
      if i >= 0:
        m = batch.score_mask[b]
        per_row["nll"][i] = float(nll[b][m].sum(dtype=np.float64))
        per_row["kl"][i] = float(kl[b][m].sum(dtype=np.float64))
        per_row["kl_max"][i] = float(kl[b][m].max(initial=0.0))
        per_row["tokens"][i] = int(m.sum())
  out = {"kl": kl_total / count, "kl_max": worst, "perplexity": math.exp(nll_total / count),
         "nll_per_token": nll_total / count, "num_tokens": float(count)}
  if reference.num_bytes:
    out["bits_per_byte"] = nll_total / (math.log(2) * reference.num_bytes)
  return out, per_row


def _savez(path, arrays) -> None:
  with open(path, "wb") as f:        # a file object: np.savez would append ".npz" to a bare name
    np.savez(f, **arrays)
