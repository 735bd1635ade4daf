"""Attention-head growth with the copies as their own head branches: bit-exact for factor 2, to rounding for
factor 3, trainable alone (g_freeze_attn), decodable with a KV cache, sharded, counted, and exported to HF
as wider heads with the same logits. Each preservation test prints its max |Δlogit| (run with -s)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grow_jax import methods, model, tree_paths
from grow_jax.errors import ConfigError
from grow_jax.growth import attention, operators
from grow_jax.methods import accounting, partition
from grow_jax.model import transformer
from grow_jax.model.config import count_params, get_preset
from grow_jax.train import sharding
from random_params import random_params

TINY = get_preset("tiny")                                    # 7 layers, N=4 query heads on K=2 kv heads
SMALL = get_preset("tiny", num_layers=2, sliding_window_pattern=2)
FORWARD = jax.jit(model.forward, static_argnums=0)


def max_delta(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


@pytest.fixture(scope="module")
def tiny():
  params = random_params(TINY)
  toks = np.random.default_rng(0).integers(3, TINY.vocab_size, size=(2, 24)).astype(np.int32)
  return params, toks, FORWARD(TINY, params, toks)


@pytest.fixture(scope="module")
def small():
  params = random_params(SMALL)
  toks = np.random.default_rng(1).integers(3, SMALL.vocab_size, size=(2, 24)).astype(np.int32)
  return params, toks, FORWARD(SMALL, params, toks)


@pytest.mark.parametrize("grow_kv", [False, True])
def test_factor2_head_growth_is_bit_exact_with_new_heads_as_own_leaves(tiny, grow_kv):
  params, toks, base = tiny
  config, grown = attention.grow_attention(TINY, params, factor=2, grow_kv=grow_kv, layers=[1, 5])
  kv = 2 if grow_kv else 0
  assert config.attn_branches == tuple(((4, 2), (4, kv)) if i in (1, 5) else ((4, 2),) for i in range(7))
  flat, flat0 = tree_paths.flatten(grown), tree_paths.flatten(params)
  new = {p for p in flat if "/attn/grown_" in p}
  assert new == {f"layer_{i}/attn/grown_1/{n}/w" for i in (1, 5)
                 for n in ("q_einsum", "attn_vec_einsum") + (("kv_einsum",) if grow_kv else ())}
  assert np.array_equal(flat["layer_1/attn/attn_vec_einsum/w"], flat0["layer_1/attn/attn_vec_einsum/w"] / 2)
  assert np.array_equal(flat["layer_1/attn/grown_1/attn_vec_einsum/w"], flat0["layer_1/attn/attn_vec_einsum/w"] / 2)
  assert np.array_equal(flat["layer_1/attn/grown_1/q_einsum/w"], flat0["layer_1/attn/q_einsum/w"])
  assert np.array_equal(flat["layer_0/attn/attn_vec_einsum/w"], flat0["layer_0/attn/attn_vec_einsum/w"])
  assert tree_paths.flatten(model.abstract_params(config)).keys() == flat.keys()
  declared = tree_paths.flatten(transformer.module_param_shapes(config))      # what the Flax module declares
  assert {p: x.shape for p, x in declared.items()} == {p: x.shape for p, x in flat.items()}
  delta = max_delta(FORWARD(config, grown, toks), base)
  print(f"\n[attention growth] factor 2 grow_kv={grow_kv}: max|Δlogit| = {delta!r}")
  assert delta == 0.0
  # The test can fail: the new heads are used (a changed copy changes the logits; a mere scale would not do:
  # the q and post-attention norms undo it).
  noise = np.random.default_rng(3).normal(0.0, 0.05, (4, 16, 64)).astype(np.float32)
  broken = tree_paths.map_with_path(lambda p, x: x + noise if p == "layer_1/attn/grown_1/attn_vec_einsum/w" else x,
                                    grown)
  assert max_delta(FORWARD(config, broken, toks), base) > 1e-3


@pytest.mark.slow
def test_factor3_and_growing_twice_preserve_to_rounding(small):
  params, toks, base = small
  c3, g3 = attention.grow_attention(SMALL, params, factor=3)
  assert c3.attn_branches[0] == ((4, 2), (4, 0), (4, 0))
  d3 = max_delta(FORWARD(c3, g3, toks), base)
  c2, g2 = attention.grow_attention(SMALL, params, layers=[0], grow_kv=True)
  c4, g4 = attention.grow_attention(c2, g2, layers=[0])          # the own-kv copy is copied with its kv
  assert c4.attn_branches[0] == ((4, 2), (4, 2), (4, 0), (4, 2))
  assert np.array_equal(g4["layer_0"]["attn"]["grown_3"]["kv_einsum"]["w"], params["layer_0"]["attn"]["kv_einsum"]["w"])
  d4 = max_delta(FORWARD(c4, g4, toks), base)
  print(f"\n[attention growth] factor 3: {d3:.3g}; x2 (own kv) then x2: {d4:.3g}")
  scale = float(jnp.max(jnp.abs(base)))
  assert d3 <= 1e-4 * scale and d4 <= 1e-5 * scale


@pytest.mark.slow
def test_kv_cache_decoding_matches_the_full_forward(small):
  params, toks, _ = small
  config, grown = attention.grow_attention(SMALL, params, layers=[1], grow_kv=True)
  cache = transformer.init_cache(config, 2, 24)
  assert set(cache["layer_1"]) == {"k", "v", "k_1", "v_1", "index"} and set(cache["layer_0"]) == {"k", "v", "index"}
  mask = np.ones((2, 24), bool)
  positions = np.broadcast_to(np.arange(24), (2, 24))
  first, cache = transformer.forward_with_cache(config, grown, toks[:, :16], positions[:, :16], mask, cache)
  second, _ = transformer.forward_with_cache(config, grown, toks[:, 16:], positions[:, 16:], mask, cache)
  full = FORWARD(config, grown, toks)
  assert max_delta(jnp.concatenate([first, second], axis=1), full) <= 1e-4 * float(jnp.max(jnp.abs(full)))


@pytest.mark.slow
def test_merged_heads_keep_the_function_and_must_sit_in_their_kv_group(small):
  params, toks, base = small
  for grow_kv in (False, True):
    config, grown = attention.grow_attention(SMALL, params, layers=[1], grow_kv=grow_kv)
    merged_config, merged = attention.merge_attention(config, grown)
    assert merged_config.attn_branches is None and merged_config.num_heads == 8
    assert merged_config.num_kv_heads == (4 if grow_kv else 2)
    assert merged["layer_0"]["attn"]["q_einsum"]["w"].shape == (8, 64, 16)      # zero-padded layer
    delta = max_delta(FORWARD(merged_config, merged, toks), base)
    print(f"\n[attention growth] merged (grow_kv={grow_kv}, layer 0 zero-padded): max|Δlogit| = {delta:.3g}")
    assert delta <= 1e-4 * float(jnp.max(jnp.abs(base)))
  # Copies that read the original kv heads must be interleaved into their kv group: block order breaks it.
  config, grown = attention.grow_attention(SMALL, params, layers=[1])
  merged_config, merged = attention.merge_attention(config, grown)
  attn = grown["layer_1"]["attn"]
  wrong = {**merged["layer_1"]["attn"], "q_einsum": {"w": jnp.concatenate([attn["q_einsum"]["w"], attn["grown_1"]["q_einsum"]["w"]])}}
  broken = {**merged, "layer_1": {**merged["layer_1"], "attn": wrong}}
  assert max_delta(FORWARD(merged_config, broken, toks), base) > 1e-2


def test_mixed_layouts_and_mismatches_are_named(small):
  params = small[0]
  c1, g1 = attention.grow_attention(SMALL, params, layers=[0])
  c2, g2 = attention.grow_attention(c1, g1, layers=[1], grow_kv=True)
  with pytest.raises(ConfigError, match="zero padding cannot give both one layout"):
    attention.merge_attention(c2, g2)
  with pytest.raises(ConfigError, match=r"layer_0/attn has head branches \[\]"):
    attention.grow_attention(c1, params, layers=[0])
  with pytest.raises(ConfigError, match="attention factor=1"):
    attention.grow_attention(SMALL, params, factor=1)
  with pytest.raises(ConfigError, match=r"attn_branches\[0\]=.*branch 0 must be"):
    SMALL.replace(attn_branches=(((2, 2),), ((4, 2),)))


def test_g_freeze_attn_trains_only_the_new_heads_and_they_are_sharded_and_counted():
  config = attention.attention_config(TINY, layers=[2, 5], grow_kv=True)
  abstract = model.abstract_params(config)
  labels = methods.trainable_labels(config, abstract, "g_freeze_attn")
  assert set(partition.trainable_paths(labels)) == {f"layer_{i}/attn/grown_1/{n}/w" for i in (2, 5)
                                                     for n in ("q_einsum", "kv_einsum", "attn_vec_einsum")}
  with pytest.raises(partition.PartitionError, match="'g_freeze_attn' trains grown attention heads"):
    methods.trainable_labels(TINY, model.abstract_params(TINY), "g_freeze_attn")
  assert methods.attention_growth_factor("g_freeze_attn") == 2 and methods.growth_factor("g_freeze_attn") == 1
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  shardings = tree_paths.flatten(sharding.param_shardings(abstract, mesh))
  assert shardings["layer_2/attn/grown_1/q_einsum/w"].spec == jax.sharding.PartitionSpec("tensor", "fsdp", None)
  assert shardings["layer_2/attn/grown_1/attn_vec_einsum/w"].spec == jax.sharding.PartitionSpec("tensor", None, "fsdp")
  a = accounting.account(config, abstract, labels)
  per_branch = 2 * (4 * 64 * 16) + 2 * 2 * 64 * 16                               # q + o, own k and v
  assert a["trainable_params"] == a["grown_params"] == 2 * per_branch
  assert a["base_params"] == count_params(TINY)
  assert a["added_flops_per_token"] == 2 * per_branch * 2                         # 2 FLOPs per multiply-add


def test_init_params_routes_attention_growth_from_the_config(tiny_config):
  from grow_jax.train import config as config_lib, setup
  config = tiny_config("mode=g_freeze_attn,layers_n=2,layers=1")
  config.growth.attention_kv = True
  config_lib.check(config)
  mc, params = setup.init_params(config, sharding.make_mesh({"data": -1}, jax.devices()[:1]))
  assert mc.attn_branches == (((4, 2),), ((4, 2), (4, 2))) and not mc.is_grown
  assert "kv_einsum" in params["layer_1"]["attn"]["grown_1"]
  config.growth.attention_factor = 1
  with pytest.raises(ConfigError, match="growth.attention_factor=1.*'g_freeze_attn' trains grown attention heads"):
    config_lib.check(config)


def test_save_hf_of_head_grown_model_loads_with_from_pretrained(small, tmp_path):
  pytest.importorskip("torch")
  import transformers
  from grow_jax.formats import save_hf
  from tests.hf_reference import hf_logits
  params, toks, _ = small
  config, grown = attention.grow_attention(SMALL, params, layers=[0])
  config, grown = operators.grow_mlp(config, grown, layers=[1])
  out = save_hf(config, grown, tmp_path / "hf")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  delta = max_delta(hf_logits(hf_model, toks), FORWARD(config, grown, toks))
  print(f"\n[attention growth] heads x2 (layer 0) + MLP x2 (layer 1) -> save_hf -> from_pretrained: {delta:.3g}")
  assert hf_model.config.num_attention_heads == 8 and delta <= 1e-4


@pytest.mark.slow
def test_trainer_runs_g_freeze_attn_and_moves_only_the_new_heads(tiny_config, tmp_path):
  from grow_jax.train import loop
  from grow_jax.train.checkpointing import load_trained_params
  config = tiny_config("mode=g_freeze_attn,steps=2,layers_n=2,layers=1,seq_len=16,lr=0.03")
  config.eval.tasks = ()
  loop.train_and_evaluate(config, str(tmp_path / "wd"))
  mc, trained, meta = load_trained_params(str(tmp_path / "wd"))
  assert meta["method"]["name"] == "g_freeze_attn" and mc.attn_branches == (((4, 2),), ((4, 2), (4, 0)))
  from grow_jax import formats
  _, base = formats.load_checkpoint("random:tiny", num_layers=2)
  flat, flat0 = tree_paths.flatten(trained), tree_paths.flatten(base)
  moved = {p for p in flat if p not in flat0 or not np.array_equal(flat[p], flat0[p])}
  assert moved == {"layer_1/attn/attn_vec_einsum/w",                          # halved by growth, then frozen
                   "layer_1/attn/grown_1/q_einsum/w", "layer_1/attn/grown_1/attn_vec_einsum/w"}
  o0 = np.asarray(flat0["layer_1/attn/attn_vec_einsum/w"])
  assert np.array_equal(flat["layer_1/attn/attn_vec_einsum/w"], o0 / 2)
  assert not np.array_equal(flat["layer_1/attn/grown_1/attn_vec_einsum/w"], o0 / 2)   # trained
