"""Growth operators are function-preserving: bit-exact for factor 2 (tiny model and the real Gemma 3 270M),
to float rounding otherwise; merged/padded exports load in Hugging Face transformers with the same logits.

Each preservation test prints its max |Δlogit| (run with -s).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grow_jax import tree_paths
from grow_jax.growth import operators as growth
from grow_jax.formats import hf_format
from grow_jax import model
from grow_jax.model.config import get_preset
from grow_jax.errors import CheckpointError, ConfigError
from random_params import random_params

TINY = get_preset("tiny")   # 7 layers, N=4 query heads on K=2 kv heads
# Two layers (one local, one global) for the tests that need not be on the full tiny model: fewer compiles.
SMALL = get_preset("tiny", num_layers=2, sliding_window_pattern=2)
FORWARD = jax.jit(model.forward, static_argnums=0)




def tokens(shape, vocab, seed=0):
  return np.random.default_rng(seed).integers(3, vocab, size=shape).astype(np.int32)


def max_delta(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


@pytest.fixture(scope="module")
def tiny():
  params = random_params(TINY)
  toks = tokens((2, 24), TINY.vocab_size)
  return params, toks, FORWARD(TINY, params, toks)


@pytest.fixture(scope="module")
def small():
  params = random_params(SMALL)
  toks = tokens((2, 24), SMALL.vocab_size)
  return params, toks, FORWARD(SMALL, params, toks)


# ---- MLP growth --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [None, [1, 4]], ids=["all_layers", "layers_1_4"])
def test_factor2_growth_is_bit_exact(tiny, layers):
  params, toks, base = tiny
  config, grown = growth.grow_mlp(TINY, params, factor=2, layers=layers)
  which = range(TINY.num_layers) if layers is None else layers
  assert config.mlp_branches == tuple((128, 128) if i in which else (128,) for i in range(TINY.num_layers))
  flat, flat0 = tree_paths.flatten(grown), tree_paths.flatten(params)
  for i in which:
    p = f"layer_{i}/mlp"
    # Original leaves stay at their paths (gate/up untouched, down halved); the copy is its own leaves.
    assert np.array_equal(flat[f"{p}/gating_einsum"], flat0[f"{p}/gating_einsum"])
    assert np.array_equal(flat[f"{p}/linear"], flat0[f"{p}/linear"] / 2)
    assert np.array_equal(flat[f"{p}/grown_1/gating_einsum"], flat0[f"{p}/gating_einsum"])
    assert np.array_equal(flat[f"{p}/grown_1/linear"], flat0[f"{p}/linear"] / 2)
  assert {int(k.split("/")[0][len("layer_"):]) for k in flat if "/grown_" in k} == set(which)
  out = FORWARD(config, grown, toks)
  delta = max_delta(out, base)
  print(f"\n[growth] tiny factor 2 layers={layers}: max|Δlogit| = {delta!r} (logit scale "
        f"{float(jnp.max(jnp.abs(base))):.3g})")
  assert delta == 0.0


@pytest.mark.slow
def test_factor3_growth_preserves_to_rounding(small):
  params, toks, base = small
  config, grown = growth.grow_mlp(SMALL, params, factor=3)
  assert config.mlp_branches[0] == (128, 128, 128)
  delta = max_delta(FORWARD(config, grown, toks), base)
  print(f"\n[growth] 2-layer factor 3: max|Δlogit| = {delta:.3g}")
  assert delta <= 1e-4 * float(jnp.max(jnp.abs(base)))


def test_growing_twice_composes(small):
  """Our rule: every existing branch's down projection / k, k-1 copies of each appended in order."""
  params, toks, base = small
  c1, p1 = growth.grow_mlp(SMALL, params, layers=[0])
  c2, p2 = growth.grow_mlp(c1, p1, layers=[0, 1])
  assert c2.mlp_branches == ((128,) * 4, (128,) * 2)
  orig = params["layer_0"]["mlp"]["linear"]
  mlp = p2["layer_0"]["mlp"]
  for node in (mlp, mlp["grown_1"], mlp["grown_2"], mlp["grown_3"]):
    assert np.array_equal(node["linear"], orig / 4)
  delta = max_delta(FORWARD(c2, p2, toks), base)
  print(f"\n[growth] 2-layer grown twice (4 branches of Wd/4): max|Δlogit| = {delta:.3g}")
  assert delta <= 1e-5 * float(jnp.max(jnp.abs(base)))


