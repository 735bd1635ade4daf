"""Evaluators: log-likelihood scoring, generative scoring, perplexity and KL(base ‖ model).

Everything takes plain Python inputs (strings, token-id lists) and a duck-typed tokenizer with
`encode(text, add_bos=False) -> list[int]`, `decode(ids) -> str`, `bos_id`, `eos_id`, `pad_id`; every
evaluator returns a dict of floats.

Conventions (lm-evaluation-harness, v0.4):
  * A (context, continuation) request is tokenized as lm-eval's `_encode_pair`: trailing spaces of the
    context move to the continuation; `whole = encode(context + continuation)`, `ctx = encode(context)`,
    continuation tokens = `whole[len(ctx):]`; BOS is prepended (lm-eval does so for Gemma). Its score is
    the sum of the continuation tokens' log-probs; sequences longer than `max_len + 1` lose tokens on
    the left.
  * Multiple choice: continuation = target_delimiter + choice (the example's own `target_delimiter` if it
    has one, else the task's, default " "); `acc` = argmax of the summed
    log-prob, `acc_norm` = argmax of summed log-prob / len(choice). lm-eval's code divides by the
    choice's length in *characters* (`float(len(choice))`); `length_unit="bytes"` divides by its UTF-8
    byte length instead (identical for ASCII).
  * WinoGrande partial scoring: one context per option (the sentence up to the blank, filled in), one
    shared continuation (the rest of the sentence); `acc` = argmax over options of the continuation's
    log-prob.
  * Perplexity: each text is [BOS] + tokens, cut into disjoint windows of `max_len` predictions (lm-eval's
    rolling windows with one token of context); token-level perplexity = exp(total NLL / total tokens).

Device work is batched and jit-compiled. Rows are sorted by length, grouped `batch_size` at a time,
right-padded to a length bucket (a multiple of `bucket`) and the last group is filled with empty rows,
so a task compiles one program per length bucket. Log-probs never materialise (B, T, V) logits: only
the scored positions' final hidden states are unembedded (a multiple-choice continuation, not its
context), `logits_chunk` positions at a time (a 262k vocabulary makes a (8, 512, V) float32 array 4 GiB).

KL(base ‖ model) caches the base model's final hidden states (B, T, D) per batch, not its logits: for
Gemma 3 270M that is 640 floats per token instead of 262,144. Each evaluation recomputes the base logits
from the cached hidden states and the base's (kept) embedding matrix, chunk by chunk next to the
model's, so the KL is exact in float32 and memory stays O(batch * chunk * V). The cache lives in memory
and optionally on disk (`cache_dir`), keyed by a hash of the base config, base parameters (or a given
`base_id`) and the corpus tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grow_jax.evaluation import text_metrics as metrics_text
from grow_jax.model.generation import generate, round_up
from grow_jax.model.transformer import forward
from grow_jax.model.config import ModelConfig

Params = dict[str, Any]
Metrics = dict[str, float]

_log = logging.getLogger(__name__)


# ---- examples ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MultipleChoice:
  """A question scored by the log-likelihood of each choice after the context."""
  context: str
  choices: Sequence[str]
  gold: int


@dataclasses.dataclass(frozen=True)
class PartialScoring:
  """WinoGrande-style: option-filled contexts, one shared continuation scored after each."""
  contexts: Sequence[str]
  continuation: str
  gold: int


@dataclasses.dataclass(frozen=True)
class GenerationExample:
  """A prompt to complete greedily, and its reference answer(s)."""
  prompt: str
  references: str | Sequence[str]


class LogLikelihood(NamedTuple):
  """Score of one continuation: summed log-prob, its token count, and whether greedy decoding
  would have produced it exactly."""
  logprob: float
  num_tokens: int
  is_greedy: bool


def _field(example: Any, name: str, index: int, kind: str) -> Any:
  """example.name or example[name], with an error naming the example when absent."""
  if isinstance(example, Mapping):
    if name in example:
      return example[name]
  elif hasattr(example, name):
    return getattr(example, name)
  raise ValueError(f"{kind} example {index} has no field {name!r}: got {example!r:.200}")


def _delimiter(example: Any, default: str) -> str:
  """The example's own `target_delimiter` when it carries one (grow_jax.data examples do), else default."""
  value = example.get("target_delimiter") if isinstance(example, Mapping) else getattr(example, "target_delimiter", None)
  return default if value is None else value


