"""The Hugging Face Gemma 3 format, converted once at the boundary: config.json <-> ModelConfig and
state-dict names/layouts <-> our DeepMind-named param dict.

  HF name                                       ours                              layout change
  model.embed_tokens.weight (V, D)              embedder/input_embedding (V, D)   -
  model.layers.i.self_attn.q_proj.weight        layer_i/attn/q_einsum/w           (N*H, D) -> (N, D, H)
  model.layers.i.self_attn.{k,v}_proj.weight    layer_i/attn/kv_einsum/w[0|1]     (K*H, D) -> (K, D, H)
  model.layers.i.self_attn.o_proj.weight        layer_i/attn/attn_vec_einsum/w    (D, N*H) -> (N, H, D)
  model.layers.i.self_attn.{q,k}_norm.weight    layer_i/attn/_{query,key}_norm    -
  model.layers.i.mlp.{gate,up}_proj.weight      layer_i/mlp/gating_einsum[0|1]    (F, D) as is
  model.layers.i.mlp.down_proj.weight           layer_i/mlp/linear                (D, F) -> (F, D)
  model.layers.i.input_layernorm.weight         layer_i/pre_attention_norm/scale
  model.layers.i.post_attention_layernorm       layer_i/post_attention_norm/scale
  model.layers.i.pre_feedforward_layernorm      layer_i/pre_ffw_norm/scale
  model.layers.i.post_feedforward_layernorm     layer_i/post_ffw_norm/scale
  model.norm.weight                             final_norm/scale
HF norm weights are stored the same way as ours (the norm multiplies by 1 + weight). lm_head is tied.

A standard HF checkpoint has one MLP of one width per model; grown models (several branches, per-layer
widths) are merged and zero-padded to one width before export (growth.merge_branches).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from grow_jax.model.config import GLOBAL, LOCAL, ModelConfig
from grow_jax.errors import ConfigError
from grow_jax.types import Params


_NORMS = {
    "input_layernorm": "pre_attention_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "pre_ffw_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


# ---- config ------------------------------------------------------------------------------------------
# What a Gemma 3 config.json means by a key it leaves out: transformers' Gemma3TextConfig defaults (copied from
# transformers/models/gemma3/configuration_gemma3.py; the same from 4.50 to 5.x). Released configs rely on them:
# Gemma 3 4B's text_config sets only hidden_size, intermediate_size, num_hidden_layers, sliding_window and
# rope_scaling. A config.json that names no model_type must write the architecture out (_ARCHITECTURE).
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "sliding_window_pattern": 6, "layer_types": None, "rope_parameters": None,
    "rope_scaling": None, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rms_norm_eps": 1e-6,
    "final_logit_softcapping": None, "attn_logit_softcapping": None, "max_position_embeddings": 131_072,
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
}
_ARCHITECTURE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim")
_MODEL_TYPES = ("gemma3_text", "gemma3")


def config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from an HF Gemma 3 config.json dict (text config, or a multimodal one's text_config), the keys
  it leaves out read as transformers' Gemma3TextConfig defaults. A malformed value is a ConfigError naming it."""
  if not isinstance(hf, Mapping):
    raise ConfigError(f"config.json holds {type(hf).__name__} {hf!r:.80}: expected a JSON object")
  model_type, where = hf.get("model_type"), ""
  if "text_config" in hf and "hidden_size" not in hf:          # multimodal (Gemma3ForConditionalGeneration)
    if not isinstance(hf["text_config"], Mapping):
      raise ConfigError(f"config.json text_config={hf['text_config']!r:.80}: expected a JSON object (the text "
                        "decoder's config)")
    hf, where = hf["text_config"], "text_config."
    model_type = hf.get("model_type", "gemma3_text" if model_type == "gemma3" else None)
  if model_type is None:
    missing = [k for k in _ARCHITECTURE if k not in hf]
    if missing:
      raise ConfigError(f"config.json is missing {missing} and names no model_type; expected a Gemma 3 text "
                        "config (model_type 'gemma3_text')")
  elif model_type not in _MODEL_TYPES:
    raise ConfigError(f"config.json {where}model_type={model_type!r}: expected 'gemma3_text' (Gemma 3)")
  hf = {**GEMMA3_TEXT_DEFAULTS, **hf}
  integer = lambda key: _integer(hf[key], where + key)

  local_base, global_base, global_scale = _rope(hf, where)
  attention_types = None
  if hf["layer_types"]:
    if not isinstance(hf["layer_types"], (list, tuple)):
      raise ConfigError(f"config.json {where}layer_types={hf['layer_types']!r:.80}: expected a list")
    kinds = {"full_attention": GLOBAL, "sliding_attention": LOCAL}
    unknown = sorted({str(t) for t in hf["layer_types"] if t not in kinds})
    if unknown:
      raise ConfigError(f"config.json {where}layer_types holds {unknown}: expected 'full_attention' or "
                        "'sliding_attention' per layer")
    attention_types = tuple(kinds[t] for t in hf["layer_types"])
  eos = hf["eos_token_id"]
  kwargs = dict(
      vocab_size=integer("vocab_size"), embed_dim=integer("hidden_size"), hidden_dim=integer("intermediate_size"),
      num_layers=integer("num_hidden_layers"), num_heads=integer("num_attention_heads"),
      num_kv_heads=integer("num_key_value_heads"), head_dim=integer("head_dim"),
      query_pre_attn_scalar=_number(hf["query_pre_attn_scalar"], where + "query_pre_attn_scalar"),
      sliding_window=integer("sliding_window"),
      local_base_frequency=local_base, global_base_frequency=global_base, global_scale_factor=global_scale,
      sliding_window_pattern=integer("sliding_window_pattern"), attention_types=attention_types,
      rms_norm_eps=_number(hf["rms_norm_eps"], where + "rms_norm_eps"),
      final_logit_softcap=_number(hf["final_logit_softcapping"], where + "final_logit_softcapping", optional=True),
      attn_logit_softcap=_number(hf["attn_logit_softcapping"], where + "attn_logit_softcapping", optional=True),
      max_position_embeddings=integer("max_position_embeddings"),
      bos_token_id=2 if hf["bos_token_id"] is None else integer("bos_token_id"),
      eos_token_id=_integer(eos[0] if isinstance(eos, (list, tuple)) and eos else eos, where + "eos_token_id"),
      pad_token_id=0 if hf["pad_token_id"] is None else integer("pad_token_id"),
  )
  kwargs.update(overrides)
  config = ModelConfig(**kwargs)
  if config.attention_types is not None:
    # Keep the compact form when layer_types is just the 5:1 pattern (round-trips config_to_hf exactly).
    patterned = config.replace(attention_types=None)
    if all(patterned.attention_type(i) == config.attention_types[i] for i in range(config.num_layers)):
      config = patterned
  return config


