"""ModelConfig + params -> a Gemma 3 GGUF file that llama.cpp-based tools load: the inverse of gguf_import.py.

`save_gguf(config, params, path, vocab=..., dtype="f32")` writes what llama.cpp's own converter
(`convert_hf_to_gguf.py`, class Gemma3Model) writes for a Gemma 3 text decoder:

  * metadata: architecture "gemma3"; `gemma3.` context_length, embedding_length, block_count,
    feed_forward_length, attention.{head_count, head_count_kv, key_length, value_length,
    layer_norm_rms_epsilon, sliding_window}, rope.freq_base (global layers), rope.scaling.{type, factor}
    when the global RoPE is linearly scaled (4B), final_logit_softcapping when set; plus rope.freq_base_swa
    (the local base, which gguf_import reads); general.file_type and quantization_version;
  * the tokenizer: the model's own vocabulary (`Vocab`: every `tokenizer.*` key of a source GGUF copied as
    stored, or `sentencepiece_vocab`), token_embd cut to the vocabulary's size as llama.cpp's converter does;
  * tensors under gguf_import's names (token_embd, blk.N.attn_q/k/v/output, attn_q_norm / attn_k_norm,
    attn_norm, post_attention_norm, ffn_norm, post_ffw_norm, ffn_gate/up/down, output_norm; no output.weight:
    the head is tied), in HF's row-major (out, in) layout (no q/k permutation for Gemma), norms stored as
    1 + w (llama.cpp folds in the 1 that Gemma's RMSNorm adds);
  * dtypes: `f32`; `f16`, `bf16`, `q8_0` (gguf.quants, bit-identical to ggml's reference quantizer) for
    the matrices, norms always f32, as llama.cpp's converter does; a matrix whose rows Q8_0's 32-wide blocks
    do not divide is written f16 (the converter's fallback).

A grown model is first merged as for the HF export (`merge_attention`, then `merge_branches(uniform=True)`):
the same function as one wider Gemma 3 MLP per layer (layers zero-padded to one feed_forward_length, which
gguf_import and transformers need) and wider heads. llama.cpp's gemma3 loader hard-codes some facts rather
than reading them (5 local : 1 global layers, local RoPE base 10k, query scale 1/sqrt(head_dim), or
(embed_dim / num_heads)**-0.5 for the 62-layer 27B; no attention-logit softcapping): a config that differs is
refused with one line naming the field, since llama.cpp would silently compute another function.

The file is written to a temporary sibling and renamed into place (files.write_with); an existing file is
refused unless `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from grow_jax import files
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.formats import gguf_import, hf_format
from grow_jax.formats.params_file import check_params
from grow_jax.model.config import ModelConfig
from grow_jax.types import Params


# --dtype names -> (tensor type name for matrices, llama.cpp general.file_type)
DTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
          "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
LLAMA_CPP_LAYERS_27B = 62   # llama.cpp's gemma3 loader: n_layer 62 is the 27B, whose queries scale by D / N

_HF_TO_GGUF = {hf: g for g, hf in gguf_import.GGUF_TO_HF.items()}
_HF_BLOCK_TO_GGUF = {hf: g for g, hf in gguf_import.GGUF_BLOCK_TO_HF.items()}


# ---- the vocabulary ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Vocab:
  """A GGUF tokenizer: `tokenizer.*` key -> (value, GGUFValueType, item type of an array or None)."""
  fields: Mapping[str, tuple[Any, int, int | None]]

  @property
  def size(self) -> int:
    return len(self.fields["tokenizer.ggml.tokens"][0])

  def token_id(self, key: str) -> int | None:
    """tokenizer.ggml.<key>_token_id, e.g. token_id('bos')."""
    value = self.fields.get(f"tokenizer.ggml.{key}_token_id")
    return None if value is None else int(value[0])


def vocab_from_gguf(path: str | os.PathLike) -> Vocab:
  """Every `tokenizer.*` key of a GGUF file, values and types as stored (strings kept as their bytes)."""
  from gguf import GGUFValueType
  reader = gguf_import.open_gguf(path)
  fields = {}
  for key, field in reader.fields.items():
    if not key.startswith("tokenizer."):
      continue
    vtype = GGUFValueType(field.types[0])
    sub = GGUFValueType(field.types[1]) if vtype == GGUFValueType.ARRAY else None
    if sub == GGUFValueType.STRING:
      value = [bytes(field.parts[i]) for i in field.data]
    elif vtype == GGUFValueType.STRING:
      value = bytes(field.parts[field.data[0]])
    else:
      value = field.contents()
    fields[key] = (value, vtype, sub)
  if "tokenizer.ggml.tokens" not in fields:
    raise CheckpointError(f"{os.fspath(path)!r} holds no tokenizer (metadata key 'tokenizer.ggml.tokens'); "
                          "expected a GGUF with the model's vocabulary")
  return Vocab(fields)


def sentencepiece_vocab(tokens: Sequence[str], *, scores: Sequence[float] | None = None,
                        token_types: Sequence[int] | None = None, bos_id: int = 2, eos_id: int = 1,
                        unk_id: int = 3, pad_id: int = 0, add_bos: bool = True) -> Vocab:
  """A Gemma-style sentencepiece ('llama') vocabulary as llama.cpp's converter writes it: tokens in id order,
  scores (default 0), token types (gguf.TokenType; default NORMAL, the special ids CONTROL / UNKNOWN)."""
  from gguf import GGUFValueType as T
  from gguf import TokenType
  n = len(tokens)
  if token_types is None:
    token_types = [TokenType.NORMAL] * n
    for i in (bos_id, eos_id, pad_id):
      token_types[i] = TokenType.CONTROL
    token_types[unk_id] = TokenType.UNKNOWN
  scores = [0.0] * n if scores is None else scores
  if not len(scores) == len(token_types) == n:
    raise ConfigError(f"sentencepiece_vocab: {n} tokens, {len(scores)} scores, {len(token_types)} token types; "
                      "expected one of each per token")
  for name, i in (("bos_id", bos_id), ("eos_id", eos_id), ("unk_id", unk_id), ("pad_id", pad_id)):
    if not 0 <= i < n:
      raise ConfigError(f"sentencepiece_vocab: {name}={i} outside the {n} tokens")
  u32 = lambda v: (int(v), T.UINT32, None)
  boolean = lambda v: (bool(v), T.BOOL, None)
  return Vocab({
      "tokenizer.ggml.model": ("llama", T.STRING, None),
      "tokenizer.ggml.pre": ("default", T.STRING, None),
      "tokenizer.ggml.tokens": ([t.encode("utf-8") for t in tokens], T.ARRAY, T.STRING),
      "tokenizer.ggml.scores": ([float(s) for s in scores], T.ARRAY, T.FLOAT32),
      "tokenizer.ggml.token_type": ([int(t) for t in token_types], T.ARRAY, T.INT32),
      "tokenizer.ggml.bos_token_id": u32(bos_id), "tokenizer.ggml.eos_token_id": u32(eos_id),
      "tokenizer.ggml.unknown_token_id": u32(unk_id), "tokenizer.ggml.padding_token_id": u32(pad_id),
      "tokenizer.ggml.add_bos_token": boolean(add_bos), "tokenizer.ggml.add_sep_token": boolean(False),
      "tokenizer.ggml.add_eos_token": boolean(False), "tokenizer.ggml.add_space_prefix": boolean(False),
  })


# ---- the model -----------------------------------------------------------------------------------------
def standard_model(config: ModelConfig, params: Params) -> tuple[ModelConfig, Params]:
  """A grown model as one plain Gemma 3 (head branches folded into wider heads, MLP branches concatenated,
  layers zero-padded to one width): what HF and GGUF files hold. An ungrown model is returned as is."""
  if config.attn_grown:
    from grow_jax.growth.attention import merge_attention
    config, params = merge_attention(config, params)
  if config.is_grown or config.mlp_branches is not None:
    from grow_jax.growth import operators as growth
    config, params = growth.merge_branches(config, params, uniform=True)
  return config, params


def check_exportable(config: ModelConfig) -> None:
  """Refuses (ConfigError, one line) a standard config that llama.cpp's gemma3 loader would run differently."""
  pattern = gguf_import.SLIDING_WINDOW_PATTERN
  types = [config.attention_type(i) for i in range(config.num_layers)]
  expected = ["global" if (i + 1) % pattern == 0 else "local" for i in range(config.num_layers)]
  if types != expected:
    raise ConfigError(f"GGUF export: attention layer types {types} differ from llama.cpp's fixed Gemma 3 pattern "
                      f"({pattern - 1} local : 1 global); expected {expected}")
  if config.local_base_frequency != gguf_import.LOCAL_ROPE_BASE:
    raise ConfigError(f"GGUF export: local_base_frequency={config.local_base_frequency}; llama.cpp's gemma3 "
                      f"loader fixes it at {gguf_import.LOCAL_ROPE_BASE}")
  scalar = (config.embed_dim / config.num_heads if config.num_layers == LLAMA_CPP_LAYERS_27B
            else float(config.head_dim))
  if float(config.query_pre_attn_scalar) != scalar:
    raise ConfigError(f"GGUF export: query_pre_attn_scalar={config.query_pre_attn_scalar}; llama.cpp's gemma3 "
                      f"loader derives {scalar:g} from this shape (head_dim={config.head_dim}, "
                      f"num_layers={config.num_layers}, embed_dim / num_heads={config.embed_dim / config.num_heads:g})")
  if config.attn_logit_softcap:
    raise ConfigError(f"GGUF export: attn_logit_softcap={config.attn_logit_softcap}; Gemma 3 (and llama.cpp's "
                      "gemma3 graph) has no attention-logit softcapping")