def _gold(example: Any, index: int, kind: str, num_options: int) -> int:
  gold = _field(example, "gold", index, kind)
  if not isinstance(gold, (int, np.integer)) or not 0 <= gold < num_options:
    raise ValueError(f"{kind} example {index}: gold={gold!r} is not an index into its {num_options} options")
  return int(gold)


# ---- device side: log-probs from hidden states, chunk by chunk ---------------------------------------
def unembed(embedding, hidden, softcap: float | None = None):
  """Logits (B, T, V) float32 from final-norm hidden states (B, T, D): as `model.forward` computes them."""
  logits = jnp.einsum("BTD,VD->BTV", hidden, embedding.astype(hidden.dtype)).astype(jnp.float32)
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  return logits


def _map_chunks(fn: Callable, chunk: int, *arrays):
  """fn over T-chunks of (B, T, ...) arrays, outputs (B, c, ...) re-joined to (B, T, ...)."""
  B, T = arrays[0].shape[:2]
  c = min(chunk, T)
  if T % c:
    raise ValueError(f"sequence length {T} is not a multiple of the logits chunk {c}")
  split = lambda a: a.reshape(B, T // c, c, *a.shape[2:]).swapaxes(0, 1)
  outs = jax.lax.map(lambda xs: fn(*xs), tuple(split(a) for a in arrays))
  return jax.tree.map(lambda o: o.swapaxes(0, 1).reshape(B, T, *o.shape[3:]), outs)


def _scored_hidden(config: ModelConfig, params: Params, inputs, input_mask, score_positions):
  """Final hidden states (B, W, D) at the scored positions (B, W) only."""
  hidden = forward(config, params, inputs, input_mask=input_mask, return_hidden=True)
  return jnp.take_along_axis(hidden, score_positions[:, :, None], axis=1)


@functools.partial(jax.jit, static_argnames=("config", "chunk"))
def _target_logprobs(params, inputs, input_mask, score_positions, targets, *, config: ModelConfig, chunk: int):
  """(log p(target | inputs up to the position), target == argmax) at the scored positions, both (B, W)."""
  hidden = _scored_hidden(config, params, inputs, input_mask, score_positions)
  embedding = params["embedder"]["input_embedding"]

  def one(h, t):
    logits = unembed(embedding, h, config.final_logit_softcap)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    return (jnp.take_along_axis(logprobs, t[..., None], axis=-1)[..., 0],
            jnp.argmax(logits, axis=-1) == t)

  return _map_chunks(one, chunk, hidden, targets)


@functools.partial(jax.jit, static_argnames=("config",))
def _final_hidden(params, inputs, input_mask, score_positions, *, config: ModelConfig):
  return _scored_hidden(config, params, inputs, input_mask, score_positions)


@functools.partial(jax.jit, static_argnames=("config", "base_softcap", "chunk"))
def _kl_per_position(params, inputs, input_mask, score_positions, base_hidden, base_embedding, *,
                     config: ModelConfig, base_softcap: float | None, chunk: int):
  """KL(base ‖ model) of the next-token distributions at the scored positions, (B, W)."""
  hidden = _scored_hidden(config, params, inputs, input_mask, score_positions)
  embedding = params["embedder"]["input_embedding"]

  def one(h, hb):
    logp = jax.nn.log_softmax(unembed(embedding, h, config.final_logit_softcap), axis=-1)
    logq = jax.nn.log_softmax(unembed(base_embedding, hb, base_softcap), axis=-1)
    return jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)

  return _map_chunks(one, chunk, hidden, base_hidden.astype(hidden.dtype))


