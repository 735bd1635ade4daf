"""L2-SP and EWC add exactly the gradient of their documented penalty; the Fisher is the mean squared
per-sequence gradient of the LM loss on reference text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grow_jax import methods
from grow_jax import tree_paths
from grow_jax.train import optim
from grow_jax.methods import regularizers
from grow_jax.model.config import get_preset
from grow_jax.errors import ConfigError
from random_params import random_params

CFG = get_preset("tiny", num_layers=1, vocab_size=64)




ANCHOR = random_params(CFG, 0)
PARAMS = jax.tree.map(lambda a, b: a + 0.1 * b, ANCHOR, random_params(CFG, 1))
GRADS = random_params(CFG, 2)
FISHER = jax.tree.map(np.abs, random_params(CFG, 3))


def test_l2sp_adds_the_gradient_of_its_penalty():
  tx = regularizers.l2sp(0.3, ANCHOR)
  updates, _ = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
  penalty_grad = jax.jit(jax.grad(lambda p: regularizers.penalty("l2sp", 0.3, p, ANCHOR)))(PARAMS)
  for u, g, pg in zip(jax.tree.leaves(updates), jax.tree.leaves(GRADS), jax.tree.leaves(penalty_grad)):
    np.testing.assert_allclose(u - g, pg, rtol=1e-5, atol=3e-7)  # ulp of |g| <= ~2
  # anchor=None anchors at the params given to init: no pull at the start.
  tx = regularizers.l2sp(0.3)
  updates, _ = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
  assert all(np.array_equal(u, g) for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(GRADS)))


def test_ewc_adds_the_gradient_of_its_penalty():
  tx = regularizers.ewc(0.7, FISHER, ANCHOR)
  updates, _ = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
  penalty_grad = jax.jit(jax.grad(lambda p: regularizers.penalty("ewc", 0.7, p, ANCHOR, FISHER)))(PARAMS)
  for u, g, pg, f, p, a in zip(*(jax.tree.leaves(t) for t in (updates, GRADS, penalty_grad, FISHER, PARAMS,
                                                               ANCHOR))):
    np.testing.assert_allclose(u - g, pg, rtol=1e-5, atol=3e-7)  # ulp of |g| <= ~2
    np.testing.assert_allclose(u - g, 2 * 0.7 * f * (p - a), rtol=1e-5, atol=3e-7)  # ulp of |g| <= ~2


def test_state_holds_anchor_only_for_trainable_leaves():
  labels = methods.trainable_labels(CFG, PARAMS, [(r"layer_0/mlp/.*", "trainable"), (".*", "frozen")])
  tx = optim.make_optimizer(dict(learning_rate=1.0, schedule="constant"), labels,
                            transforms=[regularizers.l2sp(0.1, ANCHOR)])
  state = tx.init(PARAMS)
  mlp_bytes = sum(x.nbytes for p, x in tree_paths.flatten(PARAMS).items() if "/mlp/" in p)
  [anchor] = tree_paths.find_nodes(state, regularizers.AnchorState)
  assert sum(x.nbytes for x in jax.tree.leaves(anchor)) == mlp_bytes
  updates, _ = jax.jit(tx.update)(GRADS, state, PARAMS)
  assert {p for p, u in tree_paths.flatten(updates).items() if np.any(np.asarray(u))} == {
      "layer_0/mlp/gating_einsum", "layer_0/mlp/linear"}


@pytest.mark.slow
def test_estimate_fisher_is_mean_squared_per_sequence_gradient():
  rng = np.random.default_rng(0)
  batches = [rng.integers(3, CFG.vocab_size, (2, 8)).astype(np.int32) for _ in range(2)]
  fisher = regularizers.estimate_fisher(CFG, PARAMS, batches)
  grad = jax.jit(jax.grad(lambda p, t: regularizers.lm_loss(CFG, p, t)))
  manual = jax.tree.map(lambda *g: sum(np.square(np.asarray(x, np.float64)) for x in g) / 4,
                        *[grad(PARAMS, b[i:i + 1]) for b in batches for i in range(2)])
  for f, m in zip(jax.tree.leaves(fisher), jax.tree.leaves(manual)):
    np.testing.assert_allclose(f, m, rtol=1e-4, atol=1e-12)
  assert float(jnp.max(fisher["layer_0"]["mlp"]["linear"])) > 0
  normed = regularizers.estimate_fisher(CFG, PARAMS, batches, normalize="mean", max_batches=1)
  assert float(sum(jnp.sum(x) for x in jax.tree.leaves(normed)) /
               sum(x.size for x in jax.tree.leaves(normed))) == pytest.approx(1.0, rel=1e-5)


def test_bad_inputs():
  with pytest.raises(ConfigError, match="no reference batches"):
    regularizers.estimate_fisher(CFG, PARAMS, [])
  with pytest.raises(ConfigError, match="ewc_normalize='sum'"):
    regularizers.estimate_fisher(CFG, PARAMS, [], normalize="sum")
  with pytest.raises(ConfigError, match="l2sp_coef=-1"):
    regularizers.l2sp(-1)
  with pytest.raises(ConfigError, match="needs a diagonal Fisher"):
    regularizers.ewc(1.0, None).init(PARAMS)          # a state is made from a Fisher (updates need none)
  bad_anchor = {**ANCHOR, "final_norm": {"scale": np.zeros(3, np.float32)}}
  with pytest.raises(ConfigError, match="anchor leaf 'final_norm/scale' has shape"):
    regularizers.l2sp(1.0, bad_anchor).init(PARAMS)
