"""Generative scoring: greedy completions of string prompts, scored by exact match, BLEU or chrF."""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np

from grow_jax.evaluation import text_metrics
from grow_jax.evaluation.scoring import Metrics, Params, encode_text, example_field
from grow_jax.model.config import ModelConfig
from grow_jax.model.generation import TextStops, generate_batched


_STOPS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def text_stops(tokenizer, stop: tuple[str, ...], vocab_size: int) -> TextStops:
  """The per-token masks that end decoding where `text_metrics.postprocess(text, stop)` cuts (computed once
  per tokenizer: every id's text, decoded on its own)."""
  cached = _STOPS.setdefault(tokenizer, {})
  key = (stop, vocab_size)
  if key not in cached:
    ids = [[i] for i in range(vocab_size)]
    texts = (tokenizer.decode_batch(ids) if hasattr(tokenizer, "decode_batch")
             else [tokenizer.decode(i) for i in ids])
    contains = np.array([any(s in t for s in stop) for t in texts])
    text = np.array([bool(t.strip()) for t in texts])
    after_text = np.array([any(t[:t.find(s)].strip() for s in stop if s in t) for t in texts])
    cached[key] = TextStops(contains, text, after_text)
  return cached[key]


def generate_texts(config: ModelConfig, params: Params, tokenizer, prompts: Sequence[str], *,
                   max_new_tokens: int = 32, batch_size: int = 8, max_len: int | None = None,
                   stop: Sequence[str] = ("\n",), stop_ids: Sequence[int] = (),
                   prompt_bucket: int = 32) -> list[str]:
  """Greedy completions of string prompts ([BOS] + prompt), batched by prompt length, decoded and
  post-processed (cut at the first stop string, stripped). Decoding ends at the tokenizer's EOS, its
  `stop_ids` if it has them (Gemma: <end_of_turn>), any of `stop_ids`, or as soon as the text reaches a stop
  string (after non-whitespace text: exactly where the post-processing cuts, so the answers are those of
  decoding to `max_new_tokens`)."""
  eos = list(dict.fromkeys([int(tokenizer.eos_id), *map(int, getattr(tokenizer, "stop_ids", ())),
                            *map(int, stop_ids)]))
  encoded = [[int(tokenizer.bos_id)] + encode_text(tokenizer, p) for p in prompts]
  out = generate_batched(config, params, encoded, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         eos_id=eos, pad_id=int(tokenizer.pad_id), max_len=max_len, prompt_bucket=prompt_bucket,
                         text_stops=text_stops(tokenizer, tuple(stop), config.vocab_size) if stop else None)
  return [text_metrics.postprocess(tokenizer.decode([int(t) for t in out.tokens[i, :out.lengths[i]]]), stop)
          for i in range(len(encoded))]


def score_generation(config: ModelConfig, params: Params, tokenizer, examples: Sequence[Any], *,
                     metrics: Sequence[str] = ("exact_match",), ignore_case: bool = False,
                     **kwargs) -> Metrics:
  """Greedy-decode each example's prompt and score it against its references.

  metrics: any of 'exact_match', 'bleu', 'chrf' (sacrebleu corpus scores, 0..100).
  kwargs go to `generate_texts` (max_new_tokens, batch_size, max_len, stop, stop_ids, prompt_bucket).
  """
  check_metrics(metrics)
  prompts = [example_field(ex, "prompt", i, "generation") for i, ex in enumerate(examples)]
  references = references_of(examples)
  return score_predictions(generate_texts(config, params, tokenizer, prompts, **kwargs), references,
                           metrics=metrics, ignore_case=ignore_case)


def check_metrics(metrics: Sequence[str]) -> None:
  unknown = [m for m in metrics if m not in text_metrics.TEXT_METRICS]
  if unknown or not metrics:
    raise ValueError(f"metrics={list(metrics)}: expected some of {sorted(text_metrics.TEXT_METRICS)}")


def references_of(examples: Sequence[Any]) -> list:
  return [example_field(ex, "references", i, "generation") for i, ex in enumerate(examples)]


def score_predictions(predictions: Sequence[str], references: Sequence[Any], *,
                      metrics: Sequence[str] = ("exact_match",), ignore_case: bool = False) -> Metrics:
  """The metrics of post-processed predictions against their references (plus num_examples)."""
  check_metrics(metrics)
  results: Metrics = {}
  for name in metrics:
    if name == "exact_match":
      results[name] = text_metrics.exact_match(predictions, references, ignore_case=ignore_case)
    else:
      results[name] = text_metrics.TEXT_METRICS[name](predictions, references)
  results["num_examples"] = float(len(predictions))
  return results


# Sentence chrF in per-item records: 2 decimals (of 0..100).
CHRF_DECIMALS = 2


def prediction_items(ids: Sequence[str], predictions: Sequence[str], references: Sequence[Any], *,
                     metrics: Sequence[str] = ("exact_match",), ignore_case: bool = False) -> list[dict[str, Any]]:
  """Per example: {'id', 'prediction', 'reference' (the first), 'aliases' (the other references, when any)} and
  per metric: 'exact_match' / 'exact_match_norm' (0/1, as `score_predictions` counts them), 'chrf' (the sentence
  chrF, rounded) with 'chrf_stats', 'bleu_stats' (sacrebleu's sentence statistics, whose sums give the corpus
  score: `text_metrics.score_from_statistics`)."""
  check_metrics(metrics)
  refs = [[r] if isinstance(r, str) else list(r) for r in references]
  out = []
  for i, (prediction, alternatives) in enumerate(zip(predictions, refs, strict=True)):
    item = {"id": ids[i], "prediction": prediction, "reference": alternatives[0]}
    if len(alternatives) > 1:
      item["aliases"] = alternatives[1:]
    out.append(item)
  for name in metrics:
    if name in ("exact_match", "exact_match_norm"):
      kwargs = {"ignore_case": ignore_case} if name == "exact_match" else {}
      for item, prediction, alternatives in zip(out, predictions, refs):
        item[name] = int(text_metrics.TEXT_METRICS[name]([prediction], [alternatives], **kwargs))
    else:
      for item, stats in zip(out, text_metrics.sentence_statistics(name, predictions, refs)):
        item[f"{name}_stats"] = stats
        if name == "chrf":
          item["chrf"] = round(text_metrics.score_from_statistics(name, stats), CHRF_DECIMALS)
  return out
