"""config.model.remat (a jax.checkpoint policy around each layer) and config.model.scan_layers (a jax.lax.scan over
runs of identical layers) change how the model is computed, never what it computes.

Against the default unrolled model without remat, in float32: unrolled, every policy gives bit-identical logits,
loss and gradients; scanned, they are equal to float rounding (1e-5 relative to each array's largest entry: XLA
compiles a loop body's fusions differently from the same ops unrolled, which moves the last bits; the same holds
with a static attention type, so it is not the scanned LayerKind). The models mix local (sliding window shorter
than the sequence) and global (RoPE scaled) layers in one scanned run, and include MLP growth of every layer,
targeted growth of some layers, grown attention heads and LoRA.
"""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from random_params import random_params

from grow_jax.errors import ConfigError
from grow_jax.formats import save_hf
from grow_jax.growth import attention, operators as growth
from grow_jax.methods import lora
from grow_jax.model import transformer
from grow_jax.model.config import REMAT_NAMES, ModelConfig, abstract_params, get_preset
from grow_jax.train import config as config_lib, setup as setup_lib, step as step_lib

SEQ = 20     # longer than the sliding window (8)
BASE = get_preset("tiny", num_layers=4, attention_types=("local", "global", "local", "local"),
                  global_scale_factor=8.0)


@functools.cache
def model(name: str):
  """(config, params) of a test model: the params random in every leaf (grown branches too)."""
  if name == "mixed":
    config = BASE
  elif name == "grown":             # MLP growth of every layer: one run, scanned
    config = growth.grow_config(BASE, factor=2)
  elif name == "targeted":          # growth of layers 1 and 2 only: runs (0,), (1, 2), (3,)
    config = growth.grow_config(BASE, factor=2, layers=(1, 2))
  elif name == "heads":             # grown heads with kv heads of their own in layers 2, 3: runs (0, 1), (2, 3)
    config = attention.attention_config(BASE, factor=2, grow_kv=True, layers=(2, 3))
  elif name == "lora":              # adapters merged before the forward; gradients reach A and B
    params = lora.init(random_params(BASE, seed=1), rank=2, rng=jax.random.key(3))
    rng = np.random.default_rng(2)
    params["lora"] = jax.tree.map(lambda x: rng.normal(0.0, 0.05, x.shape).astype(np.float32), params["lora"])
    return BASE, params
  else:
    raise KeyError(name)
  return config, random_params(config, seed=1)


def batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, BASE.vocab_size, (2, SEQ)).astype(np.int32)
  input_mask = np.ones((2, SEQ), bool)
  input_mask[1, :5] = False                      # left padding
  loss_mask = (rng.random((2, SEQ)) < 0.7).astype(np.int32)
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


def run(config: ModelConfig, params):
  """(loss, logits, gradients): the mean target-token cross-entropy from one forward's logits."""
  def loss_and_logits(p, b):
    logits = transformer.forward(config, lora.merge(p), b["tokens"], input_mask=b["input_mask"])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), b["tokens"][:, 1:, None], axis=-1)[..., 0]
    weights = step_lib.target_weights(b)
    return jnp.sum(nll * weights) / jnp.sum(weights), logits
  (loss, logits), grads = jax.jit(jax.value_and_grad(loss_and_logits, has_aux=True))(params, batch())
  return jax.device_get((loss, logits, grads))


@functools.cache
def reference(name: str):
  config, params = model(name)
  assert config.remat == "none" and not config.scan_layers
  return run(config, params)


