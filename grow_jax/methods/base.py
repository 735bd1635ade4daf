"""A training method is one class: which leaves train, whether it grows the model, extra leaves, optimizer
extras, its penalty, what it records in a checkpoint. The trainer, accounting and evaluation ask the method;
none of them compares method names.

    method = create("lora", {"lora_rank": 8}, model_config, abstract_params)   # static decisions from shapes
    params = method.init_params(base_params, rng)        # extra leaves (LoRA adapters); pure, jit-able
    method.labels                                        # 'trainable' / 'frozen' per leaf of `params`
    loss(model_config, method.model_params(params), batch)   # what the forward sees (LoRA merged)
    tx = optim.make_optimizer(opt, method.labels, transforms=method.optimizer_transforms(fisher))

A method is *bound* to one model: `create` gets the model config and the (abstract) params, so every decision
that depends on shapes (a LoRA rank matched to G-Freeze's trainable count, the grown layers G-Train opens) is
made once, outside any trace, and is the same on a fresh start, on resume and at evaluation time. `meta()`
records the method's name and resolved options in each checkpoint and `from_meta` rebuilds it.

Adding a method: subclass `Method`, give it a `name`, the `options` it reads (train.<key> with defaults),
override `rules` (and what else differs), decorate with `@register`. Example: `methods/builtin.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import jax

from grow_jax.errors import ConfigError
from grow_jax.methods import partition
from grow_jax.model.config import ModelConfig
from grow_jax.registry import Registry

Params = dict[str, Any]
Rules = Sequence[tuple[str, str]]

# Option names with these prefixes belong to some method: an unknown one is a typo, not another method's key.
_OPTION_PREFIXES = ("lora_", "l2sp_", "ewc_")


class Method:
  """A training protocol bound to one model (see the module docstring). The base class is full fine-tuning."""

  name: ClassVar[str] = "sft"
  description: ClassVar[str] = "every leaf trains (full fine-tuning)"
  # option -> default: the keys of config.train this method reads (checked and resolved in __init__)
  options: ClassVar[Mapping[str, Any]] = {}
  # trains grown MLP copies: the trainer grows the model by 2 unless config.growth.factor says otherwise
  grows: ClassVar[bool] = False
  # trains grown attention heads: the trainer grows the heads x2 unless config.growth.attention_factor says otherwise
  grows_attention: ClassVar[bool] = False
  # the optimizer keeps this many extra copies of every trainable leaf (L2-SP anchor, EWC anchor + Fisher)
  regularizer_copies: ClassVar[int] = 0
  # needs original-domain reference batches at setup (EWC's Fisher)
  needs_reference_data: ClassVar[bool] = False

  def __init__(self, model_config: ModelConfig, params: Params, **options: Any):
    """`params` may be abstract (ShapeDtypeStructs); `options` are this method's keys only, defaults filled."""
    self.model_config = model_config
    self.opts = dict(options)
    self.resolve(params)
    self.labels = self._labels(jax.eval_shape(lambda p: self.init_params(p, jax.random.key(0)), params))

  # ---- what subclasses override ------------------------------------------------------------------------
  @classmethod
  def check_options(cls, options: Mapping[str, Any]) -> None:
    """Raises ConfigError for an option value this method cannot use (before any model exists)."""

  def resolve(self, params: Params) -> None:
    """Static decisions from shapes (e.g. a LoRA rank), stored on self; called once by __init__."""

  def rules(self, config: ModelConfig) -> Rules:
    """Ordered (path regex, 'trainable' | 'frozen') rules, first full match wins (methods/partition.py)."""
    del config
    return [(".*", partition.TRAINABLE)]

  def init_params(self, params: Params, rng) -> Params:
    """The trained params: `params` plus this method's extra leaves. Pure (jit / eval_shape)."""
    del rng
    return params

  def model_params(self, params: Params) -> Params:
    """What `model.forward` sees (e.g. LoRA merged). Pure and differentiable."""
    return params

  def optimizer_transforms(self, fisher: Params | None = None) -> list:
    """optax transforms that run first in the trainable chain (L2-SP / EWC add their penalty's gradient)."""
    del fisher
    return []

  def penalty(self, params: Params, opt_state: Any):
    """The regularizer's value for logging (None: the method has none)."""
    del params, opt_state
    return None

  def info(self) -> dict[str, Any]:
    """What the method decided (logged, and written to checkpoint meta), e.g. {'lora_rank': 298}."""
    return {}

  # ---- shared ------------------------------------------------------------------------------------------
  def _labels(self, params: Params) -> Params:
    rules = list(self.rules(self.model_config))
    return partition.labels_from_rules(rules, params, what=f"method {self.name!r} rules")

  def meta(self) -> dict[str, Any]:
    """What a checkpoint records to rebuild this method (`from_meta`)."""
    return {"name": self.name, "options": _plain(self.opts), "info": _plain(self.info())}

  def __repr__(self) -> str:
    return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in {**self.opts, **self.info()}.items())})"


# ---- the registry --------------------------------------------------------------------------------------
# One grow_jax.registry.Registry, as for tasks and evaluations: a duplicate name is an error unless replaced
# explicitly; the built-in methods are the modules of grow_jax.methods, imported on the first lookup.
METHODS: Registry[type[Method]] = Registry("training mode", package="grow_jax.methods", error=ConfigError)


