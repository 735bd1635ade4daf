"""The trainer's entry point to a training protocol: `setup_method(mode, config, params, options)`.

    method = setup_method('g_freeze', config, params, {})            # params already grown (growth.grow_mlp)
    tx = optim.make_optimizer(opt, method)
    state = tx.init(method.params)
    loss = lm_loss(config, method.model_params(method.params), batch)   # forward sees merged LoRA etc.

Modes (see partition.py for the leaf rules): sft, g_freeze, g_train, mlp_only, lora, l2sp, ewc.

options (a Mapping / ConfigDict; keys not listed here are ignored, so a wider method config can be passed,
but an unknown key starting with 'lora_', 'l2sp_' or 'ewc_' is an error — it is a typo):
  lora_rank        adapter rank (> 0); default 8
  lora_targets     regex (fullmatch) over leaf paths; default lora.DEFAULT_TARGETS (q, kv, attn_vec, MLP)
  lora_alpha       scale = lora_alpha / rank; default None (scale 1)
  lora_seed        seed of A's init when no rng is given; default 0
  match_params_of  'g_freeze' | 'g_train' | 'mlp_only' | an int: choose lora_rank so the adapter count is
                   closest to that preset's trainable count on this model grown by growth_factor on
                   growth_layers (the model itself if it is already grown)
  growth_factor    for match_params_of on an ungrown model; default 2
  growth_layers    for match_params_of on an ungrown model; default all
  l2sp_coef        L2-SP coefficient (penalty coef/2 * ||θ - θ*||²); default 0.01
  ewc_coef         EWC coefficient (penalty coef * Σ F (θ - θ*)²); default 0.01
  ewc_batches      number of reference batches for the Fisher; default all given
  ewc_normalize    None | 'mean' | 'max' normalisation of the Fisher; default 'mean'
  ewc_per_example  one squared gradient per sequence (True, default) or per batch
  rules            for mode 'custom': [(path_regex, 'trainable'|'frozen'), ...]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax

from grow_jax.growth import operators as growth
from grow_jax.methods import lora
from grow_jax.methods import partition
from grow_jax.methods import regularizers
from grow_jax.model.config import ConfigError, ModelConfig

Params = dict[str, Any]

MODES = partition.MODES + ("custom",)

OPTION_DEFAULTS = dict(lora_rank=8, lora_targets=lora.DEFAULT_TARGETS, lora_alpha=None, lora_seed=0,
                       match_params_of=None, growth_factor=2, growth_layers=None, l2sp_coef=0.01, ewc_coef=0.01,
                       ewc_batches=None, ewc_normalize="mean", ewc_per_example=True, rules=None)


class TrainMethod(NamedTuple):
  params: Params                  # initial params incl. any extra leaves (LoRA adapters under 'lora')
  labels: Any                     # same structure as params: 'trainable' / 'frozen'
  model_params: Callable          # params -> what model.forward sees (LoRA merged; identity otherwise)
  anchor: Params | None           # initial weights for L2-SP / EWC
  fisher: Params | None           # EWC diagonal Fisher (structure of params)
  mode: str = "sft"               # (extension) the mode's name, for logs
  l2sp_coef: float = 0.0          # (extension) read by optim.make_optimizer(opt, method)
  ewc_coef: float = 0.0           # (extension) read by optim.make_optimizer(opt, method)
  info: Mapping[str, Any] = {}    # (extension) e.g. the LoRA rank chosen by match_params_of


def _identity(params):
  return params


def _options(options) -> dict[str, Any]:
  if options is None:
    options = {}
  if not isinstance(options, Mapping):
    options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
  typos = [k for k in options if k.startswith(("lora_", "l2sp_", "ewc_")) and k not in OPTION_DEFAULTS]
  if typos:
    known = sorted(k for k in OPTION_DEFAULTS if k.startswith(("lora_", "l2sp_", "ewc_")))
    raise ConfigError(f"unknown method option(s) {typos}; known ones are {known}")
  return {**OPTION_DEFAULTS, **{k: v for k, v in options.items() if k in OPTION_DEFAULTS}}


def preset_trainable_count(mode: str, config: ModelConfig, params: Params, factor: int = 2, layers=None) -> int:
  """Trainable parameter count of preset `mode` on this model, or on it grown by (factor, layers) when it
  is not grown (abstract shapes only, no weights are copied)."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), lora.split(params)[0])
  if not config.is_grown:
    grown = jax.eval_shape(lambda p: growth.grow_mlp(config, p, factor=factor, layers=layers)[1], abstract)
    config, abstract = growth.grow_config(config, factor=factor, layers=layers), grown
  labels = partition.trainable_labels(config, abstract, mode)
  return partition.count(abstract, labels)