def _rope(hf: Mapping[str, Any], where: str) -> tuple[float, float, float]:
  """(local base, global base, global linear scale) as transformers' Gemma3TextConfig reads them: transformers 5's
  per-layer-kind rope_parameters, then the 4.x names (rope_scaling over the global layers' entry; rope_theta and
  rope_local_base_freq where no rope_theta is given)."""
  rope = hf["rope_parameters"]
  if rope is not None and not (isinstance(rope, Mapping) and set(rope) <= {"full_attention", "sliding_attention"}):
    raise ConfigError(f"config.json {where}rope_parameters={rope!r:.80}: expected {{'full_attention': {{...}}, "
                      "'sliding_attention': {...}}")
  sources = {}                          # layer kind -> [(dict, where)], later entries win
  for kind in ("full_attention", "sliding_attention"):
    given = (rope or {}).get(kind) or {}
    if not isinstance(given, Mapping):
      raise ConfigError(f"config.json {where}rope_parameters.{kind}={given!r:.80}: expected a JSON object")
    sources[kind] = [(given, f"{where}rope_parameters.{kind}.")]
  if hf["rope_scaling"]:
    if not isinstance(hf["rope_scaling"], Mapping):
      raise ConfigError(f"config.json {where}rope_scaling={hf['rope_scaling']!r:.80}: expected a JSON object or null")
    sources["full_attention"].append((hf["rope_scaling"], f"{where}rope_scaling."))

  def pick(kind, *keys, default):
    """(value, its key in config.json) of the last source of `kind` holding one of `keys`."""
    for given, at in reversed(sources[kind]):
      for key in keys:
        if key in given:
          return given[key], at + key
    return default

  global_base = _number(*pick("full_attention", "rope_theta", default=(hf["rope_theta"], where + "rope_theta")))
  local_base = _number(*pick("sliding_attention", "rope_theta",
                             default=(hf["rope_local_base_freq"], where + "rope_local_base_freq")))
  scale = 1.0
  for kind in ("full_attention", "sliding_attention"):
    rope_type, at = pick(kind, "rope_type", "type", default=("default", ""))
    if rope_type not in ("default", "linear"):
      raise ConfigError(f"config.json {at}={rope_type!r}: expected 'default' or 'linear' (Gemma 3)")
    if rope_type == "linear" and kind == "sliding_attention":
      raise ConfigError(f"config.json {at}='linear': Gemma 3 scales the RoPE of its global layers only")
    if rope_type == "linear":
      factor, at = pick(kind, "factor", default=(None, at.rsplit(".", 1)[0] + ".factor"))
      scale = _number(factor, at)
  return local_base, global_base, scale


