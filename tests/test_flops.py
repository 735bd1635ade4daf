"""experiments/flops.py: the model-FLOP count of a train step, checked against what JAX and XLA compute.

On the tiny model, for several training modes:
  * exactly equal to the FLOPs of the step's dot_general ops in its jaxpr (so forward, activation-gradient
    and weight-gradient parts are counted where JAX computes them, and nowhere else);
  * within [1.00, 1.12] of XLA's `cost_analysis()['flops']` for the compiled step: XLA also counts the
    elementwise work the model leaves out (RMSNorm, RoPE, softmax, GELU, the loss's log-softmax, the Adam
    update, gradient clipping), which on the tiny model (D = 64) is 5-8% of the matmul FLOPs.
"""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.extend import core as jcore

from grow_jax import tree_paths
from grow_jax.growth import operators as growth
from grow_jax import methods
from grow_jax.model.config import get_preset
from grow_jax.model.transformer import init_params
from grow_jax.train import optim, step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH, SEQ = 4, 32


def _load(name):
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module                # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


flops = _load("flops")


def _jaxprs(value):
  if isinstance(value, jcore.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jcore.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _jaxprs(v)


def dot_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in a jaxpr, sub-jaxprs included (scan bodies x length)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in contracting]))
    times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in _jaxprs(value):
        total += times * dot_flops(sub)
  return total


def train_step(mode):
  config = get_preset("tiny")
  params = init_params(config, jax.random.key(0))
  if mode in ("g_freeze", "g_train"):
    params = growth.grow_mlp(config, params, factor=2, layers="all")[1]
    config = growth.grow_config(config, factor=2, layers="all")
  method = methods.setup_method(mode, config, params, {"lora_rank": 4}, rng=jax.random.key(0))
  tx = optim.make_optimizer({"learning_rate": 1e-3, "schedule": "constant"}, method)
  labels = step_lib.trainable_map(method.labels)
  fn = step_lib.make_train_step(config, method.method, tx)
  state = {"step": np.int32(0), "params": method.params, "opt_state": tx.init(method.params),
           "rng": np.zeros((2,), np.uint32)}
  batch = {"tokens": np.ones((1, BATCH, SEQ), np.int32), "loss_mask": np.ones((1, BATCH, SEQ), np.float32)}
  shapes = {p: tuple(x.shape) for p, x in tree_paths.flatten(method.params).items()}
  return config, fn, state, batch, labels, shapes


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sft", "g_freeze", "lora"])
def test_flop_model_equals_the_steps_matmuls_and_is_close_to_xla(mode):
  config, fn, state, batch, labels, shapes = train_step(mode)
  trainable, lora = flops.from_labels(config, labels, shapes)
  model = flops.train_step_flops(config, trainable, batch=BATCH, seq_len=SEQ, lora=lora)
  assert model.total == dot_flops(jax.make_jaxpr(fn)(state, batch).jaxpr)
  assert flops.mode_flops(config, mode, batch=BATCH, seq_len=SEQ, lora_rank=4).total == model.total
  cost = jax.jit(fn).lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert 1.0 <= cost["flops"] / model.total <= 1.12, (cost["flops"], model.total)


def test_parts_follow_the_trainable_leaves():
  config = growth.grow_config(get_preset("tiny"), factor=2, layers="all")
  kw = dict(batch=BATCH, seq_len=SEQ)
  forward = flops.train_step_flops(config, (), backward=False, **kw)
  sft = flops.mode_flops(config, "sft", **kw)
  frozen = flops.mode_flops(config, "g_freeze", **kw)
  assert sft.forward == frozen.forward == forward.total
  assert sft.weight_grad == pytest.approx(sft.forward - 4 * BATCH * SEQ * SEQ * config.num_layers
                                          * config.num_heads * config.head_dim)  # attention scores: no weights
  assert frozen.weight_grad < sft.weight_grad and frozen.act_grad < sft.act_grad
  # Only the last layer's grown branch trains: no activation gradient before it, one weight gradient.
  last = [f"layer_6/mlp/grown_1/{leaf}" for leaf in ("gating_einsum", "linear")]
  late = flops.train_step_flops(config, last, **kw)
  width = config.layer_mlp_branches(6)[1]
  n = BATCH * SEQ
  assert late.weight_grad == 2 * n * config.embed_dim * 3 * width
  assert late.act_grad == 2 * n * width * config.embed_dim + 2 * BATCH * (SEQ - 1) * config.embed_dim * config.vocab_size


def test_unembedding_at_targets_only():
  config = get_preset("tiny")
  kw = dict(batch=BATCH, seq_len=SEQ)
  dense = flops.mode_flops(config, "sft", **kw)
  targets = flops.mode_flops(config, "sft", unembed_positions=10, **kw)
  assert dense.unembed == 3 * 2 * BATCH * (SEQ - 1) * config.embed_dim * config.vocab_size
  assert dense.total - targets.total == pytest.approx(dense.unembed * (1 - 10 / (BATCH * (SEQ - 1))))


def test_matmul_peak_is_measured():
  assert flops.matmul_peak("float32", n=128, repeats=2) > 1e6