def setup_method(mode: str, config: ModelConfig, params: Params, options: Mapping | None = None, *, rng=None,
                 reference_batches: Iterable | None = None, loss_fn: Callable | None = None) -> TrainMethod:
  """Everything a training protocol adds to the params: labels, extra leaves, anchor, Fisher.

  loss_fn(params, batch) -> scalar (or (scalar, aux)) is only used by 'ewc' to estimate the Fisher on
  `reference_batches` (original-domain text, not the new task); default regularizers.lm_loss.
  """
  if mode not in MODES:
    raise ConfigError(f"unknown training mode {mode!r}; expected one of {list(MODES)}")
  opts = _options(options)

  if mode in ("sft", "g_freeze", "g_train", "mlp_only"):
    return TrainMethod(params, partition.trainable_labels(config, params, mode), _identity, None, None, mode)

  if mode == "custom":
    if not opts["rules"]:
      raise ConfigError("mode 'custom' needs options['rules'] = [(path_regex, 'trainable'|'frozen'), ...]")
    return TrainMethod(params, partition.trainable_labels(config, params, opts["rules"]), _identity, None, None,
                       mode)

  if mode == "lora":
    info = {}
    targets = opts["lora_targets"]
    if opts["match_params_of"] is not None:
      target = opts["match_params_of"]
      if not isinstance(target, int) or isinstance(target, bool):
        target = preset_trainable_count(target, config, params, opts["growth_factor"], opts["growth_layers"])
      rank, n = lora.rank_for_count(params, target, targets)
      info = {"match_params_of": opts["match_params_of"], "target_count": target, "lora_count": n,
              "relative_gap": (n - target) / target}
    else:
      rank = opts["lora_rank"]
    rng = jax.random.key(opts["lora_seed"]) if rng is None else rng
    new_params = lora.init(params, rank=rank, rng=rng, targets=targets)
    scale = lora.scale_for(rank, opts["lora_alpha"])
    info = {**info, "lora_rank": rank, "lora_scale": scale}
    model_params = lambda p: lora.merge(p, scale)
    return TrainMethod(new_params, partition.trainable_labels(config, new_params, "lora"), model_params, None,
                       None, mode, info=info)

  if mode == "ewc" and reference_batches is None:
    raise ConfigError("mode 'ewc' needs reference_batches (original-domain text) to estimate the Fisher")
  labels = partition.trainable_labels(config, params, mode)
  anchor = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), params)  # survives donation of params
  if mode == "l2sp":
    return TrainMethod(params, labels, _identity, anchor, None, mode, l2sp_coef=float(opts["l2sp_coef"]))

  # ewc
  fisher = regularizers.estimate_fisher(config, params, reference_batches, loss_fn,
                                        per_example=bool(opts["ewc_per_example"]),
                                        normalize=opts["ewc_normalize"], max_batches=opts["ewc_batches"])
  return TrainMethod(params, labels, _identity, anchor, fisher, mode, ewc_coef=float(opts["ewc_coef"]))


__all__ = ["TrainMethod", "setup_method", "MODES", "OPTION_DEFAULTS", "preset_trainable_count"]
