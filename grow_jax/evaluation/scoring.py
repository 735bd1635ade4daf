"""Log-likelihood scoring (lm-evaluation-harness conventions): requests, multiple choice, partial scoring.

Inputs are `grow_jax.data.Example`s (fields prompt, choices, gold; contexts, continuation for partial
scoring; an optional target_delimiter) or token-id lists, and a tokenizer with `encode(text, add_bos=False)`,
`decode(ids)`, `bos_id`, `eos_id`, `pad_id`; every scorer returns a dict of floats.

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

Device work is batched and jit-compiled. Rows are sorted by length, grouped `batch_size` at a time,
right-padded to a length bucket (a multiple of `bucket`) and the last group is filled with empty rows,
so a task compiles one program per length bucket. Log-probs never materialise (B, T, V) logits: only
the scored positions' final hidden states are unembedded (a multiple-choice continuation, not its
context), `logits_chunk` positions at a time (a 262k vocabulary makes a (8, 512, V) float32 array 4 GiB).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grow_jax.model.config import ModelConfig
from grow_jax.model.generation import round_up
from grow_jax.model.transformer import forward, unembed
from grow_jax.types import Params

Metrics = dict[str, float]
# Log-likelihoods in per-item records are rounded to this many decimals (1e-4 nats: far below any real difference).
LL_DECIMALS = 4


class LogLikelihood(NamedTuple):
  """Score of one continuation: summed log-prob, its token count, and whether greedy decoding
  would have produced it exactly."""
  logprob: float
  num_tokens: int
  is_greedy: bool


def example_field(example: Any, name: str, index: int, kind: str) -> Any:
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
  gold = example_field(example, "gold", index, kind)
  if not isinstance(gold, (int, np.integer)) or not 0 <= gold < num_options:
    raise ValueError(f"{kind} example {index}: gold={gold!r} is not an index into its {num_options} options")
  return int(gold)


# ---- device side: log-probs from hidden states, chunk by chunk ---------------------------------------
def map_chunks(fn: Callable, chunk: int, *arrays):
  """fn over T-chunks of (B, T, ...) arrays, outputs (B, c, ...) re-joined to (B, T, ...)."""
  B, T = arrays[0].shape[:2]
  c = min(chunk, T)
  if T % c:
    raise ValueError(f"sequence length {T} is not a multiple of the logits chunk {c}")
  split = lambda a: a.reshape(B, T // c, c, *a.shape[2:]).swapaxes(0, 1)
  outs = jax.lax.map(lambda xs: fn(*xs), tuple(split(a) for a in arrays))
  return jax.tree.map(lambda o: o.swapaxes(0, 1).reshape(B, T, *o.shape[3:]), outs)


def scored_hidden(config: ModelConfig, params: Params, inputs, input_mask, score_positions):
  """Final hidden states (B, W, D) at the scored positions (B, W) only."""
  hidden = forward(config, params, inputs, input_mask=input_mask, return_hidden=True)
  return jnp.take_along_axis(hidden, score_positions[:, :, None], axis=1)


@functools.partial(jax.jit, static_argnames=("config", "chunk"))
def _target_logprobs(params, inputs, input_mask, score_positions, targets, *, config: ModelConfig, chunk: int):
  """(log p(target | inputs up to the position), target == argmax) at the scored positions, both (B, W)."""
  hidden = scored_hidden(config, params, inputs, input_mask, score_positions)
  embedding = params["embedder"]["input_embedding"]

  def one(h, t):
    logits = unembed(embedding, h, config.final_logit_softcap)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    return (jnp.take_along_axis(logprobs, t[..., None], axis=-1)[..., 0],
            jnp.argmax(logits, axis=-1) == t)

  return map_chunks(one, chunk, hidden, targets)


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
def encode_text(tokenizer, text: str) -> list[int]:
  return [int(t) for t in tokenizer.encode(text, add_bos=False)]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-eval's `_encode_pair` with BOS: ([BOS] + context tokens, continuation tokens)."""
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    continuation = context[-n_spaces:] + continuation
    context = context[:-n_spaces]
  bos = [int(tokenizer.bos_id)]
  if not context:
    return bos, encode_text(tokenizer, continuation)
  whole = encode_text(tokenizer, context + continuation)
  ctx = encode_text(tokenizer, context)
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
    context = example_field(ex, "prompt", i, "multiple-choice")
    choices = list(example_field(ex, "choices", i, "multiple-choice"))
    if len(choices) < 2:
      raise ValueError(f"multiple-choice example {i} has {len(choices)} choices; expected 2 or more")
    _gold(ex, i, "multiple-choice", len(choices))
    delimiter = _delimiter(ex, target_delimiter)
    requests += [(context, delimiter + c) for c in choices]
  return requests