# ---- host side: rows and batches ---------------------------------------------------------------------
class Row(NamedTuple):
  """One scored sequence: model inputs, their next-token targets, and the first scored position."""
  inputs: Sequence[int]
  targets: Sequence[int]
  first_scored: int = 0


@dataclasses.dataclass
class Batch:
  """Rows as numpy arrays: inputs right-padded to (B, T); the scored positions of each row gathered into
  (B, W) (W <= T: a continuation is scored without unembedding its context); `index[b]` is the row's
  position in the caller's list, -1 for filler rows."""
  index: np.ndarray            # (B,)
  inputs: np.ndarray           # (B, T) int32
  input_mask: np.ndarray       # (B, T) bool
  score_positions: np.ndarray  # (B, W) int32, positions in [0, T)
  targets: np.ndarray          # (B, W) int32, the token predicted at each scored position
  score_mask: np.ndarray       # (B, W) bool


def bucket_length(n: int, bucket: int, chunk: int) -> int:
  """Padded length for n tokens: a multiple of `bucket`, and of `chunk` once longer than it."""
  length = round_up(n, bucket)
  return round_up(length, chunk) if length > chunk else length


def make_batches(rows: Sequence[Row], *, batch_size: int, bucket: int = 32, chunk: int = 64,
                 score_bucket: int = 8, pad_id: int = 0) -> list[Batch]:
  """Group rows (longest first) into full batches of length-bucketed arrays (see `Batch`)."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: expected a positive integer")
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))
  batches = []
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    for i in members:
      row = rows[i]
      if len(row.targets) != len(row.inputs) or not 0 <= row.first_scored <= len(row.inputs):
        raise ValueError(f"row {i}: {len(row.inputs)} inputs, {len(row.targets)} targets, "
                         f"first_scored={row.first_scored}")
    T = bucket_length(max(len(rows[i].inputs) for i in members), bucket, chunk)
    W = min(T, bucket_length(max(len(rows[i].inputs) - rows[i].first_scored for i in members),
                             score_bucket, chunk))
    batch = Batch(index=np.full((batch_size,), -1, np.int64),
                  inputs=np.full((batch_size, T), pad_id, np.int32),
                  input_mask=np.zeros((batch_size, T), bool),
                  score_positions=np.zeros((batch_size, W), np.int32),
                  targets=np.full((batch_size, W), pad_id, np.int32),
                  score_mask=np.zeros((batch_size, W), bool))
    for b, i in enumerate(members):
      row = rows[i]
      n, first = len(row.inputs), row.first_scored
      batch.index[b] = i
      batch.inputs[b, :n] = row.inputs
      batch.input_mask[b, :n] = True
      batch.score_positions[b, :n - first] = np.arange(first, n)
      batch.targets[b, :n - first] = row.targets[first:]
      batch.score_mask[b, :n - first] = True
    batches.append(batch)
  return batches


def score_rows(config: ModelConfig, params: Params, rows: Sequence[Row], *, batch_size: int = 8,
               bucket: int = 32, logits_chunk: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per row: summed log-prob of the scored targets, their count, and whether all are the argmax."""
  total = np.zeros(len(rows), np.float64)
  count = np.zeros(len(rows), np.int64)
  greedy = np.zeros(len(rows), bool)
  for batch in make_batches(rows, batch_size=batch_size, bucket=bucket, chunk=logits_chunk,
                            pad_id=config.pad_token_id):
    logprobs, is_argmax = jax.device_get(_target_logprobs(
        params, batch.inputs, batch.input_mask, batch.score_positions, batch.targets, config=config,
        chunk=min(logits_chunk, batch.targets.shape[1])))
    for b, i in enumerate(batch.index):
      if i >= 0:
        m = batch.score_mask[b]
        total[i] = float(np.sum(logprobs[b][m], dtype=np.float64))
        count[i] = int(m.sum())
        greedy[i] = bool(np.all(is_argmax[b][m]))
  return total, count, greedy


