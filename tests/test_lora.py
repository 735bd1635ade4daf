"""LoRA: adapters leave the model unchanged at init, each merged delta applies A then B along the axes the
forward pass uses, the rank can be matched to G-Freeze's trainable count, bad inputs are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grow_jax import model
from grow_jax import tree_paths
from grow_jax.growth import operators as growth
from grow_jax.methods import lora
from grow_jax import methods
from grow_jax.methods import partition
from grow_jax.model.config import get_preset
from grow_jax.errors import ConfigError
from random_params import random_params

CFG = get_preset("tiny", num_layers=2, vocab_size=128)
N, K, D, H, F = CFG.num_heads, CFG.num_kv_heads, CFG.embed_dim, CFG.head_dim, CFG.hidden_dim




PARAMS = random_params(CFG)


def test_init_shapes_and_identity_at_init():
  with_lora = lora.init(PARAMS, rank=3, rng=jax.random.key(0))
  ad = with_lora["lora"]["layer_0"]
  assert ad["attn"]["q_einsum"]["w"]["a"].shape == (D, 3) and ad["attn"]["q_einsum"]["w"]["b"].shape == (3, N, H)
  assert ad["attn"]["kv_einsum"]["w"]["a"].shape == (2, D, 3)
  assert ad["attn"]["kv_einsum"]["w"]["b"].shape == (2, 3, K, H)
  assert ad["attn"]["attn_vec_einsum"]["w"]["a"].shape == (N, H, 3)
  assert ad["mlp"]["gating_einsum"]["a"].shape == (2, D, 3) and ad["mlp"]["gating_einsum"]["b"].shape == (2, 3, F)
  assert ad["mlp"]["linear"]["a"].shape == (F, 3) and ad["mlp"]["linear"]["b"].shape == (3, D)
  assert all(not np.any(b) for p, b in tree_paths.flatten(with_lora["lora"]).items() if p.endswith("/b"))
  a = np.asarray(ad["mlp"]["linear"]["a"])
  assert 0.5 / np.sqrt(F) < a.std() < 2 / np.sqrt(F)
  merged = lora.merge(with_lora)
  assert "lora" not in merged
  # B = 0: every merged weight is the base weight bit for bit (so the logits are too).
  assert tree_paths.flatten(merged).keys() == tree_paths.flatten(PARAMS).keys()
  for p, x in tree_paths.flatten(PARAMS).items():
    assert np.array_equal(tree_paths.get(merged, p), x), p


# The forward pass's einsum for each target kind, and the same map applied unmerged: x -> (x A) B.
CASES = {
    "layer_0/attn/q_einsum/w": ("BTD,NDH->BTNH", "BTD,Dr->BTr", "BTr,rNH->BTNH", (2, 5, D)),
    "layer_0/attn/kv_einsum/w": ("BSD,CKDH->CBSKH", "BSD,CDr->CBSr", "CBSr,CrKH->CBSKH", (2, 5, D)),
    "layer_0/attn/attn_vec_einsum/w": ("BTNH,NHD->BTD", "BTNH,NHr->BTr", "BTr,rD->BTD", (2, 5, N, H)),
    "layer_0/mlp/gating_einsum": ("BTD,CFD->CBTF", "BTD,CDr->CBTr", "CBTr,CrF->CBTF", (2, 5, D)),
    "layer_1/mlp/linear": ("BTF,FD->BTD", "BTF,Fr->BTr", "BTr,rD->BTD", (2, 5, F)),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(CASES))
def test_merged_equals_unmerged(path):
  """W + A B applied to x equals x W + (x A) B: the adapter uses the forward pass's in/out axes."""
  merged_eq, a_eq, b_eq, x_shape = CASES[path]
  rng = np.random.default_rng(1)
  with_lora = lora.init(PARAMS, rank=4, rng=jax.random.key(1))
  flat = tree_paths.flatten(with_lora)
  a = flat[f"lora/{path}/a"]
  b = rng.normal(0, 0.1, flat[f"lora/{path}/b"].shape).astype(np.float32)
  with_lora = tree_paths.set_path(with_lora, f"lora/{path}/b", b)
  merged_w = tree_paths.get(lora.merge(with_lora, scale=0.5), path)
  w = flat[path]
  x = rng.normal(size=x_shape).astype(np.float32)
  merged = jnp.einsum(merged_eq, x, merged_w)
  unmerged = jnp.einsum(merged_eq, x, w) + 0.5 * jnp.einsum(b_eq, jnp.einsum(a_eq, x, a), b)
  np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(merged - jnp.einsum(merged_eq, x, w)))) > 1e-3   # the adapter does something


def test_targets_are_configurable_and_grown_branches_included():
  config, grown = growth.grow_mlp(CFG, PARAMS, layers=[1])
  paths = lora.target_paths(grown)
  assert "layer_1/mlp/grown_1/linear" in paths and "layer_0/attn/q_einsum/w" in paths
  assert len(paths) == 2 * 5 + 2
  only_mlp = lora.init(grown, rank=2, rng=jax.random.key(0), targets=r"layer_\d+/mlp/(grown_\d+/)?linear")
  assert sorted(tree_paths.flatten(only_mlp["lora"])) == [
      "layer_0/mlp/linear/a", "layer_0/mlp/linear/b", "layer_1/mlp/grown_1/linear/a",
      "layer_1/mlp/grown_1/linear/b", "layer_1/mlp/linear/a", "layer_1/mlp/linear/b"]
  del config


def test_match_params_of_g_freeze():
  method = methods.setup_method("lora", CFG, PARAMS, {"match_params_of": "g_freeze"})
  target = 2 * 3 * D * F                                      # g_freeze on this model grown x2, all layers
  info = method.info
  assert info["target_count"] == target
  n = partition.count(method.params, method.labels)
  assert n == info["lora_count"] == info["lora_rank"] * lora.params_per_rank(PARAMS)
  # The closest achievable count: within half a rank's worth of parameters.
  assert abs(n - target) <= lora.params_per_rank(PARAMS) / 2
  print(f"\n[lora] tiny: rank {info['lora_rank']} -> {n} vs g_freeze {target} ({100 * info['relative_gap']:+.2f}%)")


def test_match_params_of_on_gemma3_270m_shapes():
  config = get_preset("gemma3_270m")
  abstract = model.abstract_params(config)
  target = methods.trainable_count("g_freeze", config, abstract)
  assert target == 18 * 3 * 640 * 2048
  rank, n = lora.rank_for_count(abstract, target)
  print(f"\n[lora] Gemma 3 270M: rank {rank} -> {n} adapters vs g_freeze {target} "
        f"({100 * (n - target) / target:+.3f}%)")
  assert abs(n - target) / target < 0.005


@pytest.mark.parametrize("rank", [0, -2, 1.5, None])
def test_bad_rank(rank):
  with pytest.raises(ConfigError, match=f"lora_rank={rank!r}: expected a positive integer"):
    methods.setup_method("lora", CFG, PARAMS, {"lora_rank": rank})


def test_bad_targets():
  with pytest.raises(ConfigError, match="matches no parameter"):
    lora.init(PARAMS, rank=2, rng=jax.random.key(0), targets="layer_9/.*")
  with pytest.raises(ConfigError, match="bad regex"):
    lora.init(PARAMS, rank=2, rng=jax.random.key(0), targets="(")
  with pytest.raises(ConfigError, match="final_norm/scale.*no known matrix layout"):
    lora.init(PARAMS, rank=2, rng=jax.random.key(0), targets="final_norm/scale")
