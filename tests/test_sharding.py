"""Mesh, sharding rules and sharded training on 8 fake CPU devices (tests/conftest.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from config_files import load_config
from grow_jax import tree_paths
from grow_jax.growth import operators as growth
from grow_jax.methods import lora
from grow_jax import model
from grow_jax.train import sharding
from grow_jax.data import pipeline
from grow_jax.train import setup as setup_lib
from grow_jax.model.config import get_preset
from grow_jax.errors import ShardingError


def _mesh(data, fsdp, tensor):
  n = data * fsdp * tensor
  return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor), jax.devices()[:n])


def test_mesh_shape_fills_and_rejects():
  assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ShardingError, match="needs 16 devices; there are 8"):
    sharding.mesh_shape(dict(data=4, fsdp=2, tensor=2), 8)
  with pytest.raises(ShardingError, match="at most one -1"):
    sharding.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  mesh = _mesh(2, 2, 2)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_rules_cover_grown_and_lora_params():
  cfg = get_preset("tiny", num_layers=2)
  abstract = model.abstract_params(cfg)
  gcfg = growth.grow_config(cfg, factor=2)
  grown = jax.eval_shape(lambda p: growth.grow_mlp(cfg, p, factor=2)[1], abstract)
  with_lora = jax.eval_shape(lambda p: lora.init(p, rank=4, rng=jax.random.key(0)), grown)
  mesh = _mesh(1, 2, 4)
  shardings = tree_paths.flatten(sharding.param_shardings(with_lora, mesh))
  assert shardings["layer_0/attn/q_einsum/w"].spec == P("tensor", "fsdp", None)
  assert shardings["layer_1/mlp/grown_1/gating_einsum"].spec == P(None, "tensor", "fsdp")
  assert shardings["layer_1/mlp/grown_1/linear"].spec == P("tensor", "fsdp")
  assert shardings["layer_0/pre_ffw_norm/scale"].spec == P()
  assert shardings["lora/layer_0/mlp/linear/a"].spec == P()
  assert gcfg.is_grown


def test_unmatched_leaf_is_named():
  params = {"layer_0": {"mystery": {"w": jax.ShapeDtypeStruct((4, 4), np.float32)}}}
  with pytest.raises(ShardingError, match="layer_0/mystery/w"):
    sharding.param_shardings(params, _mesh(8, 1, 1))


def test_indivisible_dim_names_leaf_dim_and_axis():
  cfg = get_preset("tiny", num_layers=1)          # 4 query heads
  with pytest.raises(ShardingError) as e:
    sharding.param_shardings(model.abstract_params(cfg), _mesh(1, 1, 8))
  msg = str(e.value)
  assert "einsum/w" in msg and "dim 0" in msg and "size 4" in msg and "'tensor' of size 8" in msg


def test_batch_size_not_divisible_names_batch_and_mesh():
  mesh = _mesh(4, 2, 1)
  with pytest.raises(ShardingError) as e:
    sharding.check_batch_size(12, 1, mesh, 1)
  assert "batch_size=12" in str(e.value) and "data=4,fsdp=2,tensor=1" in str(e.value)
  sharding.check_batch_size(16, 2, mesh, 1)


def _tiny_config(mode="g_train", accum=2):
  return load_config("tiny", f"mode={mode},layers_n=1,seq_len=16,accum={accum},batch=16")


def _run(config, mesh, steps=2):
  mc, base = setup_lib.init_params(config, mesh)
  setup, state = setup_lib.build(config, mc, base, mesh)
  fn = setup_lib.jit_train_step(config, setup, mesh, target_capacity=0)
  it = pipeline.batch_iterator(config, "train", batch_size=config.batch_size, model_config=mc)
  losses = []
  for _ in range(steps):
    state, m = fn(state, sharding.global_batch(next(it), mesh, config.grad_accum_steps))
    losses.append(float(m["loss"]))
  return setup, state, losses


@pytest.mark.slow
def test_meshes_give_the_same_training():
  config = _tiny_config()
  ref_setup, ref_state, ref_losses = _run(config, _mesh(1, 1, 1))
  ref = jax.tree.map(np.asarray, ref_state["params"])
  for shape in ((8, 1, 1), (2, 2, 2), (1, 2, 4)):
    mesh = _mesh(*shape)
    setup, state, losses = _run(config, mesh)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(shape))
    for path, a in tree_paths.flatten(ref).items():
      np.testing.assert_allclose(np.asarray(tree_paths.get(state["params"], path)), a, rtol=0, atol=1e-5,
                                 err_msg=f"{shape} {path}")
    # Params and their Adam moments are sharded alike; step counters are replicated on the mesh.
    q = tree_paths.get(state["params"], "layer_0/mlp/grown_1/gating_einsum")
    assert q.sharding.spec == P(None, "tensor", "fsdp")
    flat_opt = tree_paths.flatten_items(state["opt_state"])
    mus = [x for p, x in flat_opt if p.endswith("mu/layer_0/mlp/grown_1/gating_einsum")]
    assert mus and all(x.sharding.spec == q.sharding.spec for x in mus)
    counts = [x for p, x in flat_opt if p.endswith("count")]
    assert counts and all(x.sharding.spec == P() and x.sharding.mesh.shape == mesh.shape for x in counts)
    assert state["step"].sharding.spec == P()
