"""What a run trains, built abstract-first: the model (init source + growth), the method, the optimizer, the
sharded state.

    mc = model_config(config)                                   # no weights (a GGUF's file is opened once)
    setup = build(config, mc, model.abstract_params(mc), mesh)  # abstract: the restore target, nothing computed
    mc, base = init_params(config, mesh)                        # weights, sharded, then grown
    setup, state = build(config, mc, base, mesh, reference_batches=...)   # materialised (+ method.prepare)

Both paths bind the method to the same (abstract) shapes, so its decisions (a LoRA rank matched to
G-Freeze's count, the layers G-Train opens) are identical on a fresh start and on resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from grow_jax import formats, methods
from grow_jax.errors import ConfigError
from grow_jax.growth import attention, operators as growth, tasks
from grow_jax.model import transformer
from grow_jax.model.config import COMPUTE_FIELDS, ModelConfig, abstract_params, parse_layers
from grow_jax.train import checkpointing, config as config_lib, optim, sharding, step as step_lib
from grow_jax.types import Params


# ---- the model ---------------------------------------------------------------------------------------
def base_model_config(config) -> ModelConfig:
  """The init source's ModelConfig with config.model overrides, read without weights. Architecture overrides
  (num_layers, hidden_dim) are for random:<preset> sources only; dtypes and the compute settings (remat,
  scan_layers) are for every source."""
  overrides = config_lib.model_overrides(config)
  try:
    source = formats.parse_source(config.init.source)
  except ConfigError as e:
    raise ConfigError(f"config.init.source={config.init.source!r}: {e}") from None
  shape_keys = sorted(set(overrides) - {"dtype", "param_dtype", *COMPUTE_FIELDS})
  if shape_keys and source.kind != "random":
    raise ConfigError(f"config.model.{shape_keys[0]}={overrides[shape_keys[0]]!r} changes the architecture; "
                      f"only random:<preset> sources allow that (config.init.source={config.init.source!r})")
  try:
    return formats.load_config(config.init.source, **overrides)
  except ConfigError as e:
    raise type(e)(f"config.init.source={config.init.source!r}: {e}") from None


def growth_layers(config, base: ModelConfig):
  """config.growth.layers (or the layers of config.growth.plan, whose model must be `base`) checked against
  the model's depth (None = all layers)."""
  if config.growth.plan:
    from grow_jax.growth import plan_file as plan_lib
    plan = plan_lib.read_plan(config.growth.plan, field="config.growth.plan")
    plan_lib.check_model(plan, base, field="config.growth.plan")
    return parse_layers(plan["layers"], base.num_layers, field=f"config.growth.plan={config.growth.plan!r} layers")
  return parse_layers(config.growth.layers, base.num_layers, field="config.growth.layers")


def grown_model_config(config, base: ModelConfig) -> ModelConfig:
  """The model this config trains: the init source's config grown (MLP, then attention heads) as
  config.growth says."""
  factor, heads = config_lib.growth_factor(config), config_lib.attention_growth_factor(config)
  mc = base
  if factor > 1 and config.growth.task:
    mc = tasks.grow_task_config(mc, config.growth.task, layers=growth_layers(config, base))
  elif factor > 1:
    mc = growth.grow_config(mc, factor=factor, layers=growth_layers(config, base))
  if heads > 1:
    mc = attention.attention_config(mc, factor=heads, grow_kv=config.growth.attention_kv,
                                    layers=growth_layers(config, base))
  return mc


def base_params(config, mesh) -> tuple[ModelConfig, Params]:
  """The init source's weights (random:<preset>: drawn from config.seed), placed sharded, before growth."""
  overrides = config_lib.model_overrides(config)
  source = formats.parse_source(config.init.source)
  if source.kind == "random":
    mc = base_model_config(config)
    shardings = sharding.param_shardings(abstract_params(mc), mesh)
    init = jax.jit(lambda key: transformer.init_params(mc, key), out_shardings=shardings)
    return mc, init(jax.random.key(config.seed))
  mc, host = formats.load_checkpoint(config.init.source, **overrides)
  return mc, sharding.put_global(host, sharding.param_shardings(host, mesh))


