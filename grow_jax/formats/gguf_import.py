"""Gemma 3 GGUF files (llama.cpp) -> ModelConfig + params: read metadata, dequantize, rename, unshift norms.

The file's tensors are renamed to Hugging Face names and handed to `hf_format.params_from_hf`, so there is
one place that knows our layout. What differs from HF:

  * names: `token_embd.weight`, `blk.N.attn_q.weight`, ... (table `GGUF_TO_HF`, checked in the tests against
    the gguf package's own tensor-name table for MODEL_ARCH.GEMMA3);
  * norm weights (every `*norm.weight`, q/k norms included) are stored as (1 + w): llama.cpp's converter adds
    the 1 that Gemma's RMSNorm applies, so we subtract it;
  * quantized tensors (Q4_K, Q5_0, Q6_K, Q8_0, ...) are dequantized to float32 by `gguf.quants.dequantize`,
    exactly as llama.cpp does; the row-major layout (out, in) equals HF's, no permutation is needed;
  * the metadata does not record Gemma 3's local RoPE base (10k), the 5 local : 1 global layer pattern, or the
    query scaling: those come from the known Gemma 3 architecture unless the file has the newer keys
    (`rope.freq_base_swa`, `attention.sliding_window_pattern`, `attention.scale`).
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from grow_jax.formats import hf_format
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.model.config import GLOBAL, LOCAL, ModelConfig
from grow_jax.types import Params


ARCHITECTURE = "gemma3"

# Gemma 3 facts that GGUF metadata leaves out (llama.cpp hard-codes the same values in src/llama-model.cpp).
LOCAL_ROPE_BASE = 10_000.0
SLIDING_WINDOW_PATTERN = 6
# Gemma 3 27B scales queries by (embed_dim / num_heads)**-0.5 instead of head_dim**-0.5.
_QUERY_SCALAR_BY_MODEL_DIM = {5376: 5376 // 32}

GGUF_TO_HF: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}
# blk.{i}.<gguf> -> model.layers.{i}.<hf>
GGUF_BLOCK_TO_HF: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}


def open_gguf(path: str | os.PathLike):
  """A gguf.GGUFReader over the file (memory-mapped; ~10-20 s for the 270M, mostly its 262k vocab strings).

  The last file opened is kept open, so building the weights and the tokenizer of one file parses it once.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"GGUF file {str(path)!r} does not exist")
  st = path.stat()
  return _open_gguf(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _open_gguf(path: str, size: int, mtime_ns: int):
  del size, mtime_ns  # cache key only: a rewritten file is opened again
  import gguf
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError/struct errors for a file that is not GGUF
    raise CheckpointError(f"{path!r} is not a readable GGUF file: {e}") from e


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
  """(config, float32 params) from a Gemma 3 GGUF file (about 30 s and 3 GiB of RAM for the 270M)."""
  reader = open_gguf(path)
  config = config_from_gguf(reader, path)
  tensors = hf_tensors_from_gguf(reader, config, path)
  try:
    params = hf_format.params_from_hf(config, tensors)
  except ConfigError as e:
    raise CheckpointError(f"{str(path)!r}: {e}") from None
  return config, params


def metadata(reader) -> dict[str, Any]:
  """Every key/value of the file except the (large) tokenizer arrays."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
      continue
    out[key] = field.contents()
  return out


def config_from_gguf(reader, path: str | os.PathLike = "<gguf>") -> ModelConfig:
  """ModelConfig from the file's metadata and its token-embedding shape, filling Gemma 3's unrecorded facts."""
  meta = metadata(reader)
  arch = meta.get("general.architecture")
  if arch != ARCHITECTURE:
    raise CheckpointError(f"{str(path)!r}: general.architecture={arch!r}, expected {ARCHITECTURE!r} (Gemma 3)")

  def get(key: str, default: Any = KeyError):
    full = f"{arch}.{key}"
    if full in meta:
      return meta[full]
    if default is KeyError:
      raise CheckpointError(f"{str(path)!r}: metadata key {full!r} is missing; expected it in a Gemma 3 GGUF")
    return default

  embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  if embed is None:
    raise CheckpointError(f"{str(path)!r}: tensor 'token_embd.weight' is missing")
  vocab_size = int(embed.shape[-1])  # GGUF shapes list the fastest-varying dimension first: (D, V)
  embed_dim = int(get("embedding_length"))
  num_heads = int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", embed_dim // num_heads))
  hidden = get("feed_forward_length")
  if isinstance(hidden, list):
    if len(set(hidden)) != 1:
      raise CheckpointError(f"{str(path)!r}: per-layer feed_forward_length {hidden}; expected one width")
    hidden = hidden[0]
  num_layers = int(get("block_count"))

  scale = get("attention.scale", None)
  if scale:
    query_pre_attn_scalar = float(scale) ** -2
  else:
    query_pre_attn_scalar = float(_QUERY_SCALAR_BY_MODEL_DIM.get(embed_dim, head_dim))

  global_scale = 1.0
  if get("rope.scaling.type", "none") == "linear":
    global_scale = float(get("rope.scaling.factor"))

  pattern, attention_types = SLIDING_WINDOW_PATTERN, None
  swa = get("attention.sliding_window_pattern", None)
  if isinstance(swa, list):  # per-layer flags, True = sliding-window layer
    attention_types = tuple(LOCAL if flag else GLOBAL for flag in swa)
  elif swa:
    pattern = int(swa)

  def softcap(key):
    value = get(key, None)
    return float(value) if value else None

  try:
    return ModelConfig(
        vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=int(hidden), num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=int(get("attention.head_count_kv", num_heads)), head_dim=head_dim,
        query_pre_attn_scalar=query_pre_attn_scalar,
        sliding_window=int(get("attention.sliding_window")),
        local_base_frequency=float(get("rope.freq_base_swa", LOCAL_ROPE_BASE)),
        global_base_frequency=float(get("rope.freq_base", 1_000_000.0)),
        global_scale_factor=global_scale, sliding_window_pattern=pattern, attention_types=attention_types,
        # The file stores float32 1e-6 (9.99999997e-07): take the float32's shortest decimal form.
        rms_norm_eps=float(str(np.float32(get("attention.layer_norm_rms_epsilon", 1e-6)))),
        final_logit_softcap=softcap("final_logit_softcapping"),
        attn_logit_softcap=softcap("attn_logit_softcapping"),
        max_position_embeddings=int(get("context_length", 32_768)),
        bos_token_id=int(meta.get("tokenizer.ggml.bos_token_id", 2)),
        eos_token_id=int(meta.get("tokenizer.ggml.eos_token_id", 1)),
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)),
    )
  except ConfigError as e:
    raise CheckpointError(f"{str(path)!r}: metadata gives an unusable config: {e}") from None


def hf_name(gguf_name: str) -> str | None:
  """The HF state-dict name of a GGUF tensor name, or None if it is not a Gemma 3 decoder tensor."""
  if gguf_name in GGUF_TO_HF:
    return GGUF_TO_HF[gguf_name]
  parts = gguf_name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in GGUF_BLOCK_TO_HF:
    return f"model.layers.{int(parts[1])}.{GGUF_BLOCK_TO_HF[parts[2]]}"
  return None


def hf_tensors_from_gguf(reader, config: ModelConfig, path: str | os.PathLike = "<gguf>") -> dict[str, np.ndarray]:
  """HF-named float32 tensors: dequantized, norms unshifted (w_file - 1)."""
  from gguf.quants import dequantize
  tensors: dict[str, np.ndarray] = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name)
    if name is None:
      if tensor.name == "output.weight":
        raise CheckpointError(f"{str(path)!r} has an untied output head 'output.weight'; Gemma 3 ties it to "
                              "token_embd.weight and grow_jax expects that")
      raise CheckpointError(f"{str(path)!r}: unexpected tensor {tensor.name!r} for a Gemma 3 decoder "
                            f"(known: {sorted(GGUF_TO_HF)} and blk.N.{{{', '.join(sorted(GGUF_BLOCK_TO_HF))}}})")
    try:
      value = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
      raise CheckpointError(f"{str(path)!r}: tensor {tensor.name!r} has quantization {tensor.tensor_type.name}, "
                            f"which gguf {_gguf_version()} cannot dequantize: {e}") from e
    # Logical shape: GGUF lists dimensions fastest-first, numpy wants them slowest-first.
    value = np.asarray(value, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))
    if name.endswith("norm.weight"):
      value = value - 1.0
    tensors[name] = value
  return tensors


def _gguf_version() -> str:
  try:
    from importlib.metadata import version
    return version("gguf")
  except Exception:
    return "(unknown version)"


# ---- the tokenizer ---------------------------------------------------------------------------------------
# llama.cpp token types (gguf.TokenType): CONTROL tokens are special (<bos>, <start_of_turn>, ...),
# USER_DEFINED ones are matched whole in text but are not special.
_CONTROL, _USER_DEFINED = 3, 4
GEMMA_SPECIAL_TOKENS = ("<unk>", "<bos>", "<eos>", "<pad>", "<mask>")


def _string_array(reader, key: str, path) -> list[str]:
  field = reader.fields.get(key)
  if field is None:
    raise CheckpointError(f"{str(path)!r}: metadata key {key!r} is missing; expected a tokenizer in the GGUF")
  return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def tokenizer_from_gguf(reader, path: str | os.PathLike = "<gguf>"):
  """The Gemma tokenizer a GGUF file describes, as a `tokenizers.Tokenizer`, built without torch.

  The same tokenizer transformers builds from a GGUF (`AutoTokenizer.from_pretrained(..., gguf_file=...)`,
  whose file reader needs torch): its tokenizer.json is identical, tested token for token. A sentencepiece
  BPE with byte fallback whose merges are not stored in the file: they are rebuilt from the vocabulary,
  best-first in the order the tokens appear (Gemma's scores do not follow its merge order), as transformers'
  `gguf_tokenizer_mapping.gemma_tokenizer` does. Tokens made only of spaces are stored with real spaces and
  looked up as '▁' runs, so they are respelled first. CONTROL tokens become special added tokens,
  USER_DEFINED ones plain added tokens.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
  from tokenizers.models import BPE
  meta = metadata(reader)
  arch, model = meta.get("general.architecture"), meta.get("tokenizer.ggml.model")
  if arch != ARCHITECTURE or model != "llama":
    raise CheckpointError(f"{str(path)!r}: general.architecture={arch!r}, tokenizer.ggml.model={model!r}; "
                          f"expected {ARCHITECTURE!r} with a sentencepiece ('llama') vocabulary")
  stored = _string_array(reader, "tokenizer.ggml.tokens", path)
  type_field = reader.fields.get("tokenizer.ggml.token_type")
  types = [int(type_field.parts[i][0]) for i in type_field.data] if type_field is not None else [1] * len(stored)
  tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in stored]
  vocab = {t: i for i, t in enumerate(tokens)}
  rank = {t: -i for i, t in enumerate(tokens)}
  merges = []
  for token, score in rank.items():
    pairs = [(token[:k], token[k:], score) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
    merges.extend(sorted(pairs, key=lambda m: (vocab[m[0]], vocab[m[1]])))
  merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
  missing = [t for t in GEMMA_SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise CheckpointError(f"{str(path)!r}: the vocabulary lacks {missing}; expected a Gemma vocabulary")
  tk = Tokenizer(BPE(vocab=vocab, merges=[(a, b) for a, b, _ in merges], fuse_unk=True, unk_token="<unk>",
                     dropout=None, byte_fallback=True))
  tk.normalizer = normalizers.Replace(" ", "\u2581")
  tk.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
  tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
  tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in GEMMA_SPECIAL_TOKENS])
  tk.add_special_tokens([AddedToken(t, normalized=False, special=True)
                         for t, kind in zip(stored, types) if kind == _CONTROL])
  tk.add_tokens([AddedToken(t, normalized=False, special=False)
                 for t, kind in zip(stored, types) if kind == _USER_DEFINED and t in vocab])
  bos = vocab["<bos>"]
  tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos>:1 $B:1",
                                                    special_tokens=[("<bos>", bos)])
  return tk
