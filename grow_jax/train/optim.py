"""The optimizer: warmup + decay schedule, AdamW with a weight-decay mask, global-norm clipping, and a
trainable/frozen partition so optimizer state exists only for trainable leaves.

    make_optimizer(opt, bound)                      # bound: methods.TrainMethod (labels, its transforms)
    make_optimizer(opt, labels, transforms=[...])   # a labels tree; transforms run first (L2-SP, EWC)

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

from typing import Mapping

import jax
import optax

from grow_jax import tree_paths
from grow_jax.methods import partition
from grow_jax.methods.base import TrainMethod
from grow_jax.errors import ConfigError

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


def make_optimizer(opt, labels_or_method, *, transforms=()) -> optax.GradientTransformation:
  """The training optimizer (see the module docstring). `labels_or_method` is a bound method
  (`methods.TrainMethod`, from `Method.bind` / `setup_method`: its labels, and its optimizer transforms, e.g.
  L2-SP / EWC, first) or a labels tree ('trainable' / 'frozen', structure of params); `transforms` run first
  in the trainable chain (after the method's)."""
  labels = labels_or_method
  if isinstance(labels_or_method, TrainMethod):
    labels, transforms = labels_or_method.labels, list(labels_or_method.optimizer_transforms()) + list(transforms)
  values = set(jax.tree.leaves(labels))
  if not values <= {partition.TRAINABLE, partition.FROZEN}:
    raise ConfigError(f"labels {sorted(map(str, values))}: expected only 'trainable' / 'frozen'")
  chain = list(transforms)
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


def state_bytes(state) -> dict[str, int]:
  """Bytes of an optimizer state: Adam moments, everything else (regularizer anchors / Fisher, counters), all."""
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
  moments = sum(nbytes((s.mu, s.nu)) for s in tree_paths.find_nodes(state, optax.ScaleByAdamState))
  total = nbytes(state)
  return {"adam_moments": moments, "other": total - moments, "total": total}


__all__ = ["make_optimizer", "schedule_fn", "state_bytes", "OPT_DEFAULTS", "DEFAULT_DECAY_RULES"]