# ---- log-likelihood requests (lm-eval conventions) ---------------------------------------------------
def _encode(tokenizer, text: str) -> list[int]:
  return [int(t) for t in tokenizer.encode(text, add_bos=False)]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-eval's `_encode_pair` with BOS: ([BOS] + context tokens, continuation tokens)."""
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    continuation = context[-n_spaces:] + continuation
    context = context[:-n_spaces]
  bos = [int(tokenizer.bos_id)]
  if not context:
    return bos, _encode(tokenizer, continuation)
  whole = _encode(tokenizer, context + continuation)
  ctx = _encode(tokenizer, context)
  return bos + ctx, whole[len(ctx):]


def request_row(context_ids: Sequence[int], continuation_ids: Sequence[int], max_len: int) -> Row:
  """The scored row of a token-level request, truncated on the left to `max_len` inputs."""
  if not continuation_ids:
    raise ValueError("a continuation with no tokens cannot be scored (check the request's strings)")
  if len(continuation_ids) > max_len:
    raise ValueError(f"continuation of {len(continuation_ids)} tokens does not fit max_len={max_len}")
  whole = (list(context_ids) + list(continuation_ids))[-(max_len + 1):]
  inputs, targets = whole[:-1], whole[1:]
  return Row(inputs, targets, len(inputs) - len(continuation_ids))


def loglikelihood_tokens(config: ModelConfig, params: Params,
                         requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_len: int = 512,
                         batch_size: int = 8, bucket: int = 32,
                         logits_chunk: int = 64) -> list[LogLikelihood]:
  """Score token-level (context_ids, continuation_ids) requests; the context must be non-empty
  (start it with BOS)."""
  for i, (ctx, _) in enumerate(requests):
    if not ctx:
      raise ValueError(f"request {i} has an empty context: start it with BOS")
  rows = [request_row(ctx, cont, max_len) for ctx, cont in requests]
  total, count, greedy = score_rows(config, params, rows, batch_size=batch_size, bucket=bucket,
                                    logits_chunk=logits_chunk)
  return [LogLikelihood(float(t), int(c), bool(g)) for t, c, g in zip(total, count, greedy)]


def loglikelihood(config: ModelConfig, params: Params, tokenizer, requests: Sequence[tuple[str, str]],
                  **kwargs) -> list[LogLikelihood]:
  """Score (context, continuation) string requests as lm-eval's `loglikelihood` does."""
  return loglikelihood_tokens(config, params, [encode_pair(tokenizer, c, x) for c, x in requests], **kwargs)


def _length(text: str, unit: str) -> float:
  if unit == "chars":
    return float(len(text))
  if unit == "bytes":
    return float(len(text.encode("utf-8")))
  raise ValueError(f"length_unit={unit!r}: expected 'chars' (lm-eval's acc_norm) or 'bytes'")


def multiple_choice_requests(examples: Sequence[Any], target_delimiter: str = " ") -> list[tuple[str, str]]:
  """The (context, delimiter + choice) requests of multiple-choice examples, flattened in order."""
  requests = []
  for i, ex in enumerate(examples):
    context = _field(ex, "context", i, "multiple-choice")
    choices = list(_field(ex, "choices", i, "multiple-choice"))
    if len(choices) < 2:
      raise ValueError(f"multiple-choice example {i} has {len(choices)} choices; expected 2 or more")
    _gold(ex, i, "multiple-choice", len(choices))
    delimiter = _delimiter(ex, target_delimiter)
    requests += [(context, delimiter + c) for c in choices]
  return requests


def multiple_choice_metrics(examples: Sequence[Any], scores: Sequence[float],
                            length_unit: str = "chars") -> Metrics:
  """acc and acc_norm from the flattened per-choice log-likelihoods of `multiple_choice_requests`."""
  acc, acc_norm, k = [], [], 0
  for i, ex in enumerate(examples):
    choices = list(_field(ex, "choices", i, "multiple-choice"))
    gold = _gold(ex, i, "multiple-choice", len(choices))
    lls = np.asarray(scores[k:k + len(choices)], np.float64)
    k += len(choices)
    lengths = np.asarray([max(_length(c, length_unit), 1.0) for c in choices])
    acc.append(float(np.argmax(lls) == gold))
    acc_norm.append(float(np.argmax(lls / lengths) == gold))
  return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "num_examples": float(len(acc))}