def gguf_tensors(config: ModelConfig, params: Params) -> dict[str, np.ndarray]:
  """GGUF name -> float32 array in HF's (out, in) layout, norms shifted to 1 + w, for a standard config."""
  out = {}
  for hf_name, value in hf_format.params_to_hf(config, params).items():
    if hf_name in _HF_TO_GGUF:
      name = _HF_TO_GGUF[hf_name]
    else:
      _, _, index, rest = hf_name.split(".", 3)
      name = f"blk.{index}.{_HF_BLOCK_TO_GGUF[rest]}"
    value = np.asarray(value, dtype=np.float32)
    out[name] = value + np.float32(1.0) if name.endswith("norm.weight") else value
  return out


def _encode(name: str, value: np.ndarray, dtype: str):
  """(array, raw GGML type or None) for the writer: 1-D tensors stay f32; matrices take `dtype`."""
  from gguf import GGMLQuantizationType, QuantError
  from gguf.quants import quantize
  if value.ndim == 1 or dtype == "f32":
    return value, None
  if dtype == "q8_0":
    try:
      return quantize(value, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    except QuantError as e:
      logging.warning("GGUF export: %s written as f16, not Q8_0: %s", name, e)
      dtype = "f16"
  if dtype == "f16":
    largest = float(np.max(np.abs(value))) if value.size else 0.0
    if not largest <= float(np.finfo(np.float16).max):
      raise ConfigError(f"GGUF export: tensor {name!r} has |value| up to {largest:g}, beyond float16's "
                        f"{float(np.finfo(np.float16).max):g}; choose dtype bf16 or f32")
    return value.astype(np.float16), None
  return quantize(value, GGMLQuantizationType.BF16), GGMLQuantizationType.BF16


def _check_dtype(dtype: str) -> str:
  key = str(dtype).lower()
  if key not in DTYPES:
    raise ConfigError(f"GGUF export dtype={dtype!r}: expected one of {sorted(DTYPES)}")
  return key


def save_gguf(config: ModelConfig, params: Params, path: str | os.PathLike, *, vocab: Vocab, dtype: str = "f32",
              overwrite: bool = False, name: str | None = None) -> pathlib.Path:
  """Writes a Gemma 3 GGUF file (see the module docstring) and returns its path.

  `vocab` is the model's tokenizer (`vocab_from_gguf(source)`); its special-token ids must be the config's.
  Everything is checked before a byte is written; an existing `path` is refused unless `overwrite=True`.
  """
  import gguf
  dtype = _check_dtype(dtype)
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    raise CheckpointError(f"GGUF export: {str(path)!r} is a directory; expected a file path")
  if path.exists() and not overwrite:
    raise CheckpointError(f"GGUF export: {str(path)!r} exists; pass overwrite=True (--overwrite) to replace it")
  config, params = standard_model(config, params)
  check_params(config, params, what="save_gguf")
  check_exportable(config)
  for key, ours in (("bos", config.bos_token_id), ("eos", config.eos_token_id), ("padding", config.pad_token_id)):
    theirs = vocab.token_id(key)
    if theirs is not None and theirs != ours:
      raise ConfigError(f"GGUF export: the vocabulary's {key} token id is {theirs}, the model's {ours}; "
                        "expected the model's own tokenizer")
  if vocab.size > config.vocab_size:
    raise ConfigError(f"GGUF export: the vocabulary has {vocab.size} tokens, the model's embedding "
                      f"{config.vocab_size} rows; expected at most as many tokens as rows")
  tensors = gguf_tensors(config, params)
  tensors["token_embd.weight"] = tensors["token_embd.weight"][:vocab.size]   # rows no token reaches
  files.check_writable(path.parent, "GGUF export directory")
  tensor_type, file_type = DTYPES[dtype]

  def write(tmp: pathlib.Path) -> None:
    w = gguf.GGUFWriter(str(tmp), gguf_import.ARCHITECTURE)
    w.add_type("model")
    if name:
      w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.embed_dim)
    w.add_block_count(config.num_layers)
    w.add_feed_forward_length(config.hidden_dim)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(config.global_base_frequency)
    w.add_float32(f"{gguf_import.ARCHITECTURE}.rope.freq_base_swa", config.local_base_frequency)  # newer key
    if config.global_scale_factor != 1.0:
      w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
      w.add_rope_scaling_factor(config.global_scale_factor)
    w.add_sliding_window(config.sliding_window)
    if config.final_logit_softcap:
      w.add_final_logit_softcapping(config.final_logit_softcap)
    w.add_file_type(int(gguf.LlamaFileType[file_type]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, (value, vtype, sub) in vocab.fields.items():
      w.add_key_value(key, value, gguf.GGUFValueType(vtype), None if sub is None else gguf.GGUFValueType(sub))
    for tensor_name, value in tensors.items():
      data, raw = _encode(tensor_name, value, dtype)
      w.add_tensor(tensor_name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

  logging.info("writing GGUF %s (%s, %d tensors, %d tokens)", path, tensor_type, len(tensors), vocab.size)
  files.write_with(path, write)
  return path


__all__ = ["DTYPES", "Vocab", "check_exportable", "gguf_tensors", "save_gguf", "sentencepiece_vocab",
           "standard_model", "vocab_from_gguf"]
