"""Per-item records of an evaluation: their fields by kind, their compact file, and each metric recomputed from
them.

An evaluation asked for items (`Evaluator(...)(config, params, items=True)`, `EvalContext(items=True)`) returns,
besides its metrics, one record per example; every record has 'kind' (the evaluation kind) and 'id' (the
example's id in its split, else its index there; `item_ids`). The other fields, by kind:

  multiple_choice  chosen, chosen_norm (argmax of the log-likelihoods, of them per character), gold, acc and
                   acc_norm (0/1), ll (the choices' log-likelihoods, 4 decimals)
  partial          chosen, gold, acc (0/1), ll
  generation       prediction, reference (the first), aliases (the others, when any); per metric exact_match /
                   exact_match_norm (0/1), chrf (the sentence chrF, 2 decimals) with chrf_stats, bleu_stats
                   (sacrebleu's sentence statistics: their sums give the corpus score)
  perplexity       nll (nats summed over the text's predicted tokens, 4 decimals), tokens, bytes
  kl               nll, kl (summed, nats), kl_max, tokens, bytes

The file (`write_items`, `python -m grow_jax.evaluate --items=...`, a study's `runs/<run>.items.jsonl.gz`): JSON
lines, one per item, `{"entry": <evaluation>, **record}` with sorted keys, entries in sorted order and items in
evaluation order; a name ending in `.gz` is gzip with mtime 0, so the same records give the same bytes.

`metric_statistic(kind, metric)`: which fields a metric sums over items and the function of those sums (and the
item count) that gives it: a mean of 0/1 fields, a ratio of sums (perplexity, KL), sacrebleu's corpus score from
summed statistics (chrF, BLEU). Over every item it reproduces the evaluation's aggregate; over resampled items it
is what a paired bootstrap needs (grow_jax/study/item_stats.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from grow_jax import files
from grow_jax.evaluation import text_metrics

Item = dict[str, Any]
SUFFIX = ".items.jsonl.gz"


class Scored(NamedTuple):
  """An evaluation's aggregate metrics and its per-item records."""
  metrics: dict[str, float]
  items: list[Item]


def item_ids(examples: Sequence[Any], ids: Sequence[str] | None = None) -> list[str]:
  """Stable item ids: `ids` when given, else each example's `id` (grow_jax.data examples have one), else its
  index; a repeated id gets '#<k>' for its k-th repeat, so ids are unique within an evaluation."""
  if ids is not None and len(ids) != len(examples):
    raise ValueError(f"{len(ids)} ids for {len(examples)} examples")
  raw = [str(ids[i]) if ids is not None else str(getattr(ex, "id", None) or i) for i, ex in enumerate(examples)]
  seen: dict[str, int] = {}
  out = []
  for rid in raw:
    k = seen.get(rid, 0)
    seen[rid] = k + 1
    out.append(rid if k == 0 else f"{rid}#{k}")
  return out


# ---- the file ------------------------------------------------------------------------------------------
def encode(items: Mapping[str, Sequence[Item]]) -> bytes:
  """{entry: records} as JSON lines (sorted keys, entries sorted, items in order), UTF-8."""
  lines = [json.dumps({"entry": entry, **item}, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)
           for entry in sorted(items) for item in items[entry]]
  return "".join(line + "\n" for line in lines).encode("utf-8")


def file_bytes(path: str, items: Mapping[str, Sequence[Item]]) -> bytes:
  """What `write_items` writes to `path`: the JSON lines, gzip'd (mtime 0, level 9) when it ends in '.gz'."""
  data = encode(items)
  return gzip.compress(data, compresslevel=9, mtime=0) if str(path).endswith(".gz") else data


def write_items(path: str, items: Mapping[str, Sequence[Item]]) -> dict[str, Any]:
  """Writes {entry: records} to `path` (local or gs://, atomically); returns {'sha256': of the bytes written,
  'bytes': their count, 'entries': {entry: number of items}}."""
  data = file_bytes(path, items)
  files.write_bytes(path, data)
  return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
          "entries": {entry: len(items[entry]) for entry in sorted(items)}}


def read_items(path: str, sha256: str | None = None) -> dict[str, list[Item]]:
  """{entry: records} from a file `write_items` wrote; with `sha256`, the file must have that hash."""
  data = files.as_path(path).read_bytes()
  if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
    raise ValueError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()} differs from the recorded {sha256}; the "
                     "item file was changed after its record was written")
  if str(path).endswith(".gz"):
    data = gzip.decompress(data)
  out: dict[str, list[Item]] = {}
  for line in data.decode("utf-8").splitlines():
    item = json.loads(line)
    out.setdefault(item.pop("entry"), []).append(item)
  return out


# ---- metrics from items -----------------------------------------------------------------------------------
class Statistic(NamedTuple):
  """A metric as a function of per-item values: `fields` (summed over items; a list-valued field counts as its
  elements) and `fn(sums (..., k), n) -> (...)`; `binary`: one 0/1 field (a McNemar test applies)."""
  fields: tuple[str, ...]
  fn: Callable[[np.ndarray, int], np.ndarray]
  binary: bool = False


_BINARY = {"acc", "acc_norm", "exact_match", "exact_match_norm"}


def _mean(sums, n):
  return sums[..., 0] / n


def _ratio(sums, n):
  return sums[..., 0] / sums[..., 1]


def _corpus(name):
  return lambda sums, n: text_metrics.scores_from_statistics(name, sums)


def metric_statistic(kind: str, metric: str) -> Statistic | None:
  """How `metric` of a `kind` evaluation follows from its items (None: not a function of item sums, e.g. kl_max,
  or not recorded per item)."""
  if metric in _BINARY and kind in ("multiple_choice", "partial", "generation"):
    return Statistic((metric,), _mean, binary=True)
  if kind == "generation" and metric in ("chrf", "bleu"):
    return Statistic((f"{metric}_stats",), _corpus(metric))
  if kind in ("perplexity", "kl"):
    per_token = {"nll_per_token": (("nll", "tokens"), _ratio),
                 "perplexity": (("nll", "tokens"), lambda s, n: np.exp(_ratio(s, n))),
                 "bits_per_byte": (("nll", "bytes"), lambda s, n: _ratio(s, n) / math.log(2)),
                 "kl": (("kl", "tokens"), _ratio)}
    if metric in per_token and (metric != "kl" or kind == "kl"):
      return Statistic(*per_token[metric])
  return None


def item_matrix(items: Sequence[Item], fields: Sequence[str]) -> np.ndarray:
  """(n, k) float64: each item's values of `fields`, list fields spread over their elements."""
  rows = []
  for item in items:
    row = []
    for name in fields:
      value = item[name]
      row += [float(x) for x in value] if isinstance(value, list) else [float(value)]
    rows.append(row)
  return np.asarray(rows, np.float64)


def metric_from_items(items: Sequence[Item], metric: str) -> float:
  """The aggregate `metric` recomputed from an evaluation's items (all of one kind)."""
  kinds = {item["kind"] for item in items}
  if len(kinds) != 1:
    raise ValueError(f"items of {sorted(kinds)} kinds: expected one evaluation's items")
  statistic = metric_statistic(kinds.pop(), metric)
  if statistic is None:
    raise ValueError(f"metric {metric!r} is not a function of per-item sums")
  values = item_matrix(items, statistic.fields)
  return float(statistic.fn(values.sum(axis=0), len(items)))