def score_multiple_choice(config: ModelConfig, params: Params, tokenizer, examples: Sequence[Any], *,
                          target_delimiter: str = " ", length_unit: str = "chars",
                          **kwargs) -> Metrics:
  """acc / acc_norm of multiple-choice examples (fields context, choices, gold)."""
  lls = loglikelihood(config, params, tokenizer, multiple_choice_requests(examples, target_delimiter), **kwargs)
  return multiple_choice_metrics(examples, [ll.logprob for ll in lls], length_unit)


def partial_scoring_requests(examples: Sequence[Any], target_delimiter: str = " ") -> list[tuple[str, str]]:
  """WinoGrande partial scoring: (option-filled context, delimiter + shared continuation) per option."""
  requests = []
  for i, ex in enumerate(examples):
    contexts = list(_field(ex, "contexts", i, "partial-scoring"))
    continuation = _field(ex, "continuation", i, "partial-scoring")
    if len(contexts) < 2:
      raise ValueError(f"partial-scoring example {i} has {len(contexts)} contexts; expected 2 or more")
    _gold(ex, i, "partial-scoring", len(contexts))
    delimiter = _delimiter(ex, target_delimiter)
    requests += [(c, delimiter + continuation) for c in contexts]
  return requests


def partial_scoring_metrics(examples: Sequence[Any], scores: Sequence[float]) -> Metrics:
  acc, k = [], 0
  for i, ex in enumerate(examples):
    n = len(_field(ex, "contexts", i, "partial-scoring"))
    gold = _gold(ex, i, "partial-scoring", n)
    acc.append(float(np.argmax(np.asarray(scores[k:k + n])) == gold))
    k += n
  return {"acc": float(np.mean(acc)), "num_examples": float(len(acc))}


def score_partial(config: ModelConfig, params: Params, tokenizer, examples: Sequence[Any], *,
                  target_delimiter: str = " ", **kwargs) -> Metrics:
  """acc of WinoGrande-style partial scoring (fields contexts, continuation, gold)."""
  lls = loglikelihood(config, params, tokenizer, partial_scoring_requests(examples, target_delimiter), **kwargs)
  return partial_scoring_metrics(examples, [ll.logprob for ll in lls])


# ---- generative scoring ------------------------------------------------------------------------------
def generate_texts(config: ModelConfig, params: Params, tokenizer, prompts: Sequence[str], *,
                   max_new_tokens: int = 32, batch_size: int = 8, max_len: int | None = None,
                   stop: Sequence[str] = ("\n",), stop_ids: Sequence[int] = (),
                   prompt_bucket: int = 32) -> list[str]:
  """Greedy completions of string prompts ([BOS] + prompt), decoded and post-processed
  (cut at the first stop string, stripped). Decoding ends at the tokenizer's EOS, its `stop_ids` if it
  has them (Gemma: <end_of_turn>), or any of `stop_ids`."""
  eos = list(dict.fromkeys([int(tokenizer.eos_id), *map(int, getattr(tokenizer, "stop_ids", ())),
                            *map(int, stop_ids)]))
  encoded = [[int(tokenizer.bos_id)] + _encode(tokenizer, p) for p in prompts]
  order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
  texts: list[str] = [""] * len(encoded)
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    batch = [encoded[i] for i in members]
    batch += [[int(tokenizer.bos_id)]] * (batch_size - len(batch))   # fill: one program per bucket
    out = generate(config, params, batch, max_new_tokens=max_new_tokens, eos_id=eos,
                   pad_id=int(tokenizer.pad_id), max_len=max_len, prompt_bucket=prompt_bucket)
    for b, i in enumerate(members):
      text = tokenizer.decode([int(t) for t in out.tokens[b, :out.lengths[b]]])
      texts[i] = metrics_text.postprocess(text, stop)
  return texts


