"""Checkpoint import/export: HF directories (single and sharded), GGUF files, the conversion cache, errors.

The real 270M GGUF is covered by tests/test_real_model.py; here a tiny random Gemma 3 is written as a GGUF
(quantized Q8_0 like the real file's matrices) so the whole path runs in a second.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from grow_jax import formats, tree_paths
from grow_jax.formats import gguf_import
from grow_jax.formats import hf_format
from grow_jax.formats import load_checkpoint, save_hf
from grow_jax.errors import CheckpointError
from grow_jax.model.transformer import forward as _forward
from grow_jax.model.config import get_preset
from tests.hf_reference import hf_logits, hf_state_dict, random_hf_model

TINY = get_preset("tiny")
forward = jax.jit(_forward, static_argnums=0)
REPO = pathlib.Path(__file__).resolve().parents[1]


def _tokens(shape=(2, 20), seed=0):
  return np.random.default_rng(seed).integers(3, TINY.vocab_size, size=shape).astype(np.int32)


def _leaves_equal(a, b) -> bool:
  fa, fb = tree_paths.flatten(a), tree_paths.flatten(b)
  return fa.keys() == fb.keys() and all(
      np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype and np.array_equal(np.asarray(fa[k]), np.asarray(fb[k]))
      for k in fa)


@pytest.fixture(scope="module")
def tiny():
  """(hf_model, our params) of one random tiny Gemma 3."""
  model = random_hf_model(TINY, seed=0)
  return model, hf_format.params_from_hf(TINY, hf_state_dict(model))


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
  _, params = tiny
  return save_hf(TINY, params, tmp_path_factory.mktemp("export") / "tiny-hf")


# ---- HF export / import ----------------------------------------------------------------------------------
def test_export_loads_in_transformers_with_same_logits(tiny, exported, record_property):
  _, params = tiny
  assert sorted(os.listdir(exported)) == ["config.json", "model.safetensors"]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation="eager")
  assert type(reloaded).__name__ == "Gemma3ForCausalLM" and reloaded.dtype == torch.float32
  tokens = _tokens()
  delta = float(np.abs(hf_logits(reloaded, tokens) - np.asarray(forward(TINY, params, tokens))).max())
  print(f"\n[export] transformers on our export vs ours: max|Δlogit| = {delta:.3g}")
  record_property("max_abs_delta", delta)
  assert delta <= 1e-4


def test_import_of_export_gives_identical_params_and_config(tiny, exported):
  _, params = tiny
  config, loaded = load_checkpoint(f"hf:{exported}")
  assert config == TINY
  assert _leaves_equal(loaded, params)


def test_sharded_export_round_trip(tiny, tmp_path):
  _, params = tiny
  out = save_hf(TINY, params, tmp_path / "sharded", max_shard_bytes=200_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1 and all((out / s).is_file() for s in shards)
  assert not (out / "model.safetensors").exists()
  config, loaded = load_checkpoint(f"hf:{out}")
  assert config == TINY and _leaves_equal(loaded, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  tokens = _tokens()
  assert np.abs(hf_logits(reloaded, tokens) - np.asarray(forward(TINY, params, tokens))).max() <= 1e-4


def test_bfloat16_export_keeps_dtype(tiny, tmp_path):
  _, params = tiny
  config = TINY.replace(param_dtype="bfloat16")
  params = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)
  out = save_hf(config, params, tmp_path / "bf16")
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  loaded_config, loaded = load_checkpoint(f"hf:{out}", param_dtype="bfloat16")
  assert loaded_config == config and _leaves_equal(loaded, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert reloaded.dtype == torch.bfloat16


def test_export_refuses_non_empty_dir_and_never_leaves_partial_output(tiny, tmp_path):
  _, params = tiny
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(CheckpointError, match="not empty.*overwrite=True"):
    save_hf(TINY, params, out)
  assert (out / "keep.txt").read_text() == "precious"

  class BrokenTokenizer:
    def save(self, directory):
      raise OSError("disk full")
  with pytest.raises(OSError, match="disk full"):
    save_hf(TINY, params, out, tokenizer=BrokenTokenizer(), overwrite=True)
  assert sorted(os.listdir(out)) == ["keep.txt"]          # the old content survives a failed write
  save_hf(TINY, params, out, overwrite=True)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  umask = os.umask(0)
  os.umask(umask)
  assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp files' 0600
  assert sorted(os.listdir(tmp_path)) == ["out"]            # no temporary directories left behind


def test_grown_model_exports_as_wider_standard_gemma(tiny, tmp_path):
  growth = pytest.importorskip("grow_jax.growth")
  _, params = tiny
  grown_config, grown = growth.grow_mlp(TINY, params, factor=2, layers=None)
  out = save_hf(grown_config, grown, tmp_path / "grown")
  config, _ = load_checkpoint(f"hf:{out}")
  assert config.hidden_dim == 2 * TINY.hidden_dim and not config.is_grown
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  tokens = _tokens()
  assert np.abs(hf_logits(reloaded, tokens) - np.asarray(forward(TINY, params, tokens))).max() <= 1e-4


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_multimodal_checkpoint_names_load_the_text_decoder(tiny, prefix):
  model, params = tiny
  state = {prefix + k.removeprefix("model."): v for k, v in hf_state_dict(model).items()}
  state["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((4, 3, 2, 2), np.float32)
  assert _leaves_equal(hf_format.params_from_hf(TINY, state), params)


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, message", [
    ("s3://bucket/model", "expected 'hf:<dir>', 'gguf:<file>'"),
    ("hf:", "expected 'hf:<dir>'"),
    ("gemma3-9000m", "expected 'hf:<dir>'"),
    ("hf:/nonexistent/model", "'/nonexistent/model' does not exist"),
    ("gguf:/nonexistent/model.gguf", "'/nonexistent/model.gguf' does not exist"),
    ("/nonexistent/model.safetensors", r"'params:/nonexistent/model.safetensors': file '/nonexistent/model.safetensors' "
                                       r"does not exist \(expected a grow_jax params file\)"),
])
def test_bad_sources_are_named(source, message):
  with pytest.raises(CheckpointError, match=message):
    load_checkpoint(source)


def test_hf_dir_without_config_or_weights(tmp_path):
  with pytest.raises(CheckpointError, match="has no config.json"):
    load_checkpoint(f"hf:{tmp_path}")
  (tmp_path / "config.json").write_text(json.dumps(hf_format.config_to_hf(TINY)))
  with pytest.raises(CheckpointError, match="neither model.safetensors nor model.safetensors.index.json"):
    load_checkpoint(f"hf:{tmp_path}")


def test_shape_mismatch_names_tensor_and_both_shapes(exported, tmp_path):
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "model.safetensors").symlink_to(exported / "model.safetensors")
  hf = json.loads((exported / "config.json").read_text())
  hf["intermediate_size"] = 96
  (broken / "config.json").write_text(json.dumps(hf))
  with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(128, 64\), "
                                            r"expected \(96, 64\)"):
    load_checkpoint(f"hf:{broken}")


def test_config_override_that_changes_shapes_is_refused(exported):
  with pytest.raises(CheckpointError, match=r"'embedder/input_embedding' has shape \(512, 64\), expected \(600, 64\)"):
    load_checkpoint(f"hf:{exported}", vocab_size=600)


# ---- GGUF ----------------------------------------------------------------------------------------------
def test_gguf_tensor_names_are_the_gguf_packages_gemma3_names():
  import gguf
  names = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA3]}
  ours = {n.removesuffix(".weight") for n in gguf_import.GGUF_TO_HF}
  ours |= {"blk.{bid}." + n.removesuffix(".weight") for n in gguf_import.GGUF_BLOCK_TO_HF}
  assert ours <= names, ours - names
  assert names - ours == {"output"}  # the untied head, which Gemma 3 does not have


def write_gguf(path, hf_model, config, arch="gemma3", quantize=True):
  """A llama.cpp-style GGUF of an HF Gemma 3: norms stored as 1 + w, matrices Q8_0 (as in the real file)."""
  import gguf
  Q8 = gguf.GGMLQuantizationType.Q8_0
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_vocab_size(config.vocab_size)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.embed_dim)
  writer.add_block_count(config.num_layers)
  writer.add_feed_forward_length(config.hidden_dim)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_rope_freq_base(config.global_base_frequency)
  writer.add_sliding_window(config.sliding_window)
  if config.global_scale_factor != 1.0:
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(config.global_scale_factor)
  writer.add_bos_token_id(config.bos_token_id)
  writer.add_eos_token_id(config.eos_token_id)
  writer.add_pad_token_id(config.pad_token_id)
  to_gguf = {v: k for k, v in gguf_import.GGUF_TO_HF.items()}
  for name, value in hf_state_dict(hf_model).items():
    if name.startswith("model.layers."):
      _, _, i, rest = name.split(".", 3)
      gguf_name = f"blk.{i}." + {v: k for k, v in gguf_import.GGUF_BLOCK_TO_HF.items()}[rest]
    else:
      gguf_name = to_gguf[name]
    value = value.astype(np.float32)
    if name.endswith("norm.weight"):
      writer.add_tensor(gguf_name, value + 1.0)
    elif quantize:
      writer.add_tensor(gguf_name, gguf.quants.quantize(value, Q8), raw_dtype=Q8)
    else:
      writer.add_tensor(gguf_name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
  config = TINY.replace(global_scale_factor=8.0)
  model = random_hf_model(config, seed=1)
  path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, config)
  return config, model, path


def test_gguf_import_matches_transformers_gguf_loader(tiny_gguf, tmp_path):
  """Our GGUF reader and transformers' (an independent conversion) give the same weights."""
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  config, _, path = tiny_gguf
  ours_config, ours = load_checkpoint(f"gguf:{path}", cache=tmp_path)
  # The file records neither the local RoPE base nor the 5:1 pattern; linear scaling comes from rope.scaling.
  assert ours_config == config
  with torch.device("meta"):
    skeleton = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **{k: v for k, v in hf_format.config_to_hf(config).items() if k not in ("architectures", "torch_dtype")}))
  theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
  theirs = hf_format.params_from_hf(config, {k: v.numpy() for k, v in theirs.items()})
  assert _leaves_equal(ours, theirs)


