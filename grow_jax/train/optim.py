"""The optimizer: warmup + decay schedule, AdamW with a weight-decay mask, global-norm clipping, and a
trainable/frozen partition so optimizer state exists only for trainable leaves.

    make_optimizer(opt, method)                     # method: methods.TrainMethod (labels, anchor, fisher, coefs)
    make_optimizer(opt, labels, anchor=..., fisher=..., l2sp_coef=..., ewc_coef=...)

builds

    optax.partition({'trainable': chain([l2sp | ewc], clip_by_global_norm, scale_by_adam,
                                        add_decayed_weights(mask), scale_by_learning_rate(schedule)),
                     'frozen': set_to_zero()}, labels)

(`optax.multi_transform` is an alias of `optax.partition` in optax 0.2.8; partition is the current name.)
Frozen leaves get zero updates and no Adam moments; clipping sees only trainable gradients. The regularizer
runs first so its gradient is treated exactly like a loss term's (see regularizers.py).

`opt` is a Mapping or ml_collections.ConfigDict with (defaults in OPT_DEFAULTS):
  learning_rate   peak learning rate
  schedule        'cosine' | 'linear' | 'constant' (decay after warmup down to learning_rate * min_lr_ratio)
  warmup_steps    linear warmup from 0
  total_steps     steps of warmup + decay (needed unless schedule == 'constant')
  min_lr_ratio    final lr / peak lr
  b1, b2, eps     Adam
  weight_decay    decoupled (AdamW) decay; 0 disables
  decay_rules     None = no decay on norm scales and embeddings; or [(path_regex, True|False), ...]
  grad_clip_norm  global-norm clip of trainable gradients; None or 0 disables
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

from grow_jax.methods import partition
from grow_jax.methods import regularizers
from grow_jax.model.config import ConfigError

OPT_DEFAULTS = dict(learning_rate=1e-4, schedule="cosine", warmup_steps=0, total_steps=None, min_lr_ratio=0.0,
                    b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, decay_rules=None, grad_clip_norm=1.0)

# No weight decay on RMSNorm scales (decay would pull 1 + scale toward 1) nor on the tied embedding.
DEFAULT_DECAY_RULES = [(r"(.*/)?[^/]*norm/scale", False), (r"(lora/)?embedder/.*", False), (r".*", True)]


def _get(opt, name: str):
  default = OPT_DEFAULTS[name]
  if opt is None:
    return default
  if isinstance(opt, Mapping):
    return opt.get(name, default)
  return getattr(opt, name, default)  # ml_collections.ConfigDict or any attribute container


def schedule_fn(opt) -> optax.Schedule:
  """step -> learning rate: linear warmup from 0 to learning_rate, then cosine / linear decay to
  learning_rate * min_lr_ratio at total_steps (constant: stays at learning_rate)."""
  lr = float(_get(opt, "learning_rate"))
  kind = _get(opt, "schedule")
  warmup = int(_get(opt, "warmup_steps") or 0)
  total = _get(opt, "total_steps")
  ratio = float(_get(opt, "min_lr_ratio"))
  if lr < 0:
    raise ConfigError(f"opt.learning_rate={lr!r}: expected >= 0")
  if warmup < 0:
    raise ConfigError(f"opt.warmup_steps={warmup!r}: expected >= 0")
  if not 0.0 <= ratio <= 1.0:
    raise ConfigError(f"opt.min_lr_ratio={ratio!r}: expected a value in [0, 1]")
  if kind == "constant":
    if warmup == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  if kind not in ("cosine", "linear"):
    raise ConfigError(f"opt.schedule={kind!r}: expected 'cosine', 'linear' or 'constant'")
  if total is None or int(total) <= warmup:
    raise ConfigError(f"opt.total_steps={total!r}: schedule {kind!r} needs total_steps > warmup_steps={warmup}")
  total = int(total)
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=lr * ratio)
  decay = optax.linear_schedule(lr, lr * ratio, total - warmup)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _decay_mask_fn(rules):
  rules = DEFAULT_DECAY_RULES if rules is None else [tuple(r) for r in rules]

  def mask_fn(params):
    # params may be a masked tree (frozen leaves are optax MaskedNodes, which have no leaves).
    return partition.apply_rules(rules, params, what="opt.decay_rules")

  return mask_fn


def make_optimizer(opt, labels_or_method, *, anchor=None, fisher=None, l2sp_coef: float | None = None,
                   ewc_coef: float | None = None, params=None) -> optax.GradientTransformation:
  """The training optimizer (see the module docstring). `labels_or_method` is a TrainMethod or a labels tree
  ('trainable'/'frozen', structure of params). A regularizer is added when its coefficient is > 0: L2-SP
  needs `anchor` (None = the params given to init), EWC needs `fisher` (and `anchor`, same default).
  `params` is accepted for symmetry with the brief and unused (labels carry the structure)."""
  del params
  labels = labels_or_method
  if hasattr(labels_or_method, "labels") and hasattr(labels_or_method, "model_params"):  # a TrainMethod
    method = labels_or_method
    labels, anchor, fisher = method.labels, method.anchor, method.fisher
    l2sp_coef = method.l2sp_coef if l2sp_coef is None else l2sp_coef
    ewc_coef = method.ewc_coef if ewc_coef is None else ewc_coef
  values = set(jax.tree.leaves(labels))
  if not values <= {partition.TRAINABLE, partition.FROZEN}:
    raise ConfigError(f"labels {sorted(map(str, values))}: expected only 'trainable' / 'frozen'")
  l2sp_coef = float(l2sp_coef or 0.0)
  ewc_coef = float(ewc_coef or 0.0)
  if l2sp_coef and ewc_coef:
    raise ConfigError(f"l2sp_coef={l2sp_coef} and ewc_coef={ewc_coef}: pick one regularizer")

  chain = []
  if l2sp_coef > 0:
    chain.append(regularizers.l2sp(l2sp_coef, anchor))
  if ewc_coef > 0:
    chain.append(regularizers.ewc(ewc_coef, fisher, anchor))
  clip = _get(opt, "grad_clip_norm")
  if clip:
    if float(clip) < 0:
      raise ConfigError(f"opt.grad_clip_norm={clip!r}: expected > 0 (or None / 0 to disable)")
    chain.append(optax.clip_by_global_norm(float(clip)))
  chain.append(optax.scale_by_adam(b1=float(_get(opt, "b1")), b2=float(_get(opt, "b2")),
                                   eps=float(_get(opt, "eps"))))
  wd = float(_get(opt, "weight_decay") or 0.0)
  if wd < 0:
    raise ConfigError(f"opt.weight_decay={wd!r}: expected >= 0")
  if wd > 0:
    chain.append(optax.add_decayed_weights(wd, mask=_decay_mask_fn(_get(opt, "decay_rules"))))
  chain.append(optax.scale_by_learning_rate(schedule_fn(opt)))
  return optax.partition({partition.TRAINABLE: optax.chain(*chain), partition.FROZEN: optax.set_to_zero()},
                         labels)


def adam_moments(state) -> list[Any]:
  """Every ScaleByAdamState (mu, nu) in an optimizer state."""
  found = []

  def visit(x):
    if isinstance(x, optax.ScaleByAdamState):
      found.append(x)
      return True
    return False

  jax.tree_util.tree_flatten(state, is_leaf=visit)
  return found


def state_bytes(state) -> dict[str, int]:
  """Bytes of an optimizer state: Adam moments, regularizer anchors/Fisher, everything."""
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
  moments = sum(nbytes((s.mu, s.nu)) for s in adam_moments(state))
  regs = regularizers.find_states(state)
  return {"adam_moments": moments, "regularizer": sum(nbytes(r) for r in regs), "total": nbytes(state)}


__all__ = ["make_optimizer", "schedule_fn", "OPT_DEFAULTS", "DEFAULT_DECAY_RULES", "adam_moments", "state_bytes"]
