"""Text metrics on generated strings: post-processing, exact match, and sacrebleu's corpus BLEU / chrF.

References are given per example, as one string or a sequence of alternatives. BLEU and chrF are
sacrebleu's own corpus scores (0..100), with its default settings (13a tokenisation; chrF n=6, beta=2).
Per sentence, `sentence_statistics` gives sacrebleu's sufficient statistics, whose column sums give the corpus
score again (`score_from_statistics`): how sacrebleu computes a corpus score, and what a paired bootstrap over
sentences resamples (grow_jax/study/item_stats.py).
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Sequence

import sacrebleu

References = Sequence[str | Sequence[str]]


def postprocess(text: str, stop: Sequence[str] = ("\n",)) -> str:
  """Cut `text` at the first occurrence of any stop string, then strip surrounding whitespace.

  Leading whitespace is stripped before looking for stops, so a completion that starts with a newline
  (" \\nParis") is not cut to nothing.
  """
  text = text.lstrip()
  cut = len(text)
  for s in stop:
    if s:
      i = text.find(s)
      if i >= 0:
        cut = min(cut, i)
  return text[:cut].strip()


def _alternatives(reference: str | Sequence[str], index: int) -> list[str]:
  if isinstance(reference, str):
    return [reference]
  refs = list(reference)
  if not refs or not all(isinstance(r, str) for r in refs):
    raise ValueError(f"references[{index}]={reference!r}: expected a string or a non-empty list of strings")
  return refs


def _check_lengths(predictions: Sequence[str], references: References):
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  if not predictions:
    raise ValueError("no predictions to score")


def exact_match(predictions: Sequence[str], references: References, *, ignore_case: bool = False) -> float:
  """Fraction of predictions equal (after strip) to one of their references."""
  _check_lengths(predictions, references)
  norm = (lambda s: s.strip().lower()) if ignore_case else (lambda s: s.strip())
  hits = sum(norm(p) in {norm(r) for r in _alternatives(refs, i)}
             for i, (p, refs) in enumerate(zip(predictions, references)))
  return hits / len(predictions)


def normalize_answer(text: str) -> str:
  """A short answer with its spelling variants folded: accents removed (NFKD), casefolded, dashes as spaces,
  other punctuation removed, whitespace collapsed. "Bogotá" -> "bogota", "Washington, D.C." -> "washington dc",
  "Port-au-Prince" -> "port au prince", "N'Djamena" -> "ndjamena"."""
  decomposed = unicodedata.normalize("NFKD", text)
  chars = []
  for c in decomposed:
    category = unicodedata.category(c)
    if unicodedata.combining(c):
      continue
    chars.append(" " if category == "Pd" else "" if category.startswith("P") else c)
  return " ".join("".join(chars).casefold().split())


def normalized_exact_match(predictions: Sequence[str], references: References) -> float:
  """Fraction of predictions equal to one of their references after `normalize_answer` on both."""
  _check_lengths(predictions, references)
  hits = sum(normalize_answer(p) in {normalize_answer(r) for r in _alternatives(refs, i)}
             for i, (p, refs) in enumerate(zip(predictions, references)))
  return hits / len(predictions)


def reference_streams(references: References) -> list[list[str | None]]:
  """Per-example references -> sacrebleu's reference streams (one list per alternative).

  Examples with fewer alternatives than the most are padded with None, which sacrebleu ignores.
  """
  per_example = [_alternatives(r, i) for i, r in enumerate(references)]
  width = max(len(r) for r in per_example)
  return [[r[k] if k < len(r) else None for r in per_example] for k in range(width)]


def corpus_bleu(predictions: Sequence[str], references: References) -> float:
  """sacrebleu.corpus_bleu(...).score (0..100)."""
  _check_lengths(predictions, references)
  return float(sacrebleu.corpus_bleu(list(predictions), reference_streams(references)).score)


def corpus_chrf(predictions: Sequence[str], references: References) -> float:
  """sacrebleu.corpus_chrf(...).score (0..100)."""
  _check_lengths(predictions, references)
  return float(sacrebleu.corpus_chrf(list(predictions), reference_streams(references)).score)


@functools.cache
def _sacrebleu_metric(name: str):
  """The sacrebleu metric object `corpus_bleu` / `corpus_chrf` use (their default settings)."""
  from sacrebleu.metrics import BLEU, CHRF
  if name == "bleu":
    return BLEU()
  if name == "chrf":
    return CHRF()
  raise ValueError(f"metric={name!r}: sentence statistics exist for 'bleu' and 'chrf'")


def sentence_statistics(name: str, predictions: Sequence[str], references: References) -> list[list[int]]:
  """sacrebleu's per-sentence statistics of 'bleu' ([hypothesis length, reference length, correct 1..4-grams,
  total 1..4-grams]) or 'chrf' ([hypothesis, reference, matching] character n-grams for n = 1..6): their column
  sums give the corpus score (`score_from_statistics`), exactly as `corpus_bleu` / `corpus_chrf`."""
  _check_lengths(predictions, references)
  stats = _sacrebleu_metric(name)._extract_corpus_statistics(list(predictions), reference_streams(references))
  return [[int(x) for x in row] for row in stats]


def score_from_statistics(name: str, summed: Sequence[float]) -> float:
  """The corpus score (0..100) of 'bleu' or 'chrf' from statistics summed over sentences (one sentence's own
  statistics: its sentence score)."""
  return float(_sacrebleu_metric(name)._compute_score_from_stats([int(round(x)) for x in summed]).score)


def scores_from_statistics(name: str, summed) -> "np.ndarray":
  """`score_from_statistics` over many rows of summed statistics at once ((..., k) -> (...)), in numpy: sacrebleu's
  formulas for its default BLEU (exp smoothing, 4-grams, no effective order) and chrF (n=6, beta=2, effective
  order averaging), equal to it to float rounding (tests check); what a bootstrap's thousands of replicates need."""
  import numpy as np
  stats = np.asarray(summed, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    if name == "chrf":
      metric = _sacrebleu_metric(name)
      hyp, ref, match = stats[..., 0::3], stats[..., 1::3], stats[..., 2::3]
      valid = (hyp > 0) & (ref > 0)
      order = np.maximum(valid.sum(axis=-1), 1)
      precision = np.where(valid, match / hyp, 0.0).sum(axis=-1) / order
      recall = np.where(valid, match / ref, 0.0).sum(axis=-1) / order
      factor = metric.beta ** 2
      score = 100 * (1 + factor) * precision * recall / (factor * precision + recall)
      return np.where(precision + recall > 0, score, 0.0)
    if name == "bleu":
      sys_len, ref_len, correct, total = stats[..., 0], stats[..., 1], stats[..., 2:6], stats[..., 6:10]
      brevity = np.where(sys_len < ref_len, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0), 1.0)
      alive = np.cumprod(total > 0, axis=-1).astype(bool)         # sacrebleu stops at the first order with none
      smooth = 2.0 ** np.cumsum(alive & (correct == 0), axis=-1)  # 'exp' smoothing: 1/2, 1/4, ... for zero matches
      precision = np.where(alive, np.where(correct == 0, 100.0 / (smooth * total), 100.0 * correct / total), 0.0)
      logs = np.where(precision == 0, -9999999999.0, np.log(np.where(precision > 0, precision, 1.0)))
      return np.where((correct > 0).any(axis=-1), brevity * np.exp(logs.sum(axis=-1) / 4), 0.0)
  raise ValueError(f"metric={name!r}: sentence statistics exist for 'bleu' and 'chrf'")


TEXT_METRICS = {
    "exact_match": exact_match,
    "exact_match_norm": normalized_exact_match,
    "bleu": corpus_bleu,
    "chrf": corpus_chrf,
}
