"""Forgetting baselines that keep the capacity fixed: L2-SP and EWC, as optax gradient transformations.

Both add the gradient of a penalty to the incoming gradient, which is exactly what adding the penalty to the
loss would do (they sit first in the trainable chain of optim.make_optimizer, so the penalty gradient is
clipped and Adam-normalised together with the loss gradient, as a loss term would be):

  l2sp(coef, anchor):        penalty (coef / 2) * sum (θ - θ*)²     gradient  coef * (θ - θ*)
  ewc(coef, fisher, anchor): penalty coef * sum F (θ - θ*)²         gradient  2 * coef * F * (θ - θ*)

θ* (the anchor: the initial, pretrained weights) and F (the diagonal Fisher) are kept in the optimizer state,
not closed over: a jit'd step then takes them as arguments instead of baking gigabytes of constants into the
program, and they are checkpointed and sharded with the rest of the state. Under optim.make_optimizer they
exist only for trainable leaves (the transform runs inside optax.partition's trainable branch).

The diagonal Fisher is estimated on a *reference* (original-domain) text set, never on the new task:
F_i = mean over reference sequences of (∂ loss(sequence) / ∂θ_i)² (the empirical Fisher, one gradient per
sequence), optionally normalised to mean 1 so `ewc_coef` reads on the same scale as `l2sp_coef`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grow_jax.model import transformer as model_lib
from grow_jax import tree_paths
from grow_jax.model.config import ModelConfig
from grow_jax.errors import ConfigError
from grow_jax.methods.base import Method, Option, is_abstract, register
from grow_jax.types import Params


class AnchorState(NamedTuple):
  anchor: Any


class EWCState(NamedTuple):
  anchor: Any
  fisher: Any


def _restrict(reference: Any, like: Any, name: str) -> Any:
  """`reference`'s leaves at the paths of `like`'s leaves, copied (`like` may be a masked params tree whose
  frozen leaves are optax MaskedNodes: those get no state)."""
  flat = tree_paths.flatten(reference)

  def pick(path, x):
    if path not in flat:
      raise ConfigError(f"{name} has no leaf {path!r} (it must have the params' structure)")
    ref = flat[path]
    if tuple(ref.shape) != tuple(x.shape):
      raise ConfigError(f"{name} leaf {path!r} has shape {tuple(ref.shape)}, params have {tuple(x.shape)}")
    return jnp.array(ref, dtype=x.dtype, copy=True)

  return tree_paths.map_with_path(pick, like)


def l2sp(coef: float, anchor: Any | None = None) -> optax.GradientTransformation:
  """Add coef * (params - anchor) to the updates (L2-SP; anchor None = the params passed to init)."""
  coef = _check_coef(coef, "l2sp_coef")

  def init_fn(params):
    return AnchorState(_restrict(params if anchor is None else anchor, params, "L2-SP anchor"))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("l2sp needs params in update(updates, state, params)")
    updates = jax.tree.map(lambda g, p, a: g + (coef * (p - a)).astype(g.dtype), updates, params, state.anchor)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def ewc(coef: float, fisher: Any | None, anchor: Any | None = None) -> optax.GradientTransformation:
  """Add 2 * coef * fisher * (params - anchor) to the updates (EWC; anchor None = params at init).

  The Fisher is read at `init` only (it then lives in the state): a transform that only updates a restored
  state may be built with fisher=None.
  """
  coef = _check_coef(coef, "ewc_coef")

  def init_fn(params):
    if fisher is None:
      raise ConfigError("ewc needs a diagonal Fisher: estimate it with regularizers.estimate_fisher(...)")
    return EWCState(_restrict(params if anchor is None else anchor, params, "EWC anchor"),
                    _restrict(fisher, params, "EWC fisher"))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("ewc needs params in update(updates, state, params)")
    updates = jax.tree.map(lambda g, p, a, f: g + (2.0 * coef * f * (p - a)).astype(g.dtype),
                           updates, params, state.anchor, state.fisher)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _check_coef(coef, name: str) -> float:
  if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef < 0:
    raise ConfigError(f"{name}={coef!r}: expected a float >= 0")
  return float(coef)


def penalty(kind: str, coef: float, params: Any, anchor: Any, fisher: Any | None = None) -> jax.Array:
  """The penalty value whose gradient the transforms add (for logging)."""
  if kind == "l2sp":
    sq = jax.tree.map(lambda p, a: jnp.sum(jnp.square((p - a).astype(jnp.float32))), params, anchor)
    return 0.5 * coef * sum(jax.tree.leaves(sq))
  if kind == "ewc":
    sq = jax.tree.map(lambda p, a, f: jnp.sum(f.astype(jnp.float32) * jnp.square((p - a).astype(jnp.float32))),
                      params, anchor, fisher)
    return coef * sum(jax.tree.leaves(sq))
  raise ConfigError(f"penalty kind={kind!r}: expected 'l2sp' or 'ewc'")


# ---- the LM loss and the Fisher ----------------------------------------------------------------------
def lm_loss(config: ModelConfig, params: Params, batch) -> jax.Array:
  """Mean next-token negative log-likelihood.

  batch: token ids (B, T), or a dict with 'tokens' (B, T) and optional 'input_mask' (real tokens),
  'loss_mask' (which target tokens count), 'positions', 'segment_ids'.
  """
  if not isinstance(batch, dict):
    batch = {"tokens": batch}
  tokens = jnp.asarray(batch["tokens"])
  input_mask = batch.get("input_mask")
  input_mask = jnp.ones(tokens.shape, bool) if input_mask is None else jnp.asarray(input_mask, bool)
  logits = model_lib.forward(config, params, tokens, input_mask=input_mask, positions=batch.get("positions"),
                             segment_ids=batch.get("segment_ids"))
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  weight = input_mask[:, 1:] & input_mask[:, :-1]
  if batch.get("loss_mask") is not None:
    weight = weight & jnp.asarray(batch["loss_mask"], bool)[:, 1:]
  weight = weight.astype(jnp.float32)
  return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _scalar(out):
  return out[0] if isinstance(out, tuple) else out


def _examples(batch):
  """Split a batch (array or dict of arrays with a leading batch axis) into single-example batches."""
  leaves = jax.tree.leaves(batch)
  n = leaves[0].shape[0]
  return [jax.tree.map(lambda x: x[i:i + 1], batch) for i in range(n)]


def estimate_fisher(config: ModelConfig, params: Params, batches: Iterable, loss_fn: Callable | None = None, *,
                    per_example: bool = True, normalize: str | None = None, max_batches: int | None = None) -> Params:
  """Diagonal empirical Fisher of `params` on reference batches.

  loss_fn(params, batch) -> scalar (or (scalar, aux)); default: lm_loss with this config. With
  per_example (default) each sequence contributes its own squared gradient (the standard estimate);
  otherwise each batch's mean-loss gradient is squared. normalize: None, 'mean' (scale so the mean entry is 1)
  or 'max'. Returns a float32 tree shaped like params.
  """
  if normalize not in (None, "mean", "max"):
    raise ConfigError(f"ewc_normalize={normalize!r}: expected None, 'mean' or 'max'")
  if loss_fn is None:
    loss_fn = _default_loss(config)
  acc = None
  n = 0
  for k, batch in enumerate(batches):
    if max_batches is not None and k >= max_batches:
      break
    for example in (_examples(batch) if per_example else [batch]):
      if acc is None:
        acc = _zeros_f32(params)
      acc = _accumulate(acc, params, example, loss_fn)
      n += 1
  if n == 0:
    raise ConfigError("estimate_fisher got no reference batches (EWC needs original-domain text)")
  return _finish_fisher(acc, n, normalize)


@functools.lru_cache(maxsize=None)
def _default_loss(config: ModelConfig) -> Callable:
  """lm_loss bound to a config, one function object per config (so jit caches hit across calls)."""
  return functools.partial(lm_loss, config)


@functools.partial(jax.jit, static_argnums=3)
def _accumulate(acc, params, batch, loss_fn):
  g = jax.grad(lambda q: _scalar(loss_fn(q, batch)))(params)
  return jax.tree.map(lambda a, x: a + jnp.square(x.astype(jnp.float32)), acc, g)


@jax.jit
def _zeros_f32(params):
  return jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _finish_fisher(acc, n: int, normalize: str | None):
  fisher = jax.tree.map(lambda a: a / n, acc)
  if normalize is None:
    return fisher
  leaves = jax.tree.leaves(fisher)
  if normalize == "mean":
    ref = sum(jnp.sum(x) for x in leaves) / sum(x.size for x in leaves)
  else:
    ref = jnp.max(jnp.stack([jnp.max(x) for x in leaves]))
  return jax.tree.map(lambda x: x / jnp.maximum(ref, 1e-30), fisher)


def _logged_penalty(kind: str, coef: float, params, opt_state):
  """The penalty whose gradient the transform adds, from the anchor (and Fisher) in the optimizer state."""
  found = tree_paths.find_nodes(opt_state, (AnchorState, EWCState))
  if not found:
    return jnp.zeros((), jnp.float32)
  reg = found[0]
  flat = tree_paths.flatten(params)
  anchor = tree_paths.flatten(reg.anchor)
  fisher = tree_paths.flatten(reg.fisher) if kind == "ewc" else None
  return penalty(kind, coef, {k: flat[k] for k in anchor}, anchor, fisher)


# ---- the methods ---------------------------------------------------------------------------------------
def _is_coef(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


_COEF = "a float >= 0"


@register
class L2SP(Method):
  """Full fine-tuning pulled toward the initial weights: penalty (l2sp_coef / 2) * ||θ - θ*||²."""

  name = "l2sp"
  description = "every leaf trains, pulled toward the initial weights (l2sp_coef)"
  options = {"l2sp_coef": Option(0.01, check=_is_coef, expected=_COEF, help="the penalty's coefficient")}
  regularizer_copies = 1

  def optimizer_transforms(self, prepared=None):
    return [l2sp(self.opts["l2sp_coef"])]

  def penalty(self, params, opt_state):
    return _logged_penalty("l2sp", self.opts["l2sp_coef"], params, opt_state)


@register
class EWC(Method):
  """Full fine-tuning with a diagonal-Fisher penalty ewc_coef * Σ F (θ - θ*)²; the Fisher is estimated once, in
  `prepare`, on original-domain reference text (Context.reference_batches: the trainer's
  train.reference_task), never on the new task."""

  name = "ewc"
  description = "every leaf trains, with a diagonal-Fisher penalty (ewc_coef) estimated on reference text"
  options = {
      "ewc_coef": Option(0.01, check=_is_coef, expected=_COEF, help="the penalty's coefficient"),
      "ewc_batches": Option(4, check=lambda n: n is None or (isinstance(n, int) and not isinstance(n, bool) and n > 0),
                            expected="a positive number of batches (None: every reference batch)",
                            help="reference batches the Fisher is estimated on"),
      "ewc_normalize": Option("mean", check=lambda v: v in (None, "mean", "max"), expected="None, 'mean' or 'max'",
                              help="Fisher scaled to mean 1 ('mean') or max 1 ('max')"),
      "ewc_per_example": Option(True, check=lambda v: isinstance(v, bool), expected="a boolean", config=False,
                                help="one squared gradient per sequence (False: per batch)"),
  }
  regularizer_copies = 2
  needs_reference_data = True

  def prepare(self, params):
    """The diagonal Fisher on the context's reference batches (its shapes when `params` are abstract)."""
    if is_abstract(params):
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params)
    if self.context.reference_batches is None:
      raise ConfigError(f"mode {self.name!r} needs reference_batches (original-domain text) to estimate the Fisher")
    n = self.opts["ewc_batches"]
    return estimate_fisher(self.model_config, params, self.context.reference_batches(n), self.context.loss_fn,
                           per_example=bool(self.opts["ewc_per_example"]), normalize=self.opts["ewc_normalize"],
                           max_batches=n)

  def optimizer_transforms(self, prepared=None):
    return [ewc(self.opts["ewc_coef"], prepared)]

  def penalty(self, params, opt_state):
    return _logged_penalty("ewc", self.opts["ewc_coef"], params, opt_state)


__all__ = ["L2SP", "EWC", "l2sp", "ewc", "estimate_fisher", "lm_loss", "penalty", "AnchorState", "EWCState"]
