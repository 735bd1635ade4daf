"""A training method is one class in one file: which leaves train, whether it grows the model, its options,
extra leaves, what it prepares before the first step, optimizer extras, its penalty, what it records in a
checkpoint. The trainer, accounting and evaluation ask the method; none of them compares method names or
names a method's option.

    method = create("lora", {"lora_rank": 8}, model_config, abstract_params)   # static decisions from shapes
    bound = method.bind(params, rng)                     # init_params (extra leaves) + prepare (e.g. a Fisher)
    bound.labels                                         # 'trainable' / 'frozen' per leaf of bound.params
    loss(model_config, bound.model_params(params), batch)    # what the forward sees (LoRA merged)
    tx = optim.make_optimizer(opt, bound)                # the method's transforms run first

`setup_method(mode, config, params, options)` is `create` + `bind` in one call; the trainer (train/setup.py)
binds the same way, once on abstract shapes (the restore target) and once on the real weights.

A method is *bound* to one model: `create` gets the model config and the (abstract) params, so every decision
that depends on shapes (a LoRA rank matched to G-Freeze's trainable count, the grown layers G-Train opens) is
made once, outside any trace, and is the same on a fresh start, on resume and at evaluation time. `meta()`
records the method's name and resolved options in each checkpoint and `from_meta` rebuilds it.

Options: a method declares `options = {"name": Option(default, ...)}`; each one with `config=True` is a key
of the trainer's config, `config.train.<name>` (train/config.py gains them from the registry, so the trainer
never names one). What the trainer knows about the run besides the options (the layers its config grows,
reference batches of original-domain text, its loss) reaches the method as a `Context`.

Adding a method: one file under grow_jax/methods/ (or anywhere, imported before the config is built) with a
subclass of `Method` decorated with `@register`; docs/design.md "Extending grow_jax" is the walk-through.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import jax

from grow_jax import files
from grow_jax.errors import ConfigError
from grow_jax.methods import partition
from grow_jax.model.config import ModelConfig
from grow_jax.registry import Registry
from grow_jax.types import Params

Rules = Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a method: a keyword of `create` / `setup_method` and, with `config=True`, the key
  `config.train.<name>` of the trainer's config (settable as `--config.train.<name>=...`).

  default: the value when none is given (also the config's default).
  type: the value's type when `default` is None (the config key is then a typed placeholder).
  check: value -> bool, whether the method can use the value (run before any model exists); a value it
    rejects is one ConfigError, '<name>=<value>: expected <expected>'.
  expected: what `check` accepts, in words.
  config: whether the trainer's config has the key (False: the Python API only, e.g. a list of rules).
  """
  default: Any
  type: type | None = None
  check: Callable[[Any], bool] | None = None
  expected: str = "a value the method accepts"
  help: str = ""
  config: bool = True

  def validate(self, name: str, value: Any) -> None:
    if self.check is not None and not self.check(value):
      raise ConfigError(f"{name}={value!r}: expected {self.expected}")


@dataclasses.dataclass(frozen=True)
class Context:
  """What the trainer tells a method about the run besides its options; every field may be left unset (the
  Python API's default).

  growth_layers: the layers the run's config grows ('all', '0,3,5' or indices; None = all): the model a method
    compares itself with (LoRA's match_params_of).
  reference_batches: n -> an iterable of at most n batches of original-domain text (None = all), read only when
    called (EWC's Fisher).
  loss_fn: (params, batch) -> the mean training loss (None: the method's own default).
  """
  growth_layers: Any = None
  reference_batches: Callable[[int | None], Iterable] | None = None
  loss_fn: Callable | None = None