def score_generation(config: ModelConfig, params: Params, tokenizer, examples: Sequence[Any], *,
                     metrics: Sequence[str] = ("exact_match",), ignore_case: bool = False,
                     **kwargs) -> Metrics:
  """Greedy-decode each example's prompt and score it against its references.

  metrics: any of 'exact_match', 'bleu', 'chrf' (sacrebleu corpus scores, 0..100).
  kwargs go to `generate_texts` (max_new_tokens, batch_size, max_len, stop, stop_ids, prompt_bucket).
  """
  unknown = [m for m in metrics if m not in metrics_text.TEXT_METRICS]
  if unknown or not metrics:
    raise ValueError(f"metrics={list(metrics)}: expected some of {sorted(metrics_text.TEXT_METRICS)}")
  prompts = [_field(ex, "prompt", i, "generation") for i, ex in enumerate(examples)]
  references = [_field(ex, "references", i, "generation") for i, ex in enumerate(examples)]
  predictions = generate_texts(config, params, tokenizer, prompts, **kwargs)
  results: Metrics = {}
  for name in metrics:
    if name == "exact_match":
      results[name] = metrics_text.exact_match(predictions, references, ignore_case=ignore_case)
    else:
      results[name] = metrics_text.TEXT_METRICS[name](predictions, references)
  results["num_examples"] = float(len(predictions))
  return results


# ---- perplexity --------------------------------------------------------------------------------------
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
    ids = _encode(tokenizer, text)
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
               base_id: str | None = None):
    self.base_config = base_config
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
    path = os.path.join(cache_dir, f"kl_base_{self.key}.npz") if cache_dir else None
    if path and os.path.exists(path):
      with np.load(path) as stored:
        self.hidden = [stored[f"batch_{i}"] for i in range(len(self.batches))]
      source = f"loaded from {path}"
    else:
      self.hidden = [np.asarray(jax.device_get(_final_hidden(base_params, b.inputs, b.input_mask,
                                                             b.score_positions, config=base_config)),
                                np.float32)
                     for b in self.batches]
      source = "computed"
      if path:
        _atomic_savez(path, {f"batch_{i}": h for i, h in enumerate(self.hidden)})
        source += f", saved to {path}"
    _log.info("KL base reference %s: %d batches, %.1f MiB of hidden states, %s in %.1f s", self.key,
              len(self.batches), self.nbytes / 2**20, source, time.time() - start)

  @classmethod
  def from_texts(cls, base_config: ModelConfig, base_params: Params, tokenizer, texts: Sequence[str], *,
                 max_len: int = 512, **kwargs) -> "BaseReference":
    rows, _ = corpus_rows(tokenizer, texts, max_len)
    return cls(base_config, base_params, rows, **kwargs)

  @property
  def nbytes(self) -> int:
    return sum(h.nbytes for h in self.hidden)


def _atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb"):
  """Write through `write(file)` to a temporary file renamed into place: readers never see half a file."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp.", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)            # mkstemp creates 0600; give the file ordinary permissions
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _atomic_savez(path: str, arrays: Mapping[str, np.ndarray]):
  _atomic_write(path, lambda f: np.savez(f, **arrays))


def kl_divergence(config: ModelConfig, params: Params, reference: BaseReference) -> Metrics:
  """Mean per-token KL(base ‖ model) in nats over the reference corpus's predicted positions."""
  if config.vocab_size != reference.base_config.vocab_size:
    raise ValueError(f"KL needs one vocabulary: model vocab_size={config.vocab_size}, base "
                     f"vocab_size={reference.base_config.vocab_size}")
  total, count, worst = 0.0, 0, 0.0
  for batch, hidden in zip(reference.batches, reference.hidden):
    kl = np.asarray(jax.device_get(_kl_per_position(
        params, batch.inputs, batch.input_mask, batch.score_positions, hidden, reference.embedding,
        config=config, base_softcap=reference.base_config.final_logit_softcap,
        chunk=min(reference.logits_chunk, batch.targets.shape[1]))))
    values = kl[batch.score_mask]
    total += float(values.sum(dtype=np.float64))
    count += values.size
    worst = max(worst, float(values.max(initial=0.0)))
  return {"kl": total / count, "kl_max": worst, "num_tokens": float(count)}


