"""Training methods: which leaves train and what else a protocol adds, one registered class each.

    base.py          Method (the protocol bound to one model), Option, Context, the registry, TrainMethod,
                     setup_method
    partition.py     ordered (path regex -> label) rules -> the 'trainable' / 'frozen' label tree
    builtin.py       sft (base.Method), mlp_only, custom, the paper's g_freeze / g_train, and the ablations
                     g_freeze_norms (+ the grown layers' post-FFW norm) and g_freeze_attn (grown heads only)
    g_freeze_down.py G-Freeze training only the copies' down projections (attention growth's count, in the MLP)
    lora.py          LoRA adapters and the `lora` method
    regularizers.py  L2-SP / EWC optax transforms and the `l2sp` / `ewc` methods
    accounting.py    what a method costs: trainable share, optimizer bytes, added FLOPs

The method registry imports every module of this package on its first lookup (grow_jax/registry.py), so a
method is one new file: its module registers it, nothing lists it.
"""

from grow_jax.methods.base import (Context, Method, Option, TrainMethod, attention_growth_factor, checked_options,
                                   config_options, create, declared_options, from_meta, growth_factor,
                                   method_class, names, register, select_options, setup_method, trainable_count)
from grow_jax.methods.partition import FROZEN, TRAINABLE, PartitionError, labels_from_rules, trainable_paths


def trainable_labels(config, params, mode_or_rules):
  """The label tree of a method name (bound to these params) or of a custom rule list."""
  if isinstance(mode_or_rules, str):
    return create(mode_or_rules, {}, config, params).labels
  return labels_from_rules(list(mode_or_rules), params)


__all__ = ["Context", "Method", "Option", "TrainMethod", "config_options", "declared_options", "attention_growth_factor", "checked_options", "create", "from_meta", "growth_factor", "method_class", "names", "register",
           "select_options", "setup_method", "trainable_count", "trainable_labels", "trainable_paths", "labels_from_rules",
           "PartitionError", "TRAINABLE", "FROZEN"]
