"""Loss, train step and eval step: pure functions that the trainer jits with explicit shardings.

Loss: mean next-token cross-entropy over target tokens only. `loss_mask[b, t] = 1` marks `tokens[b, t]` as a
target, predicted from position t - 1 of the same packed segment. With `target_capacity > 0` the output head
runs only at target positions (gathered per group of rows into a static block, dense fallback for more);
with `loss_chunk > 0` the logits are made `loss_chunk` positions at a time inside a rematerialised scan, so
the (B, T, V) float32 logits (V = 262144 on Gemma 3) never exist at once, in the forward or the backward pass.

Train step: gradients only for trainable leaves (frozen leaves are closed over, so XLA computes no gradient
for them); gradient accumulation over microbatches with `jax.lax.scan` (sums of per-token losses and their
gradients, divided by the total target count at the end: equal to the big-batch step up to float rounding);
the optimizer update (which adds the L2-SP / EWC gradient, see methods/regularizers.py); metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grow_jax import tree_paths
from grow_jax.methods.base import Method
from grow_jax.methods.partition import TRAINABLE
from grow_jax.model import transformer as model_lib
from grow_jax.model.config import ModelConfig
from grow_jax.types import Params

Batch = Mapping[str, jax.Array]


# ---- loss --------------------------------------------------------------------------------------------
def target_weights(batch: Batch) -> jax.Array:
  """(B, T-1) float32: 1 where tokens[:, t+1] is a target predicted from position t of its own segment."""
  w = batch["loss_mask"][:, 1:].astype(jnp.float32)
  if "segment_ids" in batch:
    seg = batch["segment_ids"]
    w = w * (seg[:, 1:] == seg[:, :-1]).astype(jnp.float32)
  if "input_mask" in batch:
    w = w * batch["input_mask"][:, 1:].astype(jnp.float32)
  return w


def _nll(hidden, embedding, targets, softcap):
  """Per-position negative log-likelihood: hidden (B, C, D), targets (B, C) -> (B, C) float32."""
  logits = model_lib.unembed(embedding, hidden, softcap)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return lse - picked


def chunked_nll(hidden, embedding, targets, softcap, loss_chunk: int = 0) -> jax.Array:
  """`_nll` over (B, C) positions, `loss_chunk` positions at a time in a rematerialised scan (0 = all at once),
  so the (B, C, V) float32 logits never exist whole, in the forward or the backward pass."""
  B, C, D = hidden.shape
  if loss_chunk <= 0 or loss_chunk >= C:
    return _nll(hidden, embedding, targets, softcap)
  n = -(-C // loss_chunk)
  pad = n * loss_chunk - C
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(B, n, loss_chunk, D).swapaxes(0, 1)
  t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, loss_chunk).swapaxes(0, 1)
  chunk_fn = jax.checkpoint(lambda hc, tc: _nll(hc, embedding, tc, softcap))
  _, nll = jax.lax.scan(lambda carry, xs: (carry, chunk_fn(*xs)), None, (h, t))   # (n, B, c)
  return nll.swapaxes(0, 1).reshape(B, n * loss_chunk)[:, :C]


def final_hidden(config: ModelConfig, params: Params, batch: Batch) -> jax.Array:
  """Final-norm hidden states (B, T, D) of a batch (the model's forward without the output head)."""
  return model_lib.forward(config, params, batch["tokens"], positions=batch.get("positions"),
                           input_mask=batch.get("input_mask"), segment_ids=batch.get("segment_ids"),
                           return_hidden=True)


def token_nll(config: ModelConfig, params: Params, batch: Batch, *, loss_chunk: int = 0) -> jax.Array:
  """(B, T-1) float32 NLL of every next token (unweighted; the dense computation)."""
  hidden = final_hidden(config, params, batch)[:, :-1]
  return chunked_nll(hidden, params["embedder"]["input_embedding"], batch["tokens"][:, 1:],
                     config.final_logit_softcap, loss_chunk)


def loss_sums(config: ModelConfig, params: Params, batch: Batch, *, loss_chunk: int = 0,
              target_capacity: int = 0, groups: int = 1):
  """(sum of target-token NLL, number of target tokens), both float32 scalars.

  target_capacity > 0 unembeds only the positions with a nonzero loss weight: the rows are taken in `groups`
  contiguous groups (one per data shard, so the gather stays on its device), each group's target positions
  are gathered into a static block of `target_capacity`, and the logits and their backward are computed
  there alone (Gemma 3's 262k-entry output head is ~60% of the 270M's forward FLOPs, and ~30% of a packed
  translation batch are targets). A batch with a group of more targets than the capacity takes the dense
  path instead (`lax.cond`), so the result is always the dense one (to float rounding).
  """
  w = target_weights(batch)
  hidden = final_hidden(config, params, batch)[:, :-1]
  targets = batch["tokens"][:, 1:]
  embedding, softcap = params["embedder"]["input_embedding"], config.final_logit_softcap
  dense = lambda: jnp.sum(chunked_nll(hidden, embedding, targets, softcap, loss_chunk) * w)
  B, positions = w.shape
  if target_capacity <= 0 or target_capacity >= B // groups * positions:
    return dense(), jnp.sum(w)
  flat = lambda x: x.reshape(groups, B // groups * positions, *x.shape[2:])
  w_g, t_g, h_g = flat(w), flat(targets), flat(hidden)
  is_target = w_g > 0
  counts = jnp.sum(is_target, axis=1)

  def sparse():
    index = jax.vmap(lambda m: jnp.nonzero(m, size=target_capacity, fill_value=0)[0])(is_target)   # (G, C)
    valid = jnp.arange(target_capacity)[None, :] < counts[:, None]
    h = jnp.take_along_axis(h_g, index[..., None], axis=1)
    t = jnp.take_along_axis(t_g, index, axis=1)
    weight = jnp.take_along_axis(w_g, index, axis=1) * valid
    return jnp.sum(chunked_nll(h, embedding, t, softcap, loss_chunk) * weight)

  total = jax.lax.cond(jnp.all(counts <= target_capacity), sparse, dense)
  return total, jnp.sum(w)


def target_capacity_for(batches, *, groups: int = 1, multiple: int = 16, margin: float = 1.1) -> int:
  """A static target capacity per group of rows for `loss_sums` from sample host batches (each (..., B, T)):
  the largest group count of target positions seen, times `margin`, rounded up to `multiple`; 0 (dense)
  when that saves less than a tenth of the group's positions."""
  most, positions = 0, 0
  for batch in batches:
    loss_mask = np.asarray(batch["loss_mask"])
    for rows in loss_mask.reshape(-1, *loss_mask.shape[-2:])[..., 1:] > 0:   # each (micro)batch: (B, T-1)
      per_group = rows.reshape(groups, -1).sum(axis=1)
      positions = rows.shape[0] // groups * rows.shape[1]
      most = max(most, int(per_group.max()))
  if positions == 0:
    return 0
  capacity = -(-int(np.ceil(most * margin)) // multiple) * multiple
  return capacity if capacity <= 0.9 * positions else 0


def mean_loss(config: ModelConfig, params: Params, batch: Batch, *, loss_chunk: int = 0) -> jax.Array:
  """Mean target-token cross-entropy of a (B, T) batch (the `loss_fn` EWC's Fisher uses)."""
  s, n = loss_sums(config, params, batch, loss_chunk=loss_chunk)
  return s / jnp.maximum(n, 1.0)


# ---- trainable / frozen split ---------------------------------------------------------------------------
def trainable_map(labels) -> dict[str, bool]:
  """path -> True for leaves labelled 'trainable' (a method's `labels`)."""
  return {p: l == TRAINABLE for p, l in tree_paths.flatten(labels).items()}


def split_trainable(params: Params, trainable: Mapping[str, bool]):
  """({path: leaf} trainable, {path: leaf} frozen, treedef) from a nested params dict."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  train, frozen, order = {}, {}, []
  for kp, leaf in leaves:
    path = tree_paths.path_str(kp)
    if path not in trainable:
      raise KeyError(f"parameter {path!r} has no trainable/frozen label")
    (train if trainable[path] else frozen)[path] = leaf
    order.append(path)
  return train, frozen, (treedef, tuple(order))


def merge_trainable(train: Mapping[str, Any], frozen: Mapping[str, Any], structure) -> Params:
  treedef, order = structure
  return jax.tree_util.tree_unflatten(treedef, [train[p] if p in train else frozen[p] for p in order])


# ---- train step --------------------------------------------------------------------------------------
def make_train_step(config: ModelConfig, method: Method, tx: optax.GradientTransformation, *,
                    schedule: Callable[[jax.Array], jax.Array] | None = None, loss_chunk: int = 0,
                    target_capacity: int = 0, groups: int = 1):
  """Returns `train_step(state, batch) -> (state, metrics)`.

  state:  {'step': int32 scalar, 'params': method params, 'opt_state': ..., 'rng': uint32 key data}
  batch:  dict of (A, B, T) arrays: A microbatches of B rows each (A = grad_accum_steps)
  metrics: loss (mean target-token CE), grad_norm (trainable leaves, before clipping), update_norm,
           param_norm (trainable), tokens (target count), finite, lr, penalty (L2-SP / EWC, if any).
  """

  trainable = trainable_map(method.labels)

  def micro_sums(train, frozen, structure, micro):
    params = merge_trainable(train, frozen, structure)
    return loss_sums(config, method.model_params(params), micro, loss_chunk=loss_chunk,
                     target_capacity=target_capacity, groups=groups)

  def train_step(state, batch):
    params = state["params"]
    train, frozen, structure = split_trainable(params, trainable)
    grad_fn = jax.value_and_grad(micro_sums, has_aux=True)
    accum = next(iter(batch.values())).shape[0]

    def one(micro):
      (s, n), g = grad_fn(train, frozen, structure, micro)
      return s, n, jax.tree.map(lambda x: x.astype(jnp.float32), g)

    if accum == 1:
      s, n, g = one(jax.tree.map(lambda x: x[0], batch))
    else:
      def body(carry, micro):
        s, n, g = one(micro)
        cs, cn, cg = carry
        return (cs + s, cn + n, jax.tree.map(jnp.add, cg, g)), None
      zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
               jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), train))
      (s, n, g), _ = jax.lax.scan(body, zeros, batch)

    denom = jnp.maximum(n, 1.0)
    ce = s / denom
    grads = jax.tree.map(lambda x: x / denom, g)
    grads = {p: grads[p].astype(train[p].dtype) for p in grads}
    grad_norm = optax.global_norm(grads)

    # Frozen leaves get zero gradients that the optimizer's set_to_zero branch never reads (XLA drops them).
    full_grads = merge_trainable(grads, jax.tree.map(jnp.zeros_like, frozen), structure)
    updates, opt_state = tx.update(full_grads, state["opt_state"], params)
    upd, _, _ = split_trainable(updates, trainable)
    new_train = {p: (train[p] + upd[p].astype(train[p].dtype)).astype(train[p].dtype) for p in train}
    new_params = merge_trainable(new_train, frozen, structure)

    metrics = {
        "loss": ce, "grad_norm": grad_norm,
        "update_norm": optax.global_norm(upd), "param_norm": optax.global_norm(new_train), "tokens": n,
        "finite": jnp.isfinite(ce) & jnp.isfinite(grad_norm),
    }
    penalty = method.penalty(params, state["opt_state"])
    if penalty is not None:
      metrics["penalty"] = penalty
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state["step"]), jnp.float32)
    new_state = {**state, "step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    return new_state, metrics

  return train_step


def make_eval_step(config: ModelConfig, model_params: Callable[[Params], Params] = lambda p: p, *,
                   loss_chunk: int = 0, target_capacity: int = 0, groups: int = 1):
  """Returns `eval_step(params, batch) -> (nll_sum, target_count)` on (A, B, T) batches."""

  def eval_step(params, batch):
    mp = model_params(params)
    def body(carry, micro):
      s, n = loss_sums(config, mp, micro, loss_chunk=loss_chunk, target_capacity=target_capacity, groups=groups)
      return (carry[0] + s, carry[1] + n), None
    (s, n), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)), batch)
    return s, n

  return eval_step