# ---- tasks, the evaluator and results ----------------------------------------------------------------
TASK_KINDS = ("multiple_choice", "partial", "generation", "perplexity", "kl")

_TASK_OPTIONS = {
    "multiple_choice": {"target_delimiter", "length_unit"},
    "partial": {"target_delimiter"},
    "generation": {"metrics", "ignore_case", "max_new_tokens", "stop", "stop_ids"},
    "perplexity": set(),
    "kl": set(),
}


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """A named evaluation: its kind (one of TASK_KINDS), examples, and kind-specific options.

  examples by kind: multiple_choice -> MultipleChoice-like records (context, choices, gold);
  partial -> PartialScoring-like (contexts, continuation, gold); generation -> GenerationExample-like
  (prompt, references); perplexity, kl -> strings.
  options: multiple_choice {target_delimiter, length_unit}; partial {target_delimiter};
  generation {metrics, ignore_case, max_new_tokens, stop, stop_ids}.
  """
  name: str
  kind: str
  examples: Sequence[Any]
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in TASK_KINDS:
      raise ValueError(f"task {self.name!r}: kind={self.kind!r}, expected one of {list(TASK_KINDS)}")
    unknown = sorted(set(self.options) - _TASK_OPTIONS[self.kind])
    if unknown:
      raise ValueError(f"task {self.name!r} ({self.kind}): unknown option(s) {unknown}; known: "
                       f"{sorted(_TASK_OPTIONS[self.kind])}")
    if not self.examples:
      raise ValueError(f"task {self.name!r} has no examples")


