"""Which leaves train: ordered `(path_regex, label)` rules over '/'-joined leaf paths, first match wins.

One mechanism for every training protocol. A rule's regex must match the *whole* path (`re.fullmatch`);
every leaf must match some rule, and an unmatched leaf is an error that lists the unmatched paths.

Presets (our reading of the paper for the growth modes; see PAPER.md):

  sft       every leaf trains (full fine-tuning)
  g_freeze  only the grown copies train: layer_i/mlp/grown_j/{gating_einsum,linear}; everything original
            (embeddings, attention, norms, the original MLP branch incl. its halved down projection) is frozen
  g_train   the grown copies, plus the original gate/up (layer_i/mlp/gating_einsum) of the *grown* layers;
            the original (halved) down projection layer_i/mlp/linear stays frozen; ungrown layers are frozen
  mlp_only  every MLP leaf (original and grown branches) trains, the rest is frozen
  lora      only the adapters under lora/ train (see lora.py); the base model is frozen
  l2sp      as sft, plus an L2 pull toward the initial weights (regularizers.l2sp, in the optimizer)
  ewc       as sft, plus a diagonal-Fisher penalty (regularizers.ewc, in the optimizer)

g_freeze / g_train on a model without grown layers raise (nothing new would train).
"""

from __future__ import annotations

import math
import re
from typing import Any, Hashable, Sequence

import jax

from grow_jax import tree_paths
from grow_jax.model.config import ConfigError, ModelConfig

TRAINABLE = "trainable"
FROZEN = "frozen"
Rules = Sequence[tuple[str, Hashable]]

MODES = ("sft", "g_freeze", "g_train", "mlp_only", "lora", "l2sp", "ewc")
GROWN_BRANCH = r"layer_\d+/mlp/grown_\d+/(gating_einsum|linear)"


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


def _grown_layers(config: ModelConfig) -> tuple[int, ...]:
  return tuple(i for i in range(config.num_layers) if len(config.layer_mlp_branches(i)) > 1)


def preset_rules(mode: str, config: ModelConfig) -> list[tuple[str, str]]:
  """The rules of a named preset for this config (g_train depends on which layers are grown)."""
  if mode in ("sft", "l2sp", "ewc"):
    return [(".*", TRAINABLE)]
  if mode == "mlp_only":
    return [(r"layer_\d+/mlp/.*", TRAINABLE), (".*", FROZEN)]
  if mode == "lora":
    return [(r"lora/.*", TRAINABLE), (".*", FROZEN)]
  if mode in ("g_freeze", "g_train"):
    grown = _grown_layers(config)
    if not grown:
      raise PartitionError(f"mode {mode!r} trains the grown MLP copies, but the model has no grown layers "
                           "(config.mlp_branches has one branch per layer): grow it first with "
                           "growth.grow_mlp(config, params, layers=...)")
    rules = [(GROWN_BRANCH, TRAINABLE)]
    if mode == "g_train":
      rules.append((rf"layer_({'|'.join(map(str, grown))})/mlp/gating_einsum", TRAINABLE))
    return rules + [(".*", FROZEN)]
  raise PartitionError(f"unknown training mode {mode!r}; expected one of {list(MODES)} "
                       "(or a list of (path_regex, 'trainable'|'frozen') rules)")


def trainable_labels(config: ModelConfig, params: Any, mode: str | Rules) -> Any:
  """Tree of 'trainable' / 'frozen' (structure of `params`) for a preset name or a custom rule list.

  Raises if a leaf is unmatched, a label is neither 'trainable' nor 'frozen', or nothing would train.
  """
  rules = preset_rules(mode, config) if isinstance(mode, str) else list(mode)
  what = f"mode {mode!r} rules" if isinstance(mode, str) else "trainable rules"
  if mode == "lora" and "lora" not in params:
    raise PartitionError("mode 'lora' needs LoRA adapters under params['lora']: add them with lora.init(...) "
                         "or methods.setup_method('lora', ...)")
  labels = apply_rules(rules, params, what=what)
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