@pytest.mark.slow
def test_noise_is_antisymmetric_and_function_preserving(small):
  params, toks, base = small
  config, grown = growth.grow_mlp(SMALL, params, noise_scale=0.05, seed=3)
  mlp = grown["layer_0"]["mlp"]
  half = params["layer_0"]["mlp"]["linear"] / 2
  n0, n1 = mlp["linear"] - half, mlp["grown_1"]["linear"] - half
  assert float(jnp.std(n0)) > 0.01 * float(jnp.std(half))          # noise is there ...
  np.testing.assert_allclose(n0, -n1, atol=1e-7)                   # ... and antisymmetric: Wd/2 + N, Wd/2 - N
  delta = max_delta(FORWARD(config, grown, toks), base)
  print(f"\n[growth] 2-layer factor 2, noise 0.05: max|Δlogit| = {delta:.3g}")
  assert delta <= 1e-4 * float(jnp.max(jnp.abs(base)))
  # Factor 3: zero-sum noise over the three down projections.
  c3, g3 = growth.grow_mlp(SMALL, params, factor=3, noise_scale=0.05)
  m3 = g3["layer_1"]["mlp"]
  total = m3["linear"] + m3["grown_1"]["linear"] + m3["grown_2"]["linear"]
  np.testing.assert_allclose(total, params["layer_1"]["mlp"]["linear"], atol=1e-6)
  assert not np.allclose(m3["grown_1"]["linear"], m3["grown_2"]["linear"])
  assert max_delta(FORWARD(c3, g3, toks), base) <= 1e-4 * float(jnp.max(jnp.abs(base)))


def test_clone_divergence(small):
  params, _, _ = small
  config, grown = growth.grow_mlp(SMALL, params, layers=[1])
  div = jax.jit(growth.clone_divergence, static_argnums=0)(config, grown)
  assert sorted(div) == [f"clone_div/layer_1/{m}" for m in ("down", "gate", "up")]
  assert all(float(v) == 0.0 for v in div.values())
  noisy_config, noisy = growth.grow_mlp(SMALL, params, layers=[1], noise_scale=0.1)
  div = growth.clone_divergence(noisy_config, noisy)
  assert float(div["clone_div/layer_1/gate"]) == 0.0
  np.testing.assert_allclose(float(div["clone_div/layer_1/down"]), 0.2, rtol=0.05)  # |2N| / |Wd/2 + N|


def test_growth_under_eval_shape_needs_no_weights():
  config = get_preset("gemma3_1b")
  abstract = model.abstract_params(config)
  grown = jax.eval_shape(lambda p: growth.grow_mlp(config, p, layers="0,5")[1], abstract)
  grown_config = growth.grow_config(config, layers="0,5")
  assert grown["layer_5"]["mlp"]["grown_1"]["linear"].shape == (6912, 1152)
  assert jax.tree.map(lambda x: x.shape, grown) == jax.tree.map(
      lambda x: x.shape, model.abstract_params(grown_config))


@pytest.mark.parametrize("kwargs, message", [
    (dict(factor=1), "factor=1"), (dict(factor=2.5), "factor=2.5"), (dict(factor=True), "factor=True"),
    (dict(layers=[0, 2]), "out of range 0..1"), (dict(layers=[1, 1]), "repeated"),
    (dict(layers="0,x"), "comma-separated"), (dict(noise_scale=-0.1), "noise_scale=-0.1"),
])
def test_bad_growth_arguments(small, kwargs, message):
  with pytest.raises(ConfigError, match=message):
    growth.grow_mlp(SMALL, small[0], **kwargs)


def test_config_params_mismatch_is_named(small):
  config, grown = growth.grow_mlp(SMALL, small[0], layers=[0])
  with pytest.raises(ConfigError, match=r"layer_0/mlp has branches \['grown_1'\]"):
    growth.grow_mlp(SMALL, grown, layers=[0])
  with pytest.raises(ConfigError, match=r"layer_0/mlp lacks branches \['grown_1'\]"):
    growth.merge_branches(config, small[0])


# ---- merge / export ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regrown(small):
  """Layer 1 grown x2 (with noise), then x3 again: 6 branches of 128 (768); layer 0 stays at 128."""
  params = small[0]
  c1, p1 = growth.grow_mlp(SMALL, params, layers=[1], noise_scale=0.01)
  return growth.grow_mlp(c1, p1, factor=3, layers=[1])


@pytest.mark.slow
def test_merge_branches_and_uniform_padding(small, regrown):
  params, toks, base = small
  config, grown = regrown
  assert config.mlp_branches == ((128,), (128,) * 6)
  merged_config, merged = growth.merge_branches(config, grown)
  assert merged_config.mlp_branches == ((128,), (768,)) and not merged_config.is_grown
  # Concatenation along F in branch order.
  assert np.array_equal(merged["layer_1"]["mlp"]["linear"][128:256], grown["layer_1"]["mlp"]["grown_1"]["linear"])
  d_merge = max_delta(FORWARD(merged_config, merged, toks), base)
  padded_config, padded = growth.merge_branches(config, grown, uniform=True)
  assert padded_config.mlp_branches is None and padded_config.hidden_dim == 768
  assert padded["layer_0"]["mlp"]["linear"].shape == (768, 64)
  assert np.array_equal(padded["layer_0"]["mlp"]["linear"][:128], params["layer_0"]["mlp"]["linear"])
  assert not np.any(padded["layer_0"]["mlp"]["gating_einsum"][:, 128:])
  assert not np.any(padded["layer_0"]["mlp"]["linear"][128:])
  print(f"\n[growth] grown (noise 0.01, x2, x3) then merged vs original: max|Δlogit| = {d_merge:.3g}")
  assert d_merge <= 1e-4 * float(jnp.max(jnp.abs(base)))