class Method:
  """A training protocol bound to one model (see the module docstring). The base class is full fine-tuning."""

  name: ClassVar[str] = "sft"
  description: ClassVar[str] = "every leaf trains (full fine-tuning)"
  # option name -> Option: checked and resolved (defaults filled) before __init__
  options: ClassVar[Mapping[str, Option]] = {}
  # trains grown MLP copies: the trainer grows the model by 2 unless config.growth.factor says otherwise
  grows: ClassVar[bool] = False
  # trains grown attention heads: the trainer grows the heads x2 unless config.growth.attention_factor says otherwise
  grows_attention: ClassVar[bool] = False
  # the optimizer keeps this many extra copies of every trainable leaf (L2-SP anchor, EWC anchor + Fisher)
  regularizer_copies: ClassVar[int] = 0
  # prepare() reads Context.reference_batches (so the trainer stages and loads train.reference_task)
  needs_reference_data: ClassVar[bool] = False

  def __init__(self, model_config: ModelConfig, params: Params, context: Context | None = None, **options: Any):
    """`params` may be abstract (ShapeDtypeStructs); `options` are this method's keys only, defaults filled."""
    self.model_config = model_config
    self.context = context or Context()
    self.opts = dict(options)
    self.resolve(params)
    self.labels = self._labels(jax.eval_shape(lambda p: self.init_params(p, jax.random.key(0)), params))

  # ---- what subclasses override ------------------------------------------------------------------------
  @classmethod
  def check_options(cls, options: Mapping[str, Any]) -> None:
    """Raises ConfigError for an option value this method cannot use (before any model exists). The base
    runs every Option's own check; override (calling super) for checks across options."""
    for name, option in cls.options.items():
      option.validate(name, options[name])

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

  def prepare(self, params: Params) -> Any:
    """What the method computes once before the first step from its initial params (after init_params),
    e.g. EWC's Fisher on `self.context.reference_batches`; handed to `optimizer_transforms`, whose state keeps
    it (so a resumed run does not prepare again). `params` may be abstract (ShapeDtypeStructs): then return
    the shapes of what would be computed, reading nothing. None: nothing to prepare."""
    del params
    return None

  def model_params(self, params: Params) -> Params:
    """What `model.forward` sees (e.g. LoRA merged). Pure and differentiable."""
    return params

  def optimizer_transforms(self, prepared: Any = None) -> list:
    """optax transforms that run first in the trainable chain (L2-SP / EWC add their penalty's gradient).
    `prepared` is what `prepare` returned; a transform's init may read it, its update must read only its state."""
    del prepared
    return []

  def penalty(self, params: Params, opt_state: Any):
    """The regularizer's value for logging (None: the method has none)."""
    del params, opt_state
    return None

  def info(self) -> dict[str, Any]:
    """What the method decided (logged, and written to checkpoint meta), e.g. {'lora_rank': 298}."""
    return {}

  # ---- shared ------------------------------------------------------------------------------------------
  def bind(self, params: Params, rng=None, *, shardings=None) -> TrainMethod:
    """This method with its initial state: `init_params` (jitted onto `shardings` when given; shapes only
    when `params` are abstract), then `prepare`."""
    rng = jax.random.key(0) if rng is None else rng
    if is_abstract(params):
      trained = jax.eval_shape(self.init_params, params, rng)
    elif shardings is not None:
      trained = jax.jit(self.init_params, out_shardings=shardings)(params, rng)
    else:
      trained = self.init_params(params, rng)
    return TrainMethod(self, trained, self.prepare(trained))

  def _labels(self, params: Params) -> Params:
    rules = list(self.rules(self.model_config))
    return partition.labels_from_rules(rules, params, what=f"method {self.name!r} rules")

  def meta(self) -> dict[str, Any]:
    """What a checkpoint records to rebuild this method (`from_meta`)."""
    return {"name": self.name, "options": files.json_ready(self.opts), "info": files.json_ready(self.info()),
            "context": {"growth_layers": files.json_ready(self.context.growth_layers)}}

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


def declared_options() -> dict[str, Option]:
  """Every registered method's options (name -> Option). Two methods may declare one name only with the same
  Option (a subclass inherits its parent's); another Option under a taken name is an error naming both."""
  out: dict[str, Option] = {}
  owner: dict[str, str] = {}
  for name in names():
    for key, option in method_class(name).options.items():
      if not isinstance(option, Option):
        raise ConfigError(f"method {name!r} option {key!r}={option!r}: expected an Option(default, ...)")
      if key in out and out[key] != option:
        raise ConfigError(f"method {name!r} declares option {key!r} unlike method {owner[key]!r} "
                          f"({option!r} vs {out[key]!r}); rename one")
      out.setdefault(key, option)
      owner.setdefault(key, name)
  return out


def config_options() -> dict[str, Option]:
  """The options that are keys of the trainer's config (`config.train.<name>`), every registered method's."""
  return {k: o for k, o in declared_options().items() if o.config}


def select_options(cls: type[Method], options: Mapping[str, Any] | None) -> dict[str, Any]:
  """`cls`'s options from a wider mapping: defaults filled, other methods' options ignored (one mapping may
  serve several methods), a name no registered method declares rejected as a typo."""
  options = _as_dict(options)
  known = declared_options()
  typos = sorted(k for k in options if k not in known)
  if typos:
    close = sorted({m for k in typos for m in difflib.get_close_matches(k, known, n=1)})
    hint = f" (did you mean {close}?)" if close else ""
    raise ConfigError(f"unknown method option(s) {typos}{hint}; the registered methods' options are {sorted(known)}")
  return {k: options.get(k, option.default) for k, option in cls.options.items()}


