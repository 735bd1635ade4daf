"""Training methods: which leaves train and what else a protocol adds, one registered class each.

    base.py          Method (the protocol bound to one model), the registry, setup_method
    partition.py     ordered (path regex -> label) rules -> the 'trainable' / 'frozen' label tree
    builtin.py       sft (base.Method), mlp_only, custom, the paper's g_freeze / g_train, and the ablations
                     g_freeze_norms (+ the grown layers' post-FFW norm) and g_freeze_attn (grown heads only)
    lora.py          LoRA adapters and the `lora` method
    regularizers.py  L2-SP / EWC optax transforms and the `l2sp` / `ewc` methods
    accounting.py    what a method costs: trainable share, optimizer bytes, added FLOPs
"""

from grow_jax.methods import builtin, lora, regularizers  # noqa: F401  (registers the methods)
from grow_jax.methods.base import (Method, TrainMethod, attention_growth_factor, checked_options, create, from_meta,
                                   growth_factor, method_class, names, register, select_options, setup_method,
                                   trainable_count)
from grow_jax.methods.partition import FROZEN, TRAINABLE, PartitionError, labels_from_rules, trainable_paths


def trainable_labels(config, params, mode_or_rules):
  """The label tree of a method name (bound to these params) or of a custom rule list."""
  if isinstance(mode_or_rules, str):
    return create(mode_or_rules, {}, config, params).labels
  return labels_from_rules(list(mode_or_rules), params)


__all__ = ["Method", "TrainMethod", "attention_growth_factor", "checked_options", "create", "from_meta", "growth_factor", "method_class", "names", "register",
           "select_options", "setup_method", "trainable_count", "trainable_labels", "trainable_paths", "labels_from_rules",
           "PartitionError", "TRAINABLE", "FROZEN"]