def assert_same_model(name: str, remat: str, scan: bool):
  config, params = model(name)
  loss, logits, grads = run(config.replace(remat=remat, scan_layers=scan), params)
  ref_loss, ref_logits, ref_grads = reference(name)
  assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
  pairs = [("logits", logits, ref_logits), ("loss", loss, ref_loss)]
  pairs += [(jax.tree_util.keystr(path), g, r)
            for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads))]
  for what, x, ref in pairs:
    if scan:
      np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)), err_msg=what)
    else:
      np.testing.assert_array_equal(x, ref, err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("remat", REMAT_NAMES)
def test_every_remat_policy_scanned_or_not_computes_the_unrolled_model(remat, scan):
  if remat == "none" and not scan:
    pytest.skip("the reference itself")
  assert_same_model("mixed", remat, scan)


@pytest.mark.slow
@pytest.mark.parametrize("remat, scan", [("none", True), ("full", True)])   # runs of one: remat unrolled
@pytest.mark.parametrize("name", ["grown", "targeted", "heads", "lora"])
def test_grown_and_adapted_models_scanned_and_rematerialised_are_the_same_model(name, remat, scan):
  assert_same_model(name, remat, scan)


def test_layers_scan_in_maximal_runs_of_identical_parameter_shapes():
  runs = lambda name: transformer.layer_runs(lora.merge(model(name)[1]), BASE.num_layers)
  assert runs("mixed") == runs("grown") == runs("lora") == [(0, 1, 2, 3)]
  assert runs("targeted") == [(0,), (1, 2), (3,)]
  assert runs("heads") == [(0, 1), (2, 3)]


def test_local_and_global_layers_share_a_scan_body_through_their_layer_kind():
  kinds = transformer.layer_kinds(BASE, range(4))
  np.testing.assert_array_equal(kinds.local, [True, False, True, True])
  H = BASE.head_dim
  np.testing.assert_array_equal(kinds.inv_freq[1], transformer.rope_frequencies(H, 1_000_000.0, 8.0))
  np.testing.assert_array_equal(kinds.inv_freq[0], transformer.rope_frequencies(H, 10_000.0))


def _primitives(jaxpr, found=None):
  """(primitive name, params) of every equation, nested jaxprs (scan bodies, remat) included."""
  found = [] if found is None else found
  for eqn in jaxpr.eqns:
    found.append((eqn.primitive.name, eqn.params))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _primitives(sub.jaxpr, found)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _primitives(sub, found)
  return found


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("remat", REMAT_NAMES)
def test_the_gradient_program_rematerialises_each_layer_with_the_named_policy(remat, scan):
  config, params = model("targeted")           # runs (0,), (1, 2), (3,)
  config = config.replace(remat=remat, scan_layers=scan)
  grad = jax.grad(lambda p: step_lib.mean_loss(config, p, batch()))
  found = _primitives(jax.make_jaxpr(grad)(params).jaxpr)
  policies = [p["policy"] for name, p in found if name == "remat2"]
  scans = sorted(p["length"] for name, p in found if name == "scan")
  expected = transformer.REMAT_POLICIES[remat]
  if remat == "none":
    assert policies == []
  else:
    # the forward's checkpoints (the backward's recomputation lives in their transposes)
    assert len(policies) == (3 if scan else 4) and all(p is expected for p in policies), policies
  # the scan's forward and its transpose, over the run (1, 2)
  assert scans == ([2, 2] if scan else [])


@pytest.mark.slow
def test_full_remat_in_a_scan_keeps_less_for_the_backward():
  config = get_preset("tiny", num_layers=8)
  params = abstract_params(config)
  tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)

  def temp_bytes(remat):
    c = config.replace(remat=remat, scan_layers=True)
    grad = jax.jit(jax.grad(lambda p, t: step_lib.mean_loss(c, p, {"tokens": t, "loss_mask": jnp.ones_like(t)})))
    return grad.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

  kept, remat = temp_bytes("none"), temp_bytes("full")
  assert remat < kept / 2, (remat, kept)


# ---- compute settings, not architecture --------------------------------------------------------------------
def test_an_unknown_remat_name_is_one_error_listing_the_known_names():
  with pytest.raises(ConfigError, match=r"ModelConfig.remat='dot': expected one of \['none', 'full', 'dots'"):
    BASE.replace(remat="dot")
  config = config_lib.base_config()
  config.model.remat = "everything"
  with pytest.raises(ConfigError, match=r"^config.model.remat='everything': expected one of \['none', 'full'"):
    config_lib.check(config)
  config.model.remat = "dots_no_batch"
  config_lib.check(config)


def test_remat_and_scan_are_not_serialised_so_meta_params_files_and_exports_stay_as_before():
  compute = BASE.replace(remat="full", scan_layers=True)
  assert compute.to_dict() == BASE.to_dict() and "remat" not in BASE.to_dict()
  assert compute.to_json() == BASE.to_json()
  old = BASE.to_dict()                          # meta written before these fields existed
  assert ModelConfig.from_dict(old) == BASE
  assert ModelConfig.from_dict({**old, "remat": "full", "scan_layers": True}) == compute


def test_remat_and_scan_are_allowed_for_every_init_source(tmp_path):
  config, params = model("mixed")
  hf = save_hf(config, params, tmp_path / "hf")
  c = config_lib.base_config()
  c.init.source = f"hf:{hf}"
  c.model.remat, c.model.scan_layers = "save_dot_except_mlp", True
  mc = setup_lib.base_model_config(c)
  assert (mc.remat, mc.scan_layers, mc.num_layers) == ("save_dot_except_mlp", True, 4)
  c.model.num_layers = 2
  with pytest.raises(ConfigError, match="config.model.num_layers=2 changes the architecture"):
    setup_lib.base_model_config(c)
  grown = config_lib.base_config()                # random:tiny, grown x2 by g_freeze
  grown.train.mode = "g_freeze"
  grown.model.remat, grown.model.scan_layers = "full", True
  mc = setup_lib.grown_model_config(grown, setup_lib.base_model_config(grown))
  assert (mc.remat, mc.scan_layers, mc.is_grown) == ("full", True, True)
