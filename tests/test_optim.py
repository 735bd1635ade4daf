"""The optimizer trains exactly the leaves a mode labels 'trainable', keeps Adam state only for them, and
the symmetry trap behaves as the paper says (exact copies stay identical under SFT; asymmetric freezing or
noise breaks the tie)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grow_jax import tree_paths
from grow_jax.growth import operators as growth
from grow_jax import methods
from grow_jax.train import optim
from grow_jax.methods import regularizers
from grow_jax.model.config import get_preset
from grow_jax.errors import ConfigError
from random_params import random_params

# Two layers keep the compiles short; layer 1 is grown, layer 0 is not (targeted growth).
CFG = get_preset("tiny", num_layers=2, vocab_size=128)
OPT = dict(learning_rate=1e-2, schedule="constant", weight_decay=0.01, grad_clip_norm=1.0)
STEPS = 3




BASE = random_params(CFG)
GROWN_CFG, GROWN = growth.grow_mlp(CFG, BASE, layers=[1])
BATCHES = [np.random.default_rng(s).integers(3, CFG.vocab_size, (2, 16)).astype(np.int32) for s in range(STEPS)]


@jax.jit
def _grad(params, tokens):
  return jax.grad(lambda p: regularizers.lm_loss(GROWN_CFG, p, tokens))(params)


def train(method, grad_fn=None):
  """STEPS optimizer steps with jit'd gradients of the LM loss; returns (params, opt_state)."""
  tx = optim.make_optimizer(OPT, method)
  if grad_fn is None:
    grad_fn = jax.jit(jax.grad(lambda p, t: regularizers.lm_loss(GROWN_CFG, method.model_params(p), t)))
  params = method.params
  state = tx.init(params)
  update = jax.jit(tx.update)
  for tokens in BATCHES:
    updates, state = update(grad_fn(params, tokens), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@functools.lru_cache(maxsize=None)
def trained(mode: str, l2sp_coef: float = 0.1):
  """(method, params, opt_state) after STEPS steps of `mode` on GROWN (cached across tests)."""
  method = methods.setup_method(mode, GROWN_CFG, GROWN, {"l2sp_coef": l2sp_coef})
  return (method,) + train(method, _grad)


def changed_paths(before, after):
  a, b = tree_paths.flatten(before), tree_paths.flatten(after)
  assert a.keys() == b.keys()
  return {p for p in a if not np.array_equal(np.asarray(a[p]), np.asarray(b[p]))}


ALL = set(tree_paths.flatten(GROWN))
GROWN_1 = {"layer_1/mlp/grown_1/gating_einsum", "layer_1/mlp/grown_1/linear"}
EXPECTED = {
    "sft": ALL,
    "g_freeze": GROWN_1,
    "g_train": GROWN_1 | {"layer_1/mlp/gating_einsum"},
    "mlp_only": {p for p in ALL if "/mlp/" in p},
    "l2sp": ALL,
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_exactly_the_trainable_leaves_change(mode):
  _, params, state = trained(mode)
  assert changed_paths(GROWN, params) == EXPECTED[mode]
  trainable_bytes = sum(x.nbytes for p, x in tree_paths.flatten(GROWN).items() if p in EXPECTED[mode])
  moments = tree_paths.find_nodes(state, optax.ScaleByAdamState)
  assert len(moments) == 1
  assert optim.state_bytes(state)["adam_moments"] == 2 * trainable_bytes
  # Moments exist only for trainable leaves.
  assert set(tree_paths.flatten(moments[0].mu)) == EXPECTED[mode]


@pytest.mark.slow
def test_lora_trains_only_adapters():
  method = methods.setup_method("lora", GROWN_CFG, GROWN, {"lora_rank": 2})
  params, state = train(method)
  lora_paths = {p for p in tree_paths.flatten(method.params) if p.startswith("lora/")}
  assert changed_paths(method.params, params) == lora_paths
  assert len(lora_paths) == 2 * (3 * 2 + 2 * 3)  # a, b for q, kv, attn_vec x 2 layers + 2 + 4 MLP matrices
  adapter_bytes = sum(x.nbytes for p, x in tree_paths.flatten(method.params).items() if p in lora_paths)
  assert optim.state_bytes(state)["adam_moments"] == 2 * adapter_bytes


@pytest.mark.slow
def test_ewc_trains_everything_and_keeps_anchor_and_fisher_in_state():
  method = methods.setup_method("ewc", GROWN_CFG, GROWN, {"ewc_coef": 0.1}, reference_batches=BATCHES[:1])
  params, state = train(method, _grad)
  assert changed_paths(GROWN, params) == ALL
  sizes = optim.state_bytes(state)
  param_bytes = sum(x.nbytes for x in tree_paths.flatten(GROWN).values())
  assert sizes["adam_moments"] == 2 * param_bytes
  [ewc_state] = tree_paths.find_nodes(state, regularizers.EWCState)     # anchor and Fisher of every leaf
  assert sum(x.nbytes for x in jax.tree.leaves(ewc_state)) == 2 * param_bytes


@pytest.mark.slow
def test_regularizer_changes_the_trajectory():
  sft, l2sp = trained("sft")[1], trained("l2sp", 10.0)[1]
  dist = lambda p: optax.global_norm(jax.tree.map(jnp.subtract, p, GROWN))
  assert float(dist(l2sp)) < float(dist(sft))


# ---- the symmetry trap ---------------------------------------------------------------------------------
def _clone_div(params, config=GROWN_CFG):
  return {k.rsplit("/", 1)[1]: float(v) for k, v in growth.clone_divergence(config, params).items()}


@pytest.mark.slow
def test_symmetry_trap_sft_keeps_exact_copies_identical():
  params = trained("sft")[1]
  mlp = params["layer_1"]["mlp"]
  assert not np.array_equal(mlp["linear"], GROWN["layer_1"]["mlp"]["linear"])  # it did train ...
  assert np.array_equal(mlp["gating_einsum"], mlp["grown_1"]["gating_einsum"])  # ... and the copies are twins
  assert np.array_equal(mlp["linear"], mlp["grown_1"]["linear"])
  assert _clone_div(params) == {"gate": 0.0, "up": 0.0, "down": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["g_freeze", "g_train"])
def test_asymmetric_freezing_breaks_the_symmetry(mode):
  div = _clone_div(trained(mode)[1])
  assert all(v > 0 for v in div.values()), div


@pytest.mark.slow
def test_noise_breaks_the_symmetry_under_sft():
  config, noisy = growth.grow_mlp(CFG, BASE, layers=[1], noise_scale=0.01)
  assert config == GROWN_CFG
  start = _clone_div(noisy)
  assert start["gate"] == 0.0 and start["up"] == 0.0 and start["down"] > 0
  params, _ = train(methods.setup_method("sft", GROWN_CFG, noisy, {}), _grad)
  div = _clone_div(params)
  assert div["gate"] > 0 and div["up"] > 0


# ---- schedule and options ------------------------------------------------------------------------------
def test_schedule_warmup_then_cosine_to_min_ratio():
  lr = optim.schedule_fn(dict(learning_rate=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1))
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.55, abs=1e-6) and float(lr(110)) == pytest.approx(0.1)
  lin = optim.schedule_fn(dict(learning_rate=1.0, schedule="linear", warmup_steps=0, total_steps=100,
                               min_lr_ratio=0.0))
  assert float(lin(50)) == pytest.approx(0.5)
  const = optim.schedule_fn(dict(learning_rate=0.3, schedule="constant", warmup_steps=4))
  assert float(const(2)) == pytest.approx(0.15) and float(const(1000)) == pytest.approx(0.3)


def test_weight_decay_mask_skips_norms_and_embeddings():
  labels = methods.trainable_labels(GROWN_CFG, GROWN, "sft")
  # Zero gradients isolate the decay term: Adam's update is 0, decay adds weight_decay * param.
  tx = optim.make_optimizer(dict(learning_rate=1.0, schedule="constant", weight_decay=0.5, grad_clip_norm=None),
                            labels)
  zeros = jax.tree.map(jnp.zeros_like, GROWN)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(GROWN), GROWN)
  decayed = {p for p, u in tree_paths.flatten(updates).items() if np.any(np.asarray(u) != 0)}
  assert decayed == {p for p in ALL if not p.endswith("scale") and not p.startswith("embedder")}


def test_bad_optimizer_options():
  with pytest.raises(ConfigError, match="total_steps"):
    optim.schedule_fn(dict(learning_rate=1.0, schedule="cosine"))
  with pytest.raises(ConfigError, match="opt.schedule='step'"):
    optim.schedule_fn(dict(learning_rate=1.0, schedule="step", total_steps=10))
  with pytest.raises(ConfigError, match="min_lr_ratio"):
    optim.schedule_fn(dict(learning_rate=1.0, total_steps=10, min_lr_ratio=2))
  with pytest.raises(ConfigError, match=r"labels \['trainable', 'weird'\]: expected only"):
    optim.make_optimizer(OPT, {"a": "trainable", "b": "weird"})
