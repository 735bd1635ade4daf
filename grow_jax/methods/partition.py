"""Which leaves train: ordered `(path_regex, label)` rules over '/'-joined leaf paths, first match wins.

One mechanism for every training protocol. A rule's regex must match the *whole* path (`re.fullmatch`);
every leaf must match some rule, and an unmatched leaf is an error that lists the unmatched paths.

Each training method (methods/builtin.py, lora.py, regularizers.py) states its rules; `labels_from_rules`
turns rules into the label tree that `optax.partition` and the train step use.
"""

from __future__ import annotations

import math
import re
from typing import Any, Hashable, Sequence

import jax

from grow_jax import tree_paths
from grow_jax.errors import ConfigError

TRAINABLE = "trainable"
FROZEN = "frozen"
Rules = Sequence[tuple[str, Hashable]]

GROWN_BRANCH = r"layer_\d+/mlp/grown_\d+/(gating_einsum|linear)"
GROWN_HEADS = r"layer_\d+/attn/grown_\d+/(q_einsum|kv_einsum|attn_vec_einsum)/w"


class PartitionError(ConfigError):
  """A rule set that does not label every leaf, or a mode that cannot apply to these params."""


def apply_rules(rules: Rules, tree: Any, *, what: str = "partition rules") -> Any:
  """A tree of labels (same structure as `tree`): the label of the first rule whose regex fullmatches each
  leaf's path. Raises PartitionError listing every unmatched path (works on abstract trees too)."""
  compiled = []
  for pattern, label in rules:
    try:
      compiled.append((re.compile(pattern), label))
    except re.error as e:
      raise PartitionError(f"{what}: bad regex {pattern!r}: {e}") from None
  unmatched = []

  def label_of(path: str, _):
    for regex, label in compiled:
      if regex.fullmatch(path):
        return label
    unmatched.append(path)
    return None

  labels = tree_paths.map_with_path(label_of, tree)
  if unmatched:
    shown = ", ".join(unmatched[:20]) + (f", ... ({len(unmatched)} in all)" if len(unmatched) > 20 else "")
    raise PartitionError(f"{what} {[p for p, _ in rules]} leave {len(unmatched)} leaves unmatched: {shown}. "
                         "Add a rule for them (e.g. a final ('.*', 'frozen')).")
  return labels


def labels_from_rules(rules: Rules, params: Any, *, what: str = "trainable rules") -> Any:
  """Tree of 'trainable' / 'frozen' (structure of `params`) from ordered rules.

  Raises PartitionError if a leaf is unmatched, a label is neither 'trainable' nor 'frozen', or nothing
  would train.
  """
  labels = apply_rules(list(rules), params, what=what)
  values = set(jax.tree.leaves(labels))
  bad = values - {TRAINABLE, FROZEN}
  if bad:
    raise PartitionError(f"{what}: labels {sorted(map(str, bad))} are not allowed; expected "
                         f"'{TRAINABLE}' or '{FROZEN}'")
  if TRAINABLE not in values:
    raise PartitionError(f"{what} freeze every leaf: nothing would train")
  return labels


def trainable_paths(labels: Any) -> list[str]:
  """The paths labelled 'trainable'."""
  return [p for p, l in tree_paths.flatten(labels).items() if l == TRAINABLE]


def count(tree: Any, labels: Any | None = None, label: str = TRAINABLE) -> int:
  """Number of scalars in `tree` (only leaves labelled `label` when labels are given)."""
  sizes = {p: math.prod(x.shape) for p, x in tree_paths.flatten(tree).items()}
  if labels is None:
    return sum(sizes.values())
  flat_labels = tree_paths.flatten(labels)
  return sum(n for p, n in sizes.items() if flat_labels[p] == label)