def _integer(value, key: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
    raise ConfigError(f"config.json {key}={value!r:.80}: expected an integer")
  return int(value)


def _number(value, key: str, *, optional: bool = False) -> float | None:
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"config.json {key}={value!r:.80}: expected a number" + (" or null" if optional else ""))
  return float(value)


def _int_if_integral(x):
  return int(x) if float(x).is_integer() else float(x)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """HF Gemma 3 text config.json for a model with one MLP width (merge grown branches first)."""
  widths = {config.layer_mlp_width(i) for i in range(config.num_layers)}
  if len(widths) != 1:
    raise ConfigError(f"HF Gemma 3 needs one MLP width for all layers, found {sorted(widths)}: "
                      "pad with growth.merge_branches(..., uniform=True) first")
  full = {"rope_type": "default", "rope_theta": config.global_base_frequency}
  if config.global_scale_factor != 1.0:
    full = {"rope_type": "linear", "factor": config.global_scale_factor, "rope_theta": config.global_base_frequency}
  layer_types = ["full_attention" if config.attention_type(i) == GLOBAL else "sliding_attention"
                 for i in range(config.num_layers)]
  return {
      "architectures": ["Gemma3ForCausalLM"],
      "model_type": "gemma3_text",
      "vocab_size": config.vocab_size,
      "hidden_size": config.embed_dim,
      "intermediate_size": widths.pop(),
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      # transformers' Gemma3TextConfig validates this field as an int (Gemma 3 27B: 168).
      "query_pre_attn_scalar": _int_if_integral(config.query_pre_attn_scalar),
      "sliding_window": config.sliding_window,
      "layer_types": layer_types,
      "rope_parameters": {"full_attention": full,
                          "sliding_attention": {"rope_type": "default", "rope_theta": config.local_base_frequency}},
      # transformers 4.x reads these instead of rope_parameters.
      "rope_theta": config.global_base_frequency,
      "rope_local_base_freq": config.local_base_frequency,
      "rope_scaling": ({"rope_type": "linear", "factor": config.global_scale_factor}
                       if config.global_scale_factor != 1.0 else None),
      "sliding_window_pattern": config.sliding_window_pattern,
      "rms_norm_eps": config.rms_norm_eps,
      "final_logit_softcapping": config.final_logit_softcap,
      "attn_logit_softcapping": config.attn_logit_softcap,
      "hidden_activation": "gelu_pytorch_tanh",
      "max_position_embeddings": config.max_position_embeddings,
      "bos_token_id": config.bos_token_id,
      "eos_token_id": config.eos_token_id,
      "pad_token_id": config.pad_token_id,
      "tie_word_embeddings": True,
      "attention_bias": False,
      "torch_dtype": config.param_dtype,
  }


# ---- weights -----------------------------------------------------------------------------------------
def params_from_hf(config: ModelConfig, tensors: Mapping[str, Any]) -> Params:
  """Our param dict from an HF state dict (name -> array-like; numpy, safetensors slices or torch).

  Checks every tensor against the config's shapes and names the first mismatch. Tensors are read one at a
  time and cast to `config.param_dtype` as they are read, so a lazy mapping (one that reads from disk in
  `__getitem__`) keeps peak memory near the size of the result.
  """
  if config.is_grown:
    raise ConfigError("params_from_hf builds an ungrown model; the config has grown MLP branches")
  N, K, D, H, F = config.num_heads, config.num_kv_heads, config.embed_dim, config.head_dim, config.hidden_dim
  prefix = text_decoder_prefix(tensors)
  import jax.numpy as jnp  # local: keep this module importable without initialising jax
  dtype = jnp.dtype(config.param_dtype)

  def get(name, shape):
    key = prefix + name
    if key not in tensors:
      raise ConfigError(f"checkpoint is missing tensor {key!r} (expected shape {shape})")
    value = _to_numpy(tensors[key])
    if tuple(value.shape) != tuple(shape):
      raise ConfigError(f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)} "
                        "from the config")
    return value.astype(dtype, copy=False)

  params: Params = {"embedder": {"input_embedding": get("embed_tokens.weight", (config.vocab_size, D))},
                    "final_norm": {"scale": get("norm.weight", (D,))}}
  for i in range(config.num_layers):
    p = f"layers.{i}."
    layer: Params = {ours: {"scale": get(p + hf + ".weight", (D,))} for hf, ours in _NORMS.items()}
    q = get(p + "self_attn.q_proj.weight", (N * H, D)).reshape(N, H, D).transpose(0, 2, 1)
    k = get(p + "self_attn.k_proj.weight", (K * H, D)).reshape(K, H, D).transpose(0, 2, 1)
    v = get(p + "self_attn.v_proj.weight", (K * H, D)).reshape(K, H, D).transpose(0, 2, 1)
    o = get(p + "self_attn.o_proj.weight", (D, N * H)).T.reshape(N, H, D)
    layer["attn"] = {
        "q_einsum": {"w": q}, "kv_einsum": {"w": np.stack([k, v])}, "attn_vec_einsum": {"w": o},
        "_query_norm": {"scale": get(p + "self_attn.q_norm.weight", (H,))},
        "_key_norm": {"scale": get(p + "self_attn.k_norm.weight", (H,))},
    }
    gate = get(p + "mlp.gate_proj.weight", (F, D))
    up = get(p + "mlp.up_proj.weight", (F, D))
    down = get(p + "mlp.down_proj.weight", (D, F))
    layer["mlp"] = {"gating_einsum": np.stack([gate, up]), "linear": down.T}
    params[f"layer_{i}"] = layer
  return params


