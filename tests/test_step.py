"""The loss and the train step: target-only loss, chunked cross-entropy, gradient accumulation, frozen leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grow_jax import tree_paths
from grow_jax.growth import operators as growth
from grow_jax import methods
from grow_jax import model
from grow_jax.train import optim
from grow_jax.train import step
from grow_jax.data import synthetic
from grow_jax.model.config import get_preset


def _tiny(num_layers=1):
  return get_preset("tiny", num_layers=num_layers)


def _batch(cfg, batch_size=8, seq_len=24, packing=False, seed=0):
  src = synthetic.SyntheticSource(split="train", global_batch_size=batch_size, seq_len=seq_len,
                                  vocab_size=cfg.vocab_size, packing=packing, seed=seed)
  return next(src)


@pytest.fixture(scope="module")
def tiny():
  cfg = _tiny()
  params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(0))
  # Scale the embedding down so the random model's loss is in a sane range (and gradients are informative).
  params["embedder"]["input_embedding"] = params["embedder"]["input_embedding"] * 0.05
  return cfg, params


def test_loss_counts_target_tokens_only(tiny):
  cfg, params = tiny
  b = _batch(cfg, batch_size=2)
  mask = np.zeros_like(b["loss_mask"])
  t = int(np.flatnonzero(b["loss_mask"][0])[1])        # one target token of row 0
  mask[0, t] = 1.0
  b1 = {**b, "loss_mask": mask}

  @jax.jit
  def both(params, b1):
    s, n = step.loss_sums(cfg, params, b1)
    logits = model.forward(cfg, params, b1["tokens"], positions=b1["positions"], input_mask=b1["input_mask"],
                           segment_ids=b1["segment_ids"])
    return s, n, -jax.nn.log_softmax(logits[0, t - 1])[b1["tokens"][0, t]]

  s, n, expected = both(params, b1)
  assert float(n) == 1.0
  np.testing.assert_allclose(float(s), float(expected), rtol=1e-5)


def test_packed_segment_boundary_is_not_a_target():
  b = {"tokens": np.array([[2, 5, 6, 2, 7, 8]]), "loss_mask": np.array([[0, 0, 1, 1, 0, 1]], np.float32),
       "segment_ids": np.array([[1, 1, 1, 2, 2, 2]]), "input_mask": np.ones((1, 6), bool)}
  w = np.asarray(step.target_weights(b))
  # predictions of tokens 1..5: the BOS of segment 2 (index 3) is never predicted from segment 1.
  np.testing.assert_array_equal(w, [[0, 1, 0, 0, 1]])


@pytest.mark.slow
def test_chunked_cross_entropy_matches_full(tiny):
  cfg, params = tiny
  b = _batch(cfg, batch_size=2, seq_len=24, packing=True)

  def loss(p, chunk):
    s, n = step.loss_sums(cfg, p, b, loss_chunk=chunk)
    return s / n

  grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  full, g_full = grad_fn(params, 0)
  chunked, g_chunked = grad_fn(params, 5)  # 23 predictions -> 5 chunks of 5, the last padded
  np.testing.assert_allclose(float(chunked), float(full), rtol=1e-5)
  for (path, a), b_ in zip(tree_paths.flatten(g_full).items(), tree_paths.flatten(g_chunked).values()):
    np.testing.assert_allclose(np.asarray(b_), np.asarray(a), rtol=2e-4, atol=1e-6, err_msg=path)


def _setup(cfg, params, mode, accum_total_steps=10):
  bound = methods.setup_method(mode, cfg, params, {})
  opt = dict(learning_rate=1e-2, warmup_steps=0, schedule="constant", grad_clip_norm=1.0, weight_decay=0.1)
  tx = optim.make_optimizer(opt, bound)
  state = {"step": jnp.zeros((), jnp.int32), "params": bound.params, "opt_state": tx.init(bound.params),
           "rng": jax.random.key_data(jax.random.key(0))}
  return bound.method, tx, step.trainable_map(bound.labels), state


@pytest.mark.slow
def test_grad_accumulation_equals_big_batch(tiny):
  cfg, params = tiny
  method, tx, _, state = _setup(cfg, params, "sft")
  fn = jax.jit(step.make_train_step(cfg, method, tx))
  local = _batch(cfg, batch_size=8)
  from grow_jax.train import sharding
  big = sharding.to_microbatches(local, 1)
  acc = sharding.to_microbatches(local, 4)
  assert acc["tokens"].shape == (4, 2, 24)
  s1, m1 = fn(state, big)
  s4, m4 = fn(state, acc)
  np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  assert float(m1["tokens"]) == float(m4["tokens"]) == float(local["loss_mask"][:, 1:].sum())
  # Adam's first step is ~lr * sign(g): entries with |g| ~ eps amplify rounding, so compare at 1% of lr.
  for path, a in tree_paths.flatten(s1["params"]).items():
    np.testing.assert_allclose(np.asarray(tree_paths.get(s4["params"], path)), np.asarray(a), rtol=0,
                               atol=1e-4, err_msg=path)


def test_g_freeze_updates_only_grown_copies(tiny):
  cfg, params = tiny
  gcfg, gparams = growth.grow_mlp(cfg, params, factor=2)
  method, tx, trainable, state = _setup(gcfg, gparams, "g_freeze")
  before = jax.tree.map(np.asarray, state["params"])
  fn = jax.jit(step.make_train_step(gcfg, method, tx))
  batch = sharding_micro(_batch(gcfg))
  for _ in range(2):
    state, metrics = fn(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  changed = []
  for path, a in tree_paths.flatten(before).items():
    b = np.asarray(tree_paths.get(state["params"], path))
    if trainable[path]:
      changed.append(path)
      assert not np.array_equal(a, b), f"trainable leaf {path} did not change"
    else:
      np.testing.assert_array_equal(a, b, err_msg=f"frozen leaf {path} changed")
  assert changed and all("/grown_1/" in p for p in changed)
  # Adam moments exist for the trainable leaves only.
  n_trainable = sum(np.asarray(x).size for p, x in tree_paths.flatten(before).items() if trainable[p])
  assert optim.state_bytes(state["opt_state"])["adam_moments"] == 2 * 4 * n_trainable


def sharding_micro(local, accum=1):
  from grow_jax.train import sharding
  return sharding.to_microbatches(local, accum)


# ---- the output head only where the loss looks -----------------------------------------------------------
def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(np.asarray(b))), 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [0, 4])
def test_target_only_loss_and_grads_equal_dense(tiny, chunk):
  """Gathering each row's target positions (static capacity) gives the dense loss and gradients: f32, <= 1e-6
  relative; with loss chunking too."""
  cfg, params = tiny
  b = _batch(cfg, batch_size=4, seq_len=32, packing=True)
  capacity = step.target_capacity_for([b], groups=2)
  assert 0 < capacity < 2 * 31, capacity               # a packed batch: fewer targets than positions

  def loss(p, cap):
    s, n = step.loss_sums(cfg, p, b, loss_chunk=chunk, target_capacity=cap, groups=2)
    return s / n

  grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  dense, g_dense = grad_fn(params, 0)
  sparse, g_sparse = grad_fn(params, capacity)
  assert _rel(sparse, dense) <= 1e-6
  for path, a in tree_paths.flatten(g_dense).items():
    assert _rel(tree_paths.get(g_sparse, path), a) <= 1e-6, path


@pytest.mark.slow
def test_a_group_over_capacity_takes_the_dense_path(tiny):
  cfg, params = tiny
  b = _batch(cfg, batch_size=2, seq_len=32, packing=True)
  too_small = 2                                        # every row has more targets than this
  fn = jax.jit(lambda p, cap: step.loss_sums(cfg, p, b, target_capacity=cap), static_argnums=1)
  (s_dense, n_dense), (s_small, n_small) = fn(params, 0), fn(params, too_small)
  assert float(n_small) == float(n_dense) > 2 * too_small
  assert _rel(s_small, s_dense) <= 1e-6


def test_target_capacity_is_measured_from_batches():
  mask = np.zeros((4, 65), np.float32)
  mask[0, 10:30] = 1                                   # group 0 (rows 0, 1): 20 + 10 targets
  mask[1, 40:50] = 1
  mask[2, 1:6] = 1                                     # group 1: 5
  batch = {"loss_mask": mask}
  assert step.target_capacity_for([batch], groups=2) == 48        # 30 * 1.1 = 33 -> a multiple of 16
  assert step.target_capacity_for([batch], groups=1) == 48        # 35 * 1.1 = 38.5 -> 48
  assert step.target_capacity_for([{"loss_mask": mask[None]}], groups=2) == 48   # (A, B, T) microbatches
  mask[:, 1:] = 1
  assert step.target_capacity_for([batch], groups=2) == 0         # nothing to save: dense