def test_gguf_import_recovers_the_written_weights(tiny_gguf, tmp_path, record_property):
  import gguf
  Q8 = gguf.GGMLQuantizationType.Q8_0
  config, model, path = tiny_gguf
  _, params = load_checkpoint(f"gguf:{path}", cache=tmp_path)
  # What the file holds: Q8_0 of each matrix (dequantized exactly as llama.cpp does), f32 (1 + w) norms.
  written = {k: (v if k.endswith("norm.weight") else gguf.quants.dequantize(gguf.quants.quantize(v, Q8), Q8))
             for k, v in hf_state_dict(model).items()}
  expected = tree_paths.flatten(hf_format.params_from_hf(config, written))
  for key, value in tree_paths.flatten(params).items():
    if key.endswith("scale"):  # (w + 1) - 1 in float32
      np.testing.assert_allclose(value, expected[key], atol=1e-6, rtol=0, err_msg=key)
    else:
      np.testing.assert_array_equal(value, expected[key], err_msg=key)
  tokens = _tokens(seed=3)
  theirs = hf_logits(model, tokens)
  delta = float(np.abs(np.asarray(forward(config, params, tokens)) - theirs).max())
  print(f"\n[gguf] tiny Q8_0 GGUF vs its f32 original: max|Δlogit| = {delta:.3g} (max|logit| "
        f"{np.abs(theirs).max():.3g})")
  record_property("max_abs_delta", delta)
  assert delta < 0.1 * np.abs(theirs).max()