def params_to_hf(config: ModelConfig, params: Params) -> dict[str, np.ndarray]:
  """HF state dict (contiguous numpy arrays) from an ungrown / merged param dict."""
  if config.is_grown:
    raise ConfigError("params_to_hf needs a standard (merged) model: call growth.merge_branches first")
  N, K, D, H = config.num_heads, config.num_kv_heads, config.embed_dim, config.head_dim
  out = {"model.embed_tokens.weight": params["embedder"]["input_embedding"],
         "model.norm.weight": params["final_norm"]["scale"]}
  for i in range(config.num_layers):
    layer, p = params[f"layer_{i}"], f"model.layers.{i}."
    for hf, ours in _NORMS.items():
      out[p + hf + ".weight"] = layer[ours]["scale"]
    attn = layer["attn"]
    q, kv, o = (np.asarray(attn[n]["w"]) for n in ("q_einsum", "kv_einsum", "attn_vec_einsum"))
    out[p + "self_attn.q_proj.weight"] = q.transpose(0, 2, 1).reshape(N * H, D)
    out[p + "self_attn.k_proj.weight"] = kv[0].transpose(0, 2, 1).reshape(K * H, D)
    out[p + "self_attn.v_proj.weight"] = kv[1].transpose(0, 2, 1).reshape(K * H, D)
    out[p + "self_attn.o_proj.weight"] = o.reshape(N * H, D).T
    out[p + "self_attn.q_norm.weight"] = attn["_query_norm"]["scale"]
    out[p + "self_attn.k_norm.weight"] = attn["_key_norm"]["scale"]
    gating, linear = np.asarray(layer["mlp"]["gating_einsum"]), np.asarray(layer["mlp"]["linear"])
    out[p + "mlp.gate_proj.weight"] = gating[0]
    out[p + "mlp.up_proj.weight"] = gating[1]
    out[p + "mlp.down_proj.weight"] = linear.T
  return {k: np.ascontiguousarray(np.asarray(v)) for k, v in out.items()}


def text_decoder_prefix(names) -> str:
  """The prefix before `embed_tokens.weight` in a state dict's names.

  '' for a bare decoder, 'model.' for Gemma3ForCausalLM, 'language_model.model.' (transformers 4.x) or
  'model.language_model.' (5.x) for a multimodal Gemma 3 checkpoint, whose vision tensors are then ignored.
  """
  candidates = sorted(k[:-len("embed_tokens.weight")] for k in names if k.endswith("embed_tokens.weight"))
  if not candidates:
    return "model."  # let the caller's missing-tensor error name the full expected key
  if len(candidates) > 1:
    raise ConfigError(f"checkpoint holds several token embeddings {[c + 'embed_tokens.weight' for c in candidates]}; "
                      "expected one Gemma 3 text decoder")
  return candidates[0]


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # torch tensor
    x = x.detach().float().cpu().numpy() if str(x.dtype) == "torch.bfloat16" else x.detach().cpu().numpy()
  return np.asarray(x)


def cast_params(tree, dtype_name: str):
  """The tree's arrays as numpy arrays of dtype `dtype_name` (no copy where the dtype already matches)."""
  import jax.numpy as jnp  # local: keep this module importable without initialising jax
  dtype = jnp.dtype(dtype_name)
  if isinstance(tree, dict):
    return {k: cast_params(v, dtype_name) for k, v in tree.items()}
  return np.asarray(tree).astype(dtype, copy=False)