def checked_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
  """Method `name`'s options from a wider mapping, checked by the method (no model needed)."""
  cls = method_class(name)
  selected = select_options(cls, options)
  cls.check_options(selected)
  return selected


def create(name: str, options: Mapping[str, Any] | None, model_config: ModelConfig, params: Params,
           context: Context | None = None) -> Method:
  """The method `name` bound to this model (`params` real or abstract)."""
  return method_class(name)(model_config, params, context, **checked_options(name, options))


def from_meta(meta: Mapping[str, Any], model_config: ModelConfig, params: Params) -> Method:
  """Rebuild the method a checkpoint was trained with (`Method.meta()`); `params` are the base params
  (without the method's extra leaves), real or abstract."""
  cls = method_class(meta["name"])
  stored = dict(meta.get("options", {}))
  # Checkpoints written before Context recorded LoRA's growth layers among its options.
  layers = meta.get("context", {}).get("growth_layers", stored.get("growth_layers"))
  return cls(model_config, params, Context(growth_layers=layers),
             **{k: stored.get(k, o.default) for k, o in cls.options.items()})


def trainable_count(name: str, config: ModelConfig, params: Params, factor: int = 2, layers=None) -> int:
  """Trainable parameter count of method `name` (default options) on this model, or on it grown by
  (factor, layers) when it is not grown (abstract shapes only, no weights are copied)."""
  from grow_jax.growth import operators as growth
  abstract = shapes_of(params)
  if not config.is_grown:
    abstract = jax.eval_shape(lambda p: growth.grow_mlp(config, p, factor=factor, layers=layers)[1], abstract)
    config = growth.grow_config(config, factor=factor, layers=layers)
  bound = create(name, {}, config, abstract).bind(abstract)
  return partition.count(bound.params, bound.labels)


def growth_factor(name: str) -> int:
  """The growth factor a method trains by default: 2 for the growth methods, 1 (no growth) otherwise."""
  return 2 if method_class(name).grows else 1


def attention_growth_factor(name: str) -> int:
  """The attention-head growth factor a method trains by default: 2 for `grows_attention` methods, else 1."""
  return 2 if method_class(name).grows_attention else 1


# ---- a bound method: the one way to bind (Method.bind; setup_method = create + bind) -------------------
@dataclasses.dataclass(frozen=True)
class TrainMethod:
  """A method with its initial state: the trained params (with its extra leaves; real or abstract) and what
  `prepare` returned (EWC's Fisher, or its shapes; None for most methods)."""
  method: Method
  params: Params
  prepared: Any = None

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
    return self.method.optimizer_transforms(self.prepared)


def setup_method(mode: str, config: ModelConfig, params: Params, options: Mapping | None = None, *, rng=None,
                 reference_batches: Iterable | Callable[[int | None], Iterable] | None = None,
                 loss_fn: Callable | None = None, growth_layers=None, shardings=None) -> TrainMethod:
  """Method `mode` bound to (config, params) with its initial state: `create(...).bind(params, rng)`.

  reference_batches: original-domain batches for a method that needs them (EWC's Fisher), an iterable or a
  function n -> at most n batches; loss_fn(params, batch): the loss it differentiates (default: the LM loss);
  growth_layers: the layers a run grows, for a method that compares itself with a grown model (LoRA's
  match_params_of); shardings: where init_params puts the params (jitted).
  """
  if reference_batches is not None and not callable(reference_batches):
    batches = reference_batches
    reference_batches = lambda n: batches if n is None else _first(batches, n)
  context = Context(growth_layers=growth_layers, reference_batches=reference_batches, loss_fn=loss_fn)
  return create(mode, options, config, shapes_of(params), context).bind(params, rng, shardings=shardings)


# ---- helpers -------------------------------------------------------------------------------------------
def is_abstract(params: Params) -> bool:
  """Whether every leaf is a ShapeDtypeStruct (shapes, no weights)."""
  leaves = jax.tree.leaves(params)
  return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def shapes_of(params: Params) -> Params:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)


def _first(batches: Iterable, n: int) -> list:
  out = []
  for batch in batches:
    if len(out) == n:
      break
    out.append(batch)
  return out


def _as_dict(options) -> dict[str, Any]:
  if options is None:
    return {}
  if isinstance(options, Mapping):
    return dict(options)
  if hasattr(options, "to_dict"):
    return options.to_dict()
  return dict(options)