def test_gguf_conversion_is_cached(tiny_gguf, tmp_path, monkeypatch):
  config, _, path = tiny_gguf
  first = load_checkpoint(f"gguf:{path}", cache=tmp_path)
  cached = list((tmp_path / "converted").glob("tiny.*.safetensors"))
  assert len(cached) == 1
  monkeypatch.setattr(gguf_import, "read_gguf", lambda *a: pytest.fail("converted again despite the cache"))
  second = load_checkpoint(f"gguf:{path}", cache=tmp_path)
  assert second[0] == first[0] and _leaves_equal(second[1], first[1])
  assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporary files left


def test_load_config_without_weights(tiny_gguf, exported, tmp_path):
  config, _, path = tiny_gguf
  assert formats.load_config(f"hf:{exported}") == TINY
  assert formats.load_config(f"gguf:{path}", cache=tmp_path) == config          # from the file's metadata
  load_checkpoint(f"gguf:{path}", cache=tmp_path)
  assert formats.load_config(f"gguf:{path}", cache=tmp_path) == config          # from the cached conversion


def test_gguf_of_another_architecture_is_refused(tiny, tmp_path):
  model, _ = tiny
  path = write_gguf(tmp_path / "llama.gguf", model, TINY, arch="llama", quantize=False)
  with pytest.raises(CheckpointError, match="general.architecture='llama', expected 'gemma3'"):
    load_checkpoint(f"gguf:{path}", use_cache=False)


def test_file_that_is_not_gguf_is_refused(tmp_path):
  path = tmp_path / "model.gguf"
  path.write_text("not a gguf file at all")
  with pytest.raises(CheckpointError, match="is not a readable GGUF file"):
    load_checkpoint(f"gguf:{path}", use_cache=False)


# ---- command line -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_convert_command(exported, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = tmp_path / "converted"
  cmd = [sys.executable, "-m", "grow_jax.convert", f"--src=hf:{exported}", f"--dst=hf:{out}", "--notokenizer"]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert _leaves_equal(load_checkpoint(f"hf:{out}")[1], load_checkpoint(f"hf:{exported}")[1])
  # A second run refuses to overwrite the now non-empty destination.
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "not empty" in result.stderr


def test_convert_with_growth_exports_the_same_function(tiny, exported, tmp_path):
  pytest.importorskip("grow_jax.growth")
  from grow_jax.convert import convert
  model, _ = tiny
  out = convert(f"hf:{exported}", f"hf:{tmp_path / 'grown'}", tokenizer=False, grow_factor=2, grow_layers="0,3")
  config, params = load_checkpoint(f"hf:{out}")
  assert config.hidden_dim == 2 * TINY.hidden_dim  # grown layers merged, the others zero-padded to that width
  tokens = _tokens()
  assert np.abs(np.asarray(forward(config, params, tokens)) - hf_logits(model, tokens)).max() <= 1e-4
  with pytest.raises(CheckpointError, match="expected 'hf:<dir>'"):
    convert(f"hf:{exported}", str(tmp_path / "plain-path"), tokenizer=False)
