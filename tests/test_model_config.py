"""Specification of the model configuration: presets, per-layer facts, serialisation and bad input."""

import jax
import pytest

from grow_jax import model
from grow_jax.model import transformer
from grow_jax.model.config import GLOBAL, LOCAL, ModelConfig, count_params, get_preset, param_shapes, parse_layers
from grow_jax.errors import ConfigError


@pytest.mark.parametrize("name,expected_layers", [("gemma3_270m", 18), ("gemma3_1b", 26), ("gemma3_4b", 34)])
def test_full_size_presets_are_checkable_without_memory(name, expected_layers):
  config = get_preset(name)
  flat = lambda tree: {"/".join(k.key for k in path): leaf.shape
                       for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  declared = flat(transformer.module_param_shapes(config))
  assert declared == param_shapes(config)
  assert flat(model.abstract_params(config)) == declared
  assert config.num_layers == expected_layers


def test_parameter_counts_of_presets():
  assert count_params(get_preset("gemma3_270m")) == 268_098_176
  assert round(count_params(get_preset("gemma3_1b")) / 1e9, 2) == 1.0
  assert round(count_params(get_preset("gemma3_4b")) / 1e9, 2) == 3.88


def test_five_local_layers_then_one_global():
  config = get_preset("gemma3_1b")
  types = [config.attention_type(i) for i in range(12)]
  assert types == [LOCAL] * 5 + [GLOBAL] + [LOCAL] * 5 + [GLOBAL]


def test_init_params_matches_the_module_for_a_grown_config():
  config = get_preset("tiny", mlp_branches=((128, 32),) + ((128,),) * 6, param_dtype="bfloat16")
  params = model.init_params(config, jax.random.key(0))
  declared = transformer.module_param_shapes(config)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(declared)
  for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(declared)):
    assert got.shape == want.shape and got.dtype == want.dtype
  assert float(abs(params["layer_0"]["mlp"]["grown_1"]["linear"]).max()) > 0
  assert float(abs(params["final_norm"]["scale"]).max()) == 0.0


def test_per_layer_mlp_branches_give_per_layer_widths():
  config = get_preset("tiny", mlp_branches=((128, 128),) + ((128,),) * 6)
  assert config.layer_mlp_width(0) == 256 and config.layer_mlp_width(1) == 128
  assert config.is_grown
  shapes = param_shapes(config)
  assert shapes["layer_0/mlp/grown_1/linear"] == (128, 64)
  assert "layer_1/mlp/grown_1/linear" not in shapes


def test_config_round_trips_through_dict():
  config = get_preset("tiny", mlp_branches=((128, 64),) + ((128,),) * 6, dtype="bfloat16")
  assert ModelConfig.from_dict(config.to_dict()) == config
  assert hash(config) == hash(ModelConfig.from_dict(config.to_dict()))


def test_bad_configs_name_the_field():
  with pytest.raises(ConfigError, match="unknown model preset 'gemma9'"):
    get_preset("gemma9")
  with pytest.raises(ConfigError, match="num_heads=3 must be a multiple of num_kv_heads=2"):
    get_preset("tiny", num_heads=3)
  with pytest.raises(ConfigError, match="mlp_branches has 2 layers, expected num_layers=7"):
    get_preset("tiny", mlp_branches=((1,), (1,)))
  with pytest.raises(ConfigError, match="dtype='float8'"):
    get_preset("tiny", dtype="float8")
  with pytest.raises(ConfigError, match="unknown field"):
    ModelConfig.from_dict({**get_preset("tiny").to_dict(), "bogus": 1})


def test_parse_layers():
  assert parse_layers("0,3,5", 7) == (0, 3, 5)
  assert parse_layers(None, 7) is None and parse_layers("all", 7) is None
  with pytest.raises(ConfigError, match=r"indices \[9\] out of range 0..6"):
    parse_layers([1, 9], 7)
  with pytest.raises(ConfigError, match="repeated"):
    parse_layers("1,1", 7)
