"""Growth as the trainer's config routes it: factors 3 and 4, G-Train with and without symmetry-breaking noise,
g_freeze_norms (all from configs/tiny.py, on one layer, without training)."""

import jax
import numpy as np
import pytest

from grow_jax.growth import operators as growth
from grow_jax.train import config as config_lib, setup, sharding


def _init(config):
  config_lib.check(config)
  mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
  return setup.init_params(config, mesh)


@pytest.mark.parametrize("factor", [3, 4])
def test_growth_factor_3_and_4_reach_the_model(tiny_config, factor):
  config = tiny_config(f"mode=g_freeze,layers_n=1,grow={factor}")
  mc = setup.grown_model_config(config, setup.base_model_config(config))
  assert mc.mlp_branches == ((128,) * factor,)
  if factor == 3:
    mc, params = _init(config)
    mlp = params["layer_0"]["mlp"]
    assert set(mlp) == {"gating_einsum", "linear", "grown_1", "grown_2"}
    np.testing.assert_array_equal(mlp["grown_2"]["linear"], mlp["linear"])


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_g_train_noise_on_and_off(tiny_config, noise):
  config = tiny_config("mode=g_train,layers_n=1")
  config.growth.noise_scale = noise
  mc, params = _init(config)
  div = growth.clone_divergence(mc, params)
  assert float(div["clone_div/layer_0/gate"]) == 0.0
  down = float(div["clone_div/layer_0/down"])
  print(f"\n[growth config] g_train noise_scale={noise}: clone divergence of down = {down:.3g}")
  assert down == 0.0 if noise == 0.0 else down == pytest.approx(2 * noise, rel=0.1)


def test_g_freeze_norms_grows_by_default(tiny_config):
  config = tiny_config("mode=g_freeze_norms,layers_n=2,layers=1")
  assert config_lib.growth_factor(config) == 2 and config_lib.attention_growth_factor(config) == 1
  mc = setup.grown_model_config(config, setup.base_model_config(config))
  assert mc.mlp_branches == ((128,), (128, 128))