def test_merged_padded_export_loads_in_transformers(small, regrown):
  torch = pytest.importorskip("torch")
  import transformers
  from tests.hf_reference import hf_logits
  toks = small[1]
  config, grown = regrown
  ours = FORWARD(config, grown, toks)
  merged_config, merged = growth.merge_branches(config, grown, uniform=True)
  hf_config = transformers.Gemma3TextConfig(**{k: v for k, v in hf_format.config_to_hf(merged_config).items()
                                               if k not in ("architectures", "torch_dtype", "model_type")})
  hf_config._attn_implementation = "eager"
  assert hf_config.intermediate_size == 768
  hf_model = transformers.Gemma3ForCausalLM(hf_config).eval()
  state = {k: torch.from_numpy(np.array(v)) for k, v in hf_format.params_to_hf(merged_config, merged).items()}
  missing, unexpected = hf_model.load_state_dict(state, strict=False)
  assert set(missing) <= {"lm_head.weight"} and not unexpected
  hf_model.tie_weights()
  delta = max_delta(hf_logits(hf_model, toks), ours)
  print(f"\n[growth] grown model -> merged+padded (F=768) -> transformers: max|Δlogit| = {delta:.3g}")
  assert delta <= 1e-4


def test_save_hf_of_a_grown_model_loads_with_from_pretrained(small, regrown, tmp_path):
  """formats.save_hf merges and pads a grown model itself (merge_branches(uniform=True))."""
  pytest.importorskip("torch")
  from grow_jax import formats as checkpoints
  import transformers
  from tests.hf_reference import hf_logits
  config, grown = regrown
  out = checkpoints.save_hf(config, grown, tmp_path / "grown_hf")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  delta = max_delta(hf_logits(hf_model, small[1]), FORWARD(config, grown, small[1]))
  print(f"\n[growth] grown model -> save_hf -> from_pretrained: max|Δlogit| = {delta:.3g}")
  assert hf_model.config.intermediate_size == 768 and delta <= 1e-4


# ---- dial ----------------------------------------------------------------------------------------------
def test_dial_ends(small):
  params, toks, base = small
  config, grown = growth.grow_mlp(SMALL, params, layers=[1])
  # "Train" the copies only (G-Freeze): perturb every grown leaf, originals frozen.
  rng = np.random.default_rng(7)
  noise = lambda x: x + rng.normal(0.0, 0.05, x.shape).astype(np.float32)
  trained = tree_paths.map_with_path(lambda p, x: noise(x) if "grown_" in p else x, grown)
  out_trained = FORWARD(config, trained, toks)
  assert max_delta(out_trained, base) > 1e-3
  d0 = max_delta(FORWARD(config, growth.dial(config, trained, 0.0), toks), base)
  d_half = max_delta(FORWARD(config, growth.dial(config, trained, 0.5), toks), out_trained)
  mid = FORWARD(config, growth.dial(config, trained, 0.25), toks)
  print(f"\n[growth] dial alpha=0 vs original: {d0!r}; alpha=1/2 vs trained: {d_half!r}")
  assert d0 == 0.0 and d_half == 0.0
  assert 0 < max_delta(mid, base) < max_delta(out_trained, base) * 1.5
  # G-Train also moved the original gate/up: base_params restores them exactly.
  g_trained = tree_paths.map_with_path(
      lambda p, x: noise(x) if p == "layer_1/mlp/gating_einsum" else x, trained)
  assert max_delta(FORWARD(config, growth.dial(config, g_trained, 0.0), toks), base) > 1e-3
  assert max_delta(FORWARD(config, growth.dial(config, g_trained, 0.0, base_params=params), toks), base) == 0.0
  assert max_delta(FORWARD(config, growth.dial(config, g_trained, 0.5, base_params=params), toks),
                   FORWARD(config, g_trained, toks)) == 0.0


# ---- the real Gemma 3 270M -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma3_270m():
  checkpoints = pytest.importorskip("grow_jax.checkpoints")
  try:
    config, params = checkpoints.load_checkpoint("gemma3-270m")
  except CheckpointError as e:  # e.g. the model package is not installed
    pytest.skip(f"real Gemma 3 270M unavailable: {e}")
  params = jax.tree.map(jnp.asarray, params)
  toks = tokens((1, 32), config.vocab_size, seed=1)
  return config, params, toks, FORWARD(config, params, toks)


@pytest.mark.slow
def test_real_gemma3_270m_growth_is_bit_exact(gemma3_270m):
  """All 18 layers grown x2 (targeted subsets are covered on the tiny model; one compile here is ~10 s)."""
  config, params, toks, base = gemma3_270m
  grown_config, grown = growth.grow_mlp(config, params)
  assert grown_config.mlp_branches == ((2048, 2048),) * 18
  delta = max_delta(FORWARD(grown_config, grown, toks), base)
  print(f"\n[growth] Gemma 3 270M factor 2, all layers: max|Δlogit| = {delta!r} "
        f"(logit scale {float(jnp.max(jnp.abs(base))):.3g})")
  assert delta == 0.0
