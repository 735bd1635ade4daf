"""An HF Gemma 3 config.json -> ModelConfig, for the shapes Google released: Gemma 3 4B's multimodal config with a
sparse text_config (the missing keys mean transformers' Gemma3TextConfig defaults), Gemma 3 1B's flat one; a value
of the wrong type is one line naming the key."""

import json
import os

import pytest
import transformers

from config_files import ROOT
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.formats import hf_dir
from grow_jax.formats.hf_format import config_from_hf
from grow_jax.model.config import GLOBAL, LOCAL, get_preset

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "hf_configs")


def _released(name):
  with open(os.path.join(FIXTURES, f"{name}.config.json")) as f:
    return json.load(f)


def _reading(config):
  """What a ModelConfig says about the architecture, field by field (per-layer attention kinds spelled out)."""
  return dict(
      vocab_size=config.vocab_size, embed_dim=config.embed_dim, hidden_dim=config.hidden_dim,
      num_layers=config.num_layers, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
      head_dim=config.head_dim, query_pre_attn_scalar=config.query_pre_attn_scalar,
      sliding_window=config.sliding_window, local_base_frequency=config.local_base_frequency,
      global_base_frequency=config.global_base_frequency, global_scale_factor=config.global_scale_factor,
      attention=[config.attention_type(i) for i in range(config.num_layers)], rms_norm_eps=config.rms_norm_eps,
      final_logit_softcap=config.final_logit_softcap, attn_logit_softcap=config.attn_logit_softcap,
      max_position_embeddings=config.max_position_embeddings, bos_token_id=config.bos_token_id,
      eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)


def _transformers_reading(text):
  """The same facts as transformers' own Gemma3TextConfig holds them."""
  full, sliding = text.rope_parameters["full_attention"], text.rope_parameters["sliding_attention"]
  eos = text.eos_token_id[0] if isinstance(text.eos_token_id, list) else text.eos_token_id
  return dict(
      vocab_size=text.vocab_size, embed_dim=text.hidden_size, hidden_dim=text.intermediate_size,
      num_layers=text.num_hidden_layers, num_heads=text.num_attention_heads, num_kv_heads=text.num_key_value_heads,
      head_dim=text.head_dim, query_pre_attn_scalar=text.query_pre_attn_scalar, sliding_window=text.sliding_window,
      local_base_frequency=sliding["rope_theta"], global_base_frequency=full["rope_theta"],
      global_scale_factor=full["factor"] if full["rope_type"] == "linear" else 1.0,
      attention=[GLOBAL if t == "full_attention" else LOCAL for t in text.layer_types],
      rms_norm_eps=text.rms_norm_eps, final_logit_softcap=text.final_logit_softcapping,
      attn_logit_softcap=text.attn_logit_softcapping, max_position_embeddings=text.max_position_embeddings,
      bos_token_id=text.bos_token_id, eos_token_id=eos, pad_token_id=text.pad_token_id)


def test_the_released_gemma3_4b_config_is_our_4b_preset():
  assert config_from_hf(_released("gemma-3-4b-pt")) == get_preset("gemma3_4b")


def test_the_released_gemma3_4b_config_reads_as_transformers_reads_it():
  released = _released("gemma-3-4b-pt")
  theirs = transformers.Gemma3Config(**released).text_config
  ours = config_from_hf(released)
  assert _reading(ours) == _transformers_reading(theirs)
  # transformers' own full rewrite of the file (every key written, transformers 5 names) reads the same.
  assert config_from_hf(theirs.to_dict()) == ours


def test_a_sparse_text_config_given_alone_is_read_with_the_same_defaults():
  text = _released("gemma-3-4b-pt")["text_config"]
  assert config_from_hf(text) == get_preset("gemma3_4b")
  assert _reading(config_from_hf(text)) == _transformers_reading(transformers.Gemma3TextConfig(**text))


def test_the_released_gemma3_1b_flat_config_still_loads():
  released = _released("gemma-3-1b-pt")
  assert config_from_hf(released) == get_preset("gemma3_1b")
  assert _reading(config_from_hf(released)) == _transformers_reading(transformers.Gemma3TextConfig(**released))


def test_a_config_that_names_no_model_type_must_write_the_architecture_out():
  text = {k: v for k, v in _released("gemma-3-4b-pt")["text_config"].items() if k != "model_type"}
  with pytest.raises(ConfigError, match=r"missing \['vocab_size', 'num_attention_heads', 'num_key_value_heads', "
                                        r"'head_dim'\] and names no model_type"):
    config_from_hf(text)


@pytest.mark.parametrize("key, value, expected", [
    ("hidden_size", "2560", "text_config.hidden_size='2560': expected an integer"),
    ("num_hidden_layers", 34.5, "text_config.num_hidden_layers=34.5: expected an integer"),
    ("sliding_window", None, "text_config.sliding_window=None: expected an integer"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 8.0}, "text_config.rope_scaling.rope_type='yarn': expected "
                                                           "'default' or 'linear'"),
    ("rope_scaling", {"rope_type": "linear", "factor": "8"}, "text_config.rope_scaling.factor='8': expected a number"),
    ("final_logit_softcapping", [30.0], "text_config.final_logit_softcapping=[30.0]: expected a number or null"),
    ("layer_types", ["sliding_attention"] * 33 + ["chunked_attention"],
     "text_config.layer_types holds ['chunked_attention']: expected 'full_attention' or 'sliding_attention'"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, key, value, expected):
  released = _released("gemma-3-4b-pt")
  released["text_config"][key] = value
  with pytest.raises(ConfigError) as error:
    config_from_hf(released)
  assert str(error.value).startswith(f"config.json {expected}") and "\n" not in str(error.value)
  (tmp_path / "config.json").write_text(json.dumps(released))
  with pytest.raises(CheckpointError) as error:            # as a model directory: the same line, with the path
    hf_dir.read_config(tmp_path)
  assert "\n" not in str(error.value) and f": config.json {expected}" in str(error.value)


def test_a_text_config_that_is_not_an_object_is_one_line():
  with pytest.raises(ConfigError, match=r"^config.json text_config=\[1, 2\]: expected a JSON object"):
    config_from_hf({"model_type": "gemma3", "text_config": [1, 2]})


def test_another_model_type_is_refused():
  with pytest.raises(ConfigError, match="model_type='llama'"):
    config_from_hf({"model_type": "llama", "hidden_size": 64})