class Evaluator:
  """Scores models on a fixed list of tasks; build once, call with each (config, params) to score.

  Tokenization and the KL base reference are prepared on first use and kept, so calling it every few
  hundred training steps pays only for the model's forward passes.

  Args:
    tokenizer: duck-typed tokenizer (encode(text, add_bos=False), decode, bos_id, eos_id, pad_id).
    tasks: EvalTasks (unique names).
    base: (config, params) of the base model, needed by 'kl' tasks.
    base_id: a stable name of the base weights for the KL disk cache key (default: hash the params).
    batch_size, max_len, bucket, logits_chunk: batching (see the module docstring).
    cache_dir: where the KL base hidden states are stored (None: memory only).
  """

  def __init__(self, tokenizer, tasks: Sequence[EvalTask], *, base: tuple[ModelConfig, Params] | None = None,
               base_id: str | None = None, batch_size: int = 8, max_len: int = 512, bucket: int = 32,
               logits_chunk: int = 64, cache_dir: str | None = None):
    names = [t.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
      raise ValueError(f"task names must be unique; repeated: {repeated}")
    if base is None and any(t.kind == "kl" for t in tasks):
      raise ValueError(f"task(s) {[t.name for t in tasks if t.kind == 'kl']} compute KL(base ‖ model) and "
                       "need base=(base_config, base_params)")
    self.tokenizer, self.tasks, self.base, self.base_id = tokenizer, list(tasks), base, base_id
    self.batch = dict(batch_size=batch_size, bucket=bucket, logits_chunk=logits_chunk)
    self.max_len, self.cache_dir = max_len, cache_dir
    self._prepared: dict[str, Any] = {}

  def _prepare(self, task: EvalTask):
    """Token-level inputs of a task (params-independent), computed once."""
    if task.name in self._prepared:
      return self._prepared[task.name]
    opts, tok = task.options, self.tokenizer
    if task.kind in ("multiple_choice", "partial"):
      delimiter = opts.get("target_delimiter", " ")
      requests = (multiple_choice_requests(task.examples, delimiter) if task.kind == "multiple_choice"
                  else partial_scoring_requests(task.examples, delimiter))
      prepared = [request_row(*encode_pair(tok, c, x), self.max_len) for c, x in requests]
    elif task.kind == "perplexity":
      prepared = corpus_rows(tok, task.examples, self.max_len)
    elif task.kind == "kl":
      base_config, base_params = self.base
      prepared = BaseReference.from_texts(base_config, base_params, tok, task.examples, max_len=self.max_len,
                                          cache_dir=self.cache_dir, base_id=self.base_id, **self.batch)
    else:
      prepared = None
    self._prepared[task.name] = prepared
    return prepared

  def evaluate_task(self, config: ModelConfig, params: Params, task: EvalTask) -> Metrics:
    prepared, opts = self._prepare(task), task.options
    if task.kind == "multiple_choice":
      total, _, _ = score_rows(config, params, prepared, **self.batch)
      return multiple_choice_metrics(task.examples, total, opts.get("length_unit", "chars"))
    if task.kind == "partial":
      total, _, _ = score_rows(config, params, prepared, **self.batch)
      return partial_scoring_metrics(task.examples, total)
    if task.kind == "perplexity":
      rows, num_bytes = prepared
      return perplexity_from_rows(config, params, rows, num_bytes, **self.batch)
    if task.kind == "kl":
      return kl_divergence(config, params, prepared)
    gen_opts = {k: v for k, v in opts.items() if k not in ("metrics", "ignore_case")}
    return score_generation(config, params, self.tokenizer, task.examples,
                            metrics=tuple(opts.get("metrics", ("exact_match",))),
                            ignore_case=opts.get("ignore_case", False), batch_size=self.batch["batch_size"],
                            max_len=self.max_len, **gen_opts)

  def eval_fn(self, config: ModelConfig, task: str | None = None) -> Callable[[Params], Metrics]:
    """`params -> metrics` (the trainer's evaluator shape): one task's metrics, or with no task name
    every task's as {"<task>/<metric>": value}."""
    if task is not None:
      [match] = [t for t in self.tasks if t.name == task] or [None]
      if match is None:
        raise ValueError(f"no task {task!r}; tasks: {[t.name for t in self.tasks]}")
      return lambda params: self.evaluate_task(config, params, match)
    return lambda params: {f"{name}/{metric}": value for name, metrics in self(config, params).items()
                           for metric, value in metrics.items()}

  def __call__(self, config: ModelConfig, params: Params) -> dict[str, Metrics]:
    results = {}
    for task in self.tasks:
      start = time.time()
      results[task.name] = self.evaluate_task(config, params, task)
      _log.info("eval %s: %s (%.1f s)", task.name, results[task.name], time.time() - start)
    return results


def write_results(results: Mapping[str, Mapping[str, float]], path: str):
  """Write results as JSON, atomically (a temporary file renamed into place)."""
  _atomic_write(path, lambda f: f.write(json.dumps(results, indent=2, sort_keys=True) + "\n"), mode="w")


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A plain-text table: one line per (task, metric)."""
  lines = [f"{'task':<24} {'metric':<16} {'value':>12}", "-" * 54]
  for task, metrics in results.items():
    for name, value in metrics.items():
      lines.append(f"{task:<24} {name:<16} {value:>12.6g}")
  return "\n".join(lines)


def evaluate_all(config: ModelConfig, params: Params, tokenizer, tasks: Sequence[EvalTask], *,
                 out: str | None = None, **kwargs) -> dict[str, Metrics]:
  """Score one model on `tasks`; write {task: {metric: value}} to `out` as JSON if given.

  kwargs go to `Evaluator` (base, base_id, batch_size, max_len, bucket, logits_chunk, cache_dir).
  """
  results = Evaluator(tokenizer, tasks, **kwargs)(config, params)
  if out:
    write_results(results, out)
  return results