def multiple_choice_metrics(examples: Sequence[Any], scores: Sequence[float],
                            length_unit: str = "chars") -> Metrics:
  """acc and acc_norm from the flattened per-choice log-likelihoods of `multiple_choice_requests`: the means of
  `multiple_choice_items`' per-example outcomes."""
  items = multiple_choice_items(examples, scores, length_unit)
  acc = [float(item["acc"]) for item in items]
  acc_norm = [float(item["acc_norm"]) for item in items]
  return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "num_examples": float(len(acc))}


def multiple_choice_items(examples: Sequence[Any], scores: Sequence[float], length_unit: str = "chars",
                          ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Per example, what `multiple_choice_metrics` averages: {'id', 'chosen' and 'chosen_norm' (argmax of the
  log-likelihoods, of them divided by the choice lengths), 'gold', 'acc' and 'acc_norm' (0/1), 'll' (the
  choices' log-likelihoods, rounded to LL_DECIMALS)}."""
  out, k = [], 0
  for i, ex in enumerate(examples):
    choices = list(example_field(ex, "choices", i, "multiple-choice"))
    gold = _gold(ex, i, "multiple-choice", len(choices))
    lls = np.asarray(scores[k:k + len(choices)], np.float64)
    k += len(choices)
    lengths = np.asarray([max(_length(c, length_unit), 1.0) for c in choices])
    chosen, chosen_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
    out.append({"id": ids[i] if ids is not None else str(i), "chosen": chosen, "chosen_norm": chosen_norm,
                "gold": gold, "acc": int(chosen == gold), "acc_norm": int(chosen_norm == gold),
                "ll": [round(float(x), LL_DECIMALS) for x in lls]})
  return out


def score_multiple_choice(config: ModelConfig, params: Params, tokenizer, examples: Sequence[Any], *,
                          target_delimiter: str = " ", length_unit: str = "chars",
                          **kwargs) -> Metrics:
  """acc / acc_norm of multiple-choice examples (fields prompt, choices, gold)."""
  lls = loglikelihood(config, params, tokenizer, multiple_choice_requests(examples, target_delimiter), **kwargs)
  return multiple_choice_metrics(examples, [ll.logprob for ll in lls], length_unit)


def partial_scoring_requests(examples: Sequence[Any], target_delimiter: str = " ") -> list[tuple[str, str]]:
  """WinoGrande partial scoring: (option-filled context, delimiter + shared continuation) per option."""
  requests = []
  for i, ex in enumerate(examples):
    contexts = list(example_field(ex, "contexts", i, "partial-scoring"))
    continuation = example_field(ex, "continuation", i, "partial-scoring")
    if len(contexts) < 2:
      raise ValueError(f"partial-scoring example {i} has {len(contexts)} contexts; expected 2 or more")
    _gold(ex, i, "partial-scoring", len(contexts))
    delimiter = _delimiter(ex, target_delimiter)
    requests += [(c, delimiter + continuation) for c in contexts]
  return requests


def partial_scoring_metrics(examples: Sequence[Any], scores: Sequence[float]) -> Metrics:
  acc, k = [], 0
  for i, ex in enumerate(examples):
    n = len(example_field(ex, "contexts", i, "partial-scoring"))
    gold = _gold(ex, i, "partial-scoring", n)
    acc.append(float(np.argmax(np.asarray(scores[k:k + n])) == gold))
    k += n
  return {"acc": float(np.mean(acc)), "num_examples": float(len(acc))}


def partial_scoring_items(examples: Sequence[Any], scores: Sequence[float],
                          ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Per example: {'id', 'chosen' (argmax over the options), 'gold', 'acc' (0/1), 'll' (rounded)}."""
  out, k = [], 0
  for i, ex in enumerate(examples):
    n = len(example_field(ex, "contexts", i, "partial-scoring"))
    gold = _gold(ex, i, "partial-scoring", n)
    lls = np.asarray(scores[k:k + n], np.float64)
    k += n
    chosen = int(np.argmax(lls))
    out.append({"id": ids[i] if ids is not None else str(i), "chosen": chosen, "gold": gold,
                "acc": int(chosen == gold), "ll": [round(float(x), LL_DECIMALS) for x in lls]})
  return out


def score_partial(config: ModelConfig, params: Params, tokenizer, examples: Sequence[Any], *,
                  target_delimiter: str = " ", **kwargs) -> Metrics:
  """acc of WinoGrande-style partial scoring (fields contexts, continuation, gold)."""
  lls = loglikelihood(config, params, tokenizer, partial_scoring_requests(examples, target_delimiter), **kwargs)
  return partial_scoring_metrics(examples, [ll.logprob for ll in lls])