def init_params(config, mesh) -> tuple[ModelConfig, Params]:
  """The init source's weights, sharded, grown as config.growth says (0 = the method's default factor)."""
  mc, params = base_params(config, mesh)
  factor, heads = config_lib.growth_factor(config), config_lib.attention_growth_factor(config)
  if factor == 1 and heads == 1:
    return mc, params
  g = config.growth
  layers = growth_layers(config, mc)
  grown_mc = grown_model_config(config, mc)

  def grow(p):
    c = mc
    if factor > 1 and g.task:
      c, p = tasks.grow_task(c, p, g.task, layers=layers, noise_scale=g.noise_scale, seed=g.seed)
    elif factor > 1:
      c, p = growth.grow_mlp(c, p, factor=factor, layers=layers, noise_scale=g.noise_scale, seed=g.seed)
    if heads > 1:
      c, p = attention.grow_attention(c, p, factor=heads, grow_kv=g.attention_kv, layers=layers)
    return p

  shardings = sharding.param_shardings(abstract_params(grown_mc), mesh)
  return grown_mc, jax.jit(grow, out_shardings=shardings)(params)


# ---- method, optimizer, state ------------------------------------------------------------------------
@dataclasses.dataclass
class TrainSetup:
  """Everything the loop needs about the trained model."""
  model_config: ModelConfig
  method: methods.Method
  tx: optax.GradientTransformation
  state_shardings: Any
  abstract_state: Any                # ShapeDtypeStructs carrying `state_shardings`


def build(config, mc: ModelConfig, params: Params, mesh, *,
          reference_batches: Callable[[int | None], Iterable] | None = None,
          abstract: bool = False) -> tuple[TrainSetup, Any]:
  """The method bound to this model (methods.Method.bind, as setup_method does), the optimizer and the state.

  abstract=False: `params` are the real (sharded, grown) weights; returns (setup, materialised sharded state).
  abstract=True: `params` are ShapeDtypeStructs; nothing is computed; returns (setup, None), and
  `setup.abstract_state` is the restore target.
  reference_batches: n -> at most n batches of original-domain text (read only by a method that prepares on
  them, and only on a fresh start).
  """
  shapes = methods.base.shapes_of(params)
  loss_fn = lambda p, b: step_lib.mean_loss(mc, p, b, loss_chunk=config.train.loss_chunk)
  context = methods.Context(growth_layers=config_lib.growth_layers_spec(config), reference_batches=reference_batches,
                            loss_fn=loss_fn)
  method = methods.create(config.train.mode, config_lib.method_options(config), mc, shapes, context)
  opt = config_lib.optimizer_config(config)
  rng = jax.random.key(config.seed + 1)

  bound = method.bind(shapes, rng)                        # shapes: the trained params and what prepare makes
  opt_state = jax.eval_shape(lambda p, prepared: optim.make_optimizer(
      opt, dataclasses.replace(bound, prepared=prepared)).init(p), bound.params, bound.prepared)
  param_sh = sharding.param_shardings(bound.params, mesh)
  opt_sh = sharding.like_params_shardings(opt_state, param_sh, bound.params, mesh)
  rep = sharding.replicated(mesh)
  state_sh = {"step": rep, "params": param_sh, "opt_state": opt_sh, "rng": rep}
  rng_data = jax.random.key_data(jax.random.key(config.seed))
  abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": bound.params, "opt_state": opt_state,
                    "rng": jax.ShapeDtypeStruct(rng_data.shape, rng_data.dtype)}
  abstract_state = checkpointing.abstract_with_shardings(abstract_state, state_sh)
  if abstract:
    # The transforms' update reads only their state, so this optimizer also steps a restored or fresh state.
    return TrainSetup(mc, method, optim.make_optimizer(opt, bound), state_sh, abstract_state), None

  bound = method.bind(params, rng, shardings=param_sh)
  tx = optim.make_optimizer(opt, bound)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(bound.params)
  state = {"step": jax.device_put(jnp.zeros((), jnp.int32), rep), "params": bound.params, "opt_state": opt_state,
           "rng": jax.device_put(rng_data, rep)}
  return TrainSetup(mc, method, tx, state_sh, abstract_state), state


def jit_train_step(config, setup: TrainSetup, mesh, target_capacity: int):
  """`train_step(state, batch) -> (state, metrics)` jitted with explicit shardings and a donated state."""
  step_fn = step_lib.make_train_step(setup.model_config, setup.method, setup.tx,
                                     schedule=optim.schedule_fn(config_lib.optimizer_config(config)),
                                     loss_chunk=config.train.loss_chunk, target_capacity=target_capacity,
                                     groups=sharding.data_parallel_size(mesh))
  return jax.jit(step_fn, in_shardings=(setup.state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(setup.state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