def register(cls: type[Method] | None = None, *, replace: bool = False):
  """Class decorator: make `cls` available as `config.train.mode = cls.name` (`@register`; a name already
  registered is a ConfigError unless `@register(replace=True)`)."""
  if cls is None:
    return lambda c: METHODS.add(c.name, c, replace=replace)
  return METHODS.add(cls.name, cls, replace=replace)


def unregister(name: str) -> None:
  """Removes a registered method (for tests and notebooks that register temporary ones)."""
  METHODS.remove(name)


register(Method)


def names() -> list[str]:
  """Registered method names, in registration order."""
  return METHODS.names()


def method_class(name: str) -> type[Method]:
  """The registered method `name`; an unknown one is a one-line ConfigError listing the known ones."""
  return METHODS.get(name)


def known_options() -> dict[str, Any]:
  """Every registered method's options with defaults (the keys config.train may hold for methods)."""
  out: dict[str, Any] = {}
  for cls in _REGISTRY.values():
    out.update(cls.options)
  return out


def select_options(cls: type[Method], options: Mapping[str, Any] | None) -> dict[str, Any]:
  """`cls`'s options from a wider mapping (a config.train section): defaults filled, other methods' keys
  ignored, an unknown key with a method prefix (lora_, l2sp_, ewc_) rejected as a typo."""
  options = _as_dict(options)
  known = known_options()
  typos = sorted(k for k in options if k.startswith(_OPTION_PREFIXES) and k not in known)
  if typos:
    raise ConfigError(f"unknown method option(s) {typos}; known ones are "
                      f"{sorted(k for k in known if k.startswith(_OPTION_PREFIXES))}")
  return {k: options.get(k, default) for k, default in cls.options.items()}


def checked_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
  """Method `name`'s options from a wider mapping, checked by the method (no model needed)."""
  cls = method_class(name)
  selected = select_options(cls, options)
  cls.check_options(selected)
  return selected


def create(name: str, options: Mapping[str, Any] | None, model_config: ModelConfig, params: Params) -> Method:
  """The method `name` bound to this model; `options` may be a whole config.train section."""
  return method_class(name)(model_config, params, **checked_options(name, options))


def from_meta(meta: Mapping[str, Any], model_config: ModelConfig, params: Params) -> Method:
  """Rebuild the method a checkpoint was trained with (`Method.meta()`); `params` are the base params
  (without the method's extra leaves), real or abstract."""
  cls = method_class(meta["name"])
  return cls(model_config, params, **{k: v for k, v in meta.get("options", {}).items() if k in cls.options})


def trainable_count(name: str, config: ModelConfig, params: Params, factor: int = 2, layers=None) -> int:
  """Trainable parameter count of method `name` (default options) on this model, or on it grown by
  (factor, layers) when it is not grown (abstract shapes only, no weights are copied)."""
  from grow_jax.growth import operators as growth
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  if not config.is_grown:
    abstract = jax.eval_shape(lambda p: growth.grow_mlp(config, p, factor=factor, layers=layers)[1], abstract)
    config = growth.grow_config(config, factor=factor, layers=layers)
  method = create(name, {}, config, abstract)
  return partition.count(jax.eval_shape(lambda p: method.init_params(p, jax.random.key(0)), abstract), method.labels)


def growth_factor(name: str) -> int:
  """The growth factor a method trains by default: 2 for the growth methods, 1 (no growth) otherwise."""
  return 2 if method_class(name).grows else 1


def attention_growth_factor(name: str) -> int:
  """The attention-head growth factor a method trains by default: 2 for `grows_attention` methods, else 1."""
  return 2 if method_class(name).grows_attention else 1


# ---- the README API: a method and its initial state in one call ---------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainMethod:
  """`setup_method`'s result: a bound method with its initial params (and EWC's Fisher)."""
  method: Method
  params: Params
  fisher: Params | None = None

  @property
  def mode(self) -> str:
    return self.method.name

  @property
  def labels(self) -> Params:
    return self.method.labels

  @property
  def info(self) -> dict[str, Any]:
    return self.method.info()

  def model_params(self, params: Params) -> Params:
    return self.method.model_params(params)

  def optimizer_transforms(self) -> list:
    return self.method.optimizer_transforms(self.fisher)


def setup_method(mode: str, config: ModelConfig, params: Params, options: Mapping | None = None, *, rng=None,
                 reference_batches: Iterable | None = None, loss_fn: Callable | None = None) -> TrainMethod:
  """Bind method `mode` to (config, params) and build its initial state.

  reference_batches / loss_fn: only for methods that need reference data (EWC estimates its Fisher on
  original-domain text with loss_fn(params, batch), default the LM loss).
  """
  method = create(mode, options, config, params)
  new_params = method.init_params(params, jax.random.key(0) if rng is None else rng)
  fisher = None
  if method.needs_reference_data:
    if reference_batches is None:
      raise ConfigError(f"mode {mode!r} needs reference_batches (original-domain text) to estimate the Fisher")
    fisher = method.estimate_fisher(new_params, reference_batches, loss_fn)
  return TrainMethod(method, new_params, fisher)


# ---- helpers -------------------------------------------------------------------------------------------
def _as_dict(options) -> dict[str, Any]:
  if options is None:
    return {}
  if isinstance(options, Mapping):
    return dict(options)
  if hasattr(options, "to_dict"):
    return options.to_dict()
  return dict(options)


def _plain(value):
  """JSON-friendly copy (tuples -> lists, numpy scalars -> Python)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "item") and not isinstance(value, (str, bytes)):
    return value.item()
  return value
