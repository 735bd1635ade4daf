"""Item-level statistics of paired runs: a paired bootstrap of a metric's difference over shared items (and seeds),
and the exact McNemar test of paired binary outcomes. Pure numpy; deterministic (seeded).

Inputs are per-item values of two sides scored on the same items in the same order: arrays (n,) or (n, k) for one
run, (seeds, n, k) for several seeds of a method (grow_jax/evaluation/items.py `item_matrix` builds them from item
records). A metric is a `statistic(sums, n)`: a function of the column sums of the values over the n items
(shape (..., k) -> (...)): the mean of a 0/1 column (accuracy, exact match), a ratio of two sums (perplexity,
KL per token), a corpus score from summed sentence statistics (chrF, BLEU); `items.metric_statistic` gives each.

paired_bootstrap: the difference side A - side B of the metric, each side averaged over its seeds; replicates
draw n items with replacement (the same draw for both sides and every seed, which is what pairs them) and
recompute the difference; the interval is the percentile interval of the replicates. With several seeds this
resamples items and averages seeds: it treats the seeds as fixed, so the interval speaks for these seeds' models
(the seed-to-seed spread is in the report's per-seed table).

mcnemar: the exact (binomial) two-sided McNemar test of two paired 0/1 vectors: of the discordant items, a_only
(A right, B wrong) against b_only, each equally likely under the null; p = min(1, 2 P(X <= min(a_only, b_only)))
for X ~ Binomial(a_only + b_only, 1/2); no discordant items: p = 1.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

BOOTSTRAP = 10_000
_CHUNK = 1_000                 # replicates per block: a (chunk, n) count matrix and (chunk, seeds, k) sums at a time

Statistic = Callable[[np.ndarray, int], np.ndarray]


def mean_statistic(sums: np.ndarray, n: int) -> np.ndarray:
  """The mean of the first column."""
  return sums[..., 0] / n


class PairedDifference(NamedTuple):
  """A - B of a metric over shared items: the point `difference`, its percentile interval [low, high] at `level`,
  the item count and each side's seed count."""
  difference: float
  low: float
  high: float
  num_items: int
  seeds: tuple[int, int]
  level: float


class McNemar(NamedTuple):
  """Discordant pairs (A right and B wrong: a_only; the reverse: b_only) and the exact two-sided p-value."""
  a_only: int
  b_only: int
  p: float


def _per_seed(values) -> np.ndarray:
  """(seeds, n, k) float64 from (n,), (n, k) or (seeds, n, k)."""
  values = np.asarray(values, np.float64)
  if values.ndim == 1:
    values = values[:, None]
  if values.ndim == 2:
    values = values[None]
  if values.ndim != 3 or values.shape[0] < 1 or values.shape[1] < 1:
    raise ValueError(f"per-item values of shape {values.shape}: expected (n,), (n, k) or (seeds, n, k) with n >= 1")
  return values


def _side(statistic: Statistic, sums: np.ndarray, n: int) -> np.ndarray:
  """The statistic of each seed's sums (..., seeds, k), averaged over seeds -> (...)."""
  return np.asarray(statistic(sums, n), np.float64).mean(axis=-1)


def bootstrap_differences(a, b, statistic: Statistic = mean_statistic, *, samples: int = BOOTSTRAP,
                          seed: int = 0) -> tuple[float, np.ndarray]:
  """(the point difference A - B, its `samples` bootstrap replicates): see the module docstring."""
  a, b = _per_seed(a), _per_seed(b)
  n = a.shape[1]
  if b.shape[1] != n or b.shape[2] != a.shape[2]:
    raise ValueError(f"paired sides must share their items and columns: A {a.shape}, B {b.shape} (seeds, n, k)")
  if samples < 1:
    raise ValueError(f"samples={samples}: expected a positive count")
  point = float(_side(statistic, a.sum(axis=1), n) - _side(statistic, b.sum(axis=1), n))
  rng = np.random.default_rng(seed)
  replicates = []
  for start in range(0, samples, _CHUNK):
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, samples - start)).astype(np.float64)
    sums_a = np.einsum("rn,snk->rsk", counts, a)
    sums_b = np.einsum("rn,snk->rsk", counts, b)
    replicates.append(_side(statistic, sums_a, n) - _side(statistic, sums_b, n))
  return point, np.concatenate(replicates)


def paired_bootstrap(a, b, statistic: Statistic = mean_statistic, *, samples: int = BOOTSTRAP, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
  """The difference A - B of `statistic` over shared items with its percentile bootstrap interval (seeded)."""
  if not 0 < level < 1:
    raise ValueError(f"level={level}: expected a probability in (0, 1)")
  point, replicates = bootstrap_differences(a, b, statistic, samples=samples, seed=seed)
  low, high = np.percentile(replicates, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
  a3, b3 = _per_seed(a), _per_seed(b)
  return PairedDifference(point, float(low), float(high), a3.shape[1], (a3.shape[0], b3.shape[0]), level)


def mcnemar(a, b) -> McNemar:
  """The exact McNemar test of paired 0/1 outcomes `a`, `b` (one run each, the same items in the same order)."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"McNemar pairs two 0/1 vectors of one length: got shapes {a.shape} and {b.shape}")
  if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
    raise ValueError("McNemar's outcomes must be 0/1")
  a_only, b_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
  return McNemar(a_only, b_only, binomial_two_sided(a_only, b_only))


def binomial_two_sided(x: int, y: int) -> float:
  """min(1, 2 P(X <= min(x, y))) for X ~ Binomial(x + y, 1/2), exactly (integer arithmetic)."""
  n = x + y
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(x, y) + 1))
  return min(1.0, 2 * tail / 2 ** n)
