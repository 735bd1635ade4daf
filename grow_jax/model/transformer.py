"""Gemma 3 text decoder in Flax linen, with MLP branches for growth and an explicit KV cache.

Shapes use einsum letters: B batch, T query length, S key length, D model, F MLP hidden, N query heads,
K kv heads, G = N/K queries per kv head, H head dim, V vocab.

The computation follows Hugging Face `Gemma3ForCausalLM` (see tests/test_parity.py):
  x = embed(tokens) * sqrt(D)
  per layer: x += post_attn_norm(attn(pre_attn_norm(x)));  x += post_ffw_norm(mlp(pre_ffw_norm(x)))
  logits = final_norm(x) @ embed^T
Attention: q/k RMSNorm per head, RoPE (local layers base 10k with a sliding window; global layers base 1M,
optionally linearly scaled), grouped-query attention, scaling query_pre_attn_scalar**-0.5.
MLP: GeGLU with tanh-gelu, one branch per entry of `config.layer_mlp_branches(i)`, branch outputs summed
in order ((b0 + b1) + b2) + ... — this is what makes growth bit-exact (see growth/operators.py); task branches
(growth/tasks.py) newest first, ((b0 + b_m) + b_(m-1)) + ..., which keeps each task's growth bit-exact. Attention
likewise: one head branch per entry of `config.layer_attn_branches(i)` (grown heads), outputs summed in order.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from grow_jax import tree_paths
from grow_jax.model.config import GLOBAL, REMAT_NAMES, ModelConfig, param_shapes
from grow_jax.types import Params

Cache = dict[str, Any]

# Masked logits get this value rather than -inf so fully masked rows (padding queries) stay finite.
_MASK_VALUE = -2.3819763e38


def _dtype(name: str):
  return jnp.dtype(name)


class RMSNorm(nn.Module):
  """x / rms(x) * (1 + scale), computed in float32 like Gemma."""

  eps: float = 1e-6
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],), _dtype(self.param_dtype))
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class Einsum(nn.Module):
  """A weight `w` of a given shape applied with an einsum equation."""

  shape: tuple[int, ...]
  param_dtype: str = "float32"
  init_fn: Any = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, equation: str, x):
    w = self.param("w", self.init_fn, self.shape, _dtype(self.param_dtype))
    return jnp.einsum(equation, x, w.astype(x.dtype))


def rope_frequencies(head_dim: int, base_frequency: float, scale_factor: float = 1.0):
  """(H/2,) float32 inverse frequencies of the rotary embedding (linear scaling divides them)."""
  fraction = 2 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
  return 1.0 / (base_frequency ** fraction) / scale_factor


def apply_rope(x, positions, inv_freq):
  """Rotary embedding on the last axis of x (B, T, heads, H), halves convention (as HF and DeepMind);
  inv_freq (H/2,) from `rope_frequencies`."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq          # (B, T, H/2)
  angles = angles[..., None, :]                                         # (B, T, 1, H/2)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return out.astype(x.dtype)


class LayerKind(NamedTuple):
  """A layer's attention type as arrays, so that local and global layers share one scanned body:
  inv_freq (H/2,) float32 RoPE frequencies (`rope_frequencies`), local () bool: the sliding window is on."""
  inv_freq: Any
  local: Any


def layer_rope(config: ModelConfig, layer: int) -> tuple[float, float]:
  """(RoPE base frequency, linear scale factor) of a layer: local 10k unscaled, global 1M scaled."""
  if config.attention_type(layer) == GLOBAL:
    return config.global_base_frequency, config.global_scale_factor
  return config.local_base_frequency, 1.0


class HeadBranch(nn.Module):
  """A grown attention-head branch's own weights (leaves at attn/grown_j/): q_einsum, attn_vec_einsum, and
  kv_einsum when it has kv heads of its own (num_kv_heads > 0; 0 = its queries read branch 0's kv heads)."""

  config: ModelConfig
  num_heads: int
  num_kv_heads: int

  def setup(self):
    cfg, pd = self.config, self.config.param_dtype
    D, H = cfg.embed_dim, cfg.head_dim
    self.q_einsum = Einsum((self.num_heads, D, H), pd)
    if self.num_kv_heads:
      self.kv_einsum = Einsum((2, self.num_kv_heads, D, H), pd)
    self.attn_vec_einsum = Einsum((self.num_heads, H, D), pd)


def attend(q, k, v, mask, softcap=None):
  """Grouped-query attention of q (B, T, N, H) over k, v (B, S, K, H): query head n reads kv head n // (N/K).
  mask (B, T, S) bool. Returns (B, T, N, H)."""
  B, T, N, H = q.shape
  K = k.shape[2]
  qg = q.reshape(B, T, K, N // K, H)
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k).astype(jnp.float32)
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(B, T, N, H)


class Attention(nn.Module):
  """Branch 0 (the original heads, leaves at attn/) plus grown head branches (attn/grown_j/, one entry of
  `config.layer_attn_branches(i)` each): every branch attends on its own and the branch outputs are summed
  in order ((o0 + o1) + o2) + ..., as the MLP branches are. The branches share the q/k norm scales."""

  config: ModelConfig
  layer: int

  @nn.compact
  def __call__(self, x, positions, mask, query_index, key_index, cache: Cache | None,
               kind: LayerKind | None = None):
    """kind: the attention type as arrays (the scanned forward); None = this layer's own, static."""
    cfg = self.config
    N, K, D, H = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim
    pd = cfg.param_dtype
    query_norm = RMSNorm(cfg.rms_norm_eps, pd, name="_query_norm")
    key_norm = RMSNorm(cfg.rms_norm_eps, pd, name="_key_norm")
    if kind is None:
      inv_freq = rope_frequencies(H, *layer_rope(cfg, self.layer))
      local = cfg.attention_type(self.layer) != GLOBAL
    else:
      inv_freq, local = kind

    def queries(q_einsum):
      q = checkpoint_name(q_einsum("BTD,NDH->BTNH", x), "query_proj")
      q = apply_rope(query_norm(q), positions, inv_freq)
      return q * jnp.asarray(cfg.query_pre_attn_scalar ** -0.5, q.dtype)

    new_cache = None if cache is None else {"index": cache["index"] + x.shape[1]}

    def keys_values(kv_einsum, suffix=""):
      k, v = kv_einsum("BSD,CKDH->CBSKH", x)
      k, v = checkpoint_name(k, "key_proj"), checkpoint_name(v, "value_proj")
      k = apply_rope(key_norm(k), positions, inv_freq)
      if cache is None:
        return k, v
      # Write this call's keys/values at [index, index + T) of the preallocated cache.
      start = cache["index"]
      ck, cv = cache["k" + suffix], cache["v" + suffix]
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
      new_cache["k" + suffix], new_cache["v" + suffix] = k, v
      return k.astype(x.dtype), v.astype(x.dtype)

    if local is not False:
      # Sliding window on sequence indices (as transformers does): key s visible from query t if t - s < W.
      window = (query_index[:, :, None] - key_index[None, None, :]) < cfg.sliding_window
      if local is not True:        # a traced flag (scanned layers): the window applies where it is set
        window = jnp.logical_or(window, jnp.logical_not(local))
      mask = jnp.logical_and(mask, window)

    def project_out(attn_vec_einsum, encoded):
      encoded = checkpoint_name(encoded, "context")
      return checkpoint_name(attn_vec_einsum("BTNH,NHD->BTD", encoded), "out_proj")

    q = queries(Einsum((N, D, H), pd, name="q_einsum"))
    k, v = keys_values(Einsum((2, K, D, H), pd, name="kv_einsum"))
    encoded = attend(q, k, v, mask, cfg.attn_logit_softcap)
    out = project_out(Einsum((N, H, D), pd, name="attn_vec_einsum"), encoded)
    for j, (n_j, k_j) in enumerate(cfg.layer_attn_branches(self.layer)[1:], start=1):
      branch = HeadBranch(cfg, n_j, k_j, name=f"grown_{j}")
      kj, vj = keys_values(branch.kv_einsum, f"_{j}") if k_j else (k, v)
      encoded = attend(queries(branch.q_einsum), kj, vj, mask, cfg.attn_logit_softcap)
      out = out + project_out(branch.attn_vec_einsum, encoded)
    return out, new_cache


class MLPBranch(nn.Module):
  """One GeGLU branch: (gelu_tanh(x Wg) * (x Wu)) Wd with gating_einsum = stack(Wg^T, Wu^T): (2, F, D)."""

  features: int
  hidden: int
  param_dtype: str = "float32"

  def setup(self):
    init = nn.initializers.normal(stddev=0.02)
    self.gating_einsum = self.param("gating_einsum", init, (2, self.hidden, self.features),
                                    _dtype(self.param_dtype))
    self.linear = self.param("linear", init, (self.hidden, self.features), _dtype(self.param_dtype))

  def __call__(self, x):
    return mlp_branch(x, self.gating_einsum, self.linear)


def mlp_branch(x, gating_einsum, linear):
  """The GeGLU computation of one branch on raw weights (also used by analysis code)."""
  _, F, D = gating_einsum.shape
  # One matmul with both halves (a free reshape): slicing gating[0] and gating[1] made XLA copy them
  # on every call, i.e. on every step of the decode loop.
  gating = gating_einsum.astype(x.dtype).reshape(2 * F, D)
  gate, up = jnp.split(checkpoint_name(jnp.einsum("BTD,FD->BTF", x, gating), "mlpwi"), 2, axis=-1)
  hidden = jax.nn.gelu(gate, approximate=True) * up
  return checkpoint_name(jnp.einsum("BTF,FD->BTD", hidden, linear.astype(x.dtype)), "mlpwo")


class MLP(nn.Module):
  """The layer's MLP: branch 0 (the original, leaves at mlp/) plus grown branches (leaves at mlp/grown_j/)."""

  config: ModelConfig
  layer: int

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    widths = cfg.layer_mlp_branches(self.layer)
    init = nn.initializers.normal(stddev=0.02)
    pdt = _dtype(cfg.param_dtype)
    gating = self.param("gating_einsum", init, (2, widths[0], cfg.embed_dim), pdt)
    linear = self.param("linear", init, (widths[0], cfg.embed_dim), pdt)
    out = mlp_branch(x, gating, linear)
    for j in cfg.layer_mlp_sum_order(self.layer):
      out = out + MLPBranch(cfg.embed_dim, widths[j], cfg.param_dtype, name=f"grown_{j}")(x)
    return out


class Block(nn.Module):
  config: ModelConfig
  layer: int

  @nn.compact
  def __call__(self, x, positions, mask, query_index, key_index, cache, kind: LayerKind | None = None):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name=name)
    h = norm("pre_attention_norm")(x)
    h, new_cache = Attention(cfg, self.layer, name="attn")(h, positions, mask, query_index, key_index, cache,
                                                          kind)
    x = x + norm("post_attention_norm")(h)
    h = norm("pre_ffw_norm")(x)
    h = MLP(cfg, self.layer, name="mlp")(h)
    x = x + norm("post_ffw_norm")(h)
    return x, new_cache


class Embedder(nn.Module):
  vocab_size: int
  embed_dim: int
  param_dtype: str = "float32"

  def setup(self):
    self.input_embedding = self.param("input_embedding", nn.initializers.normal(stddev=1.0),
                                      (self.vocab_size, self.embed_dim), _dtype(self.param_dtype))

  def encode(self, tokens, dtype):
    x = jnp.take(self.input_embedding, tokens, axis=0).astype(dtype)
    return x * jnp.asarray(self.embed_dim ** 0.5, dtype)


def unembed(embedding, hidden, softcap: float | None = None):
  """Logits (..., V) float32 from final-norm hidden states (..., D) and the tied embedding (V, D), soft-capped
  as Gemma does (tanh(x / cap) * cap). The one place the output head is computed: the forward pass, the
  training loss and the evaluators all call it."""
  logits = jnp.einsum("...D,VD->...V", hidden, embedding.astype(hidden.dtype)).astype(jnp.float32)
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  return logits


class Transformer(nn.Module):
  """Gemma 3 decoder. `__call__` returns (logits, new_cache)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions, mask, query_index, key_index, cache: Cache | None = None,
               return_hidden: bool = False):
    cfg = self.config
    dtype = _dtype(cfg.dtype)
    embedder = Embedder(cfg.vocab_size, cfg.embed_dim, cfg.param_dtype, name="embedder")
    x = embedder.encode(tokens, dtype)
    new_cache = {} if cache is not None else None
    for i in range(cfg.num_layers):
      name = f"layer_{i}"
      layer_cache = None if cache is None else cache[name]
      x, c = Block(cfg, i, name=name)(x, positions, mask, query_index, key_index, layer_cache)
      if cache is not None:
        new_cache[name] = c
    x = RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name="final_norm")(x)
    if return_hidden:
      return x, new_cache
    return unembed(embedder.input_embedding, x, cfg.final_logit_softcap), new_cache


# ---- rematerialised and scanned layers (the cache-free forward) --------------------------------------
_QKV = ("query_proj", "key_proj", "value_proj")
_save = jax.checkpoint_policies.save_only_these_names

# config.remat -> the jax.checkpoint policy around each layer (None: no checkpoint). What a policy saves is
# kept from the forward; everything else inside the layer is recomputed in the backward. The names are
# MaxText's `remat_policy` values (the projection outputs are tagged with `checkpoint_name` as there:
# query_proj, key_proj, value_proj, context = attention output before its projection, out_proj, mlpwi = the
# gate/up projection, mlpwo = the down projection; grown branches carry the same names).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,                                                          # keep everything (no remat)
    "full": jax.checkpoint_policies.nothing_saveable,                      # keep only each layer's input
    "dots": jax.checkpoint_policies.checkpoint_dots,                       # every matmul, attention's too
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,   # the weight matmuls
    "minimal": _save(*_QKV, "out_proj", "mlpwi", "mlpwo"),                 # the same, by name
    "save_dot_with_context_except_mlp": _save(*_QKV, "context", "out_proj"),
    "save_dot_except_mlpwi": _save(*_QKV, "out_proj", "mlpwo"),
    "save_dot_except_mlp": _save(*_QKV, "out_proj"),
    "save_qkv_proj": _save(*_QKV),
    "save_out_proj": _save("out_proj"),
}
assert tuple(REMAT_POLICIES) == REMAT_NAMES


def layer_runs(params: Params, num_layers: int) -> list[tuple[int, ...]]:
  """Maximal runs of consecutive layers whose parameters have the same tree, shapes and dtypes, i.e. what
  one scanned body can run: growth of only some layers, or grown heads, split the stack."""
  runs, last = [], None
  for i in range(num_layers):
    leaves, treedef = jax.tree_util.tree_flatten(params[f"layer_{i}"])
    signature = (treedef, tuple((tuple(leaf.shape), jnp.dtype(leaf.dtype)) for leaf in leaves))
    if runs and signature == last:
      runs[-1] = (*runs[-1], i)
    else:
      runs.append((i,))
    last = signature
  return runs


def layer_kinds(config: ModelConfig, layers) -> LayerKind:
  """The attention types of `layers` stacked (scan input): the same frequencies the unrolled layers use."""
  freqs = [rope_frequencies(config.head_dim, *layer_rope(config, i)) for i in layers]
  local = [config.attention_type(i) != GLOBAL for i in layers]
  return LayerKind(jnp.stack(freqs), jnp.asarray(local, dtype=bool))


def apply_layers(config: ModelConfig, params: Params, x, positions, mask, query_index, key_index):
  """The decoder layers on x (B, T, D) without a cache, each under `config.remat`'s jax.checkpoint policy;
  with `config.scan_layers`, every run of `layer_runs` longer than one is a `jax.lax.scan` over its layers'
  parameters stacked here (the params keep their per-layer layout), local and global layers sharing one
  body through `LayerKind`."""
  policy = REMAT_POLICIES[config.remat]

  def layer_fn(i):
    def run(layer_params, x, kind):
      out, _ = Block(config, i).apply({"params": layer_params}, x, positions, mask, query_index, key_index,
                                      None, kind)
      return out
    return run

  for run in layer_runs(params, config.num_layers):
    if config.scan_layers and len(run) > 1:
      fn = layer_fn(run[0])         # the run's layers differ only in their weights and LayerKind
      if policy is not None:
        fn = jax.checkpoint(fn, policy=policy, prevent_cse=False)    # a scan body needs no CSE barrier
      stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[params[f"layer_{i}"] for i in run])
      x, _ = jax.lax.scan(lambda h, xs: (fn(xs[0], h, xs[1]), None), x, (stacked, layer_kinds(config, run)))
      continue
    for i in run:
      fn = layer_fn(i)
      if policy is not None:
        fn = jax.checkpoint(fn, policy=policy)
      x = fn(params[f"layer_{i}"], x, None)
  return x


def _forward_layered(config: ModelConfig, params: Params, tokens, positions, mask, query_index, key_index,
                     return_hidden: bool):
  """`Transformer` without a cache, its layers run by `apply_layers` (remat and/or scan)."""
  embedder = Embedder(config.vocab_size, config.embed_dim, config.param_dtype)
  x = embedder.apply({"params": params["embedder"]}, tokens, _dtype(config.dtype), method=Embedder.encode)
  x = apply_layers(config, params, x, positions, mask, query_index, key_index)
  x = RMSNorm(config.rms_norm_eps, config.param_dtype).apply({"params": params["final_norm"]}, x)
  if return_hidden:
    return x
  return unembed(params["embedder"]["input_embedding"], x, config.final_logit_softcap)


# ---- masks -------------------------------------------------------------------------------------------
def attention_mask(input_mask, segment_ids=None):
  """(B, T, T) causal mask that also hides padding keys and keys of other packed segments."""
  B, T = input_mask.shape
  causal = jnp.tril(jnp.ones((T, T), dtype=bool))[None]
  mask = jnp.logical_and(causal, input_mask[:, None, :])
  if segment_ids is not None:
    mask = jnp.logical_and(mask, segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask


def default_positions(input_mask):
  """Positions that skip padding: 0 at the first real token (so left padding is handled)."""
  return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)


# ---- public functional API ---------------------------------------------------------------------------
def forward(config: ModelConfig, params: Params, tokens, *, positions=None, input_mask=None,
            segment_ids=None, return_hidden: bool = False):
  """Logits (B, T, V) float32 for a batch of token ids (B, T). Pure and jit-able.

  input_mask: (B, T) bool, True for real tokens (default: all real). positions default to the count of
  real tokens before each one (left or right padding both fine). segment_ids (B, T) int: packed examples
  attend only within their own segment (give per-segment `positions` too).
  With `return_hidden=True`, returns the final-norm hidden states (B, T, D) instead of logits.
  `config.remat` / `config.scan_layers` choose how the layers run (`apply_layers`); the defaults run the
  `Transformer` module's unrolled layers.
  """
  tokens = jnp.asarray(tokens)
  if input_mask is None:
    input_mask = jnp.ones(tokens.shape, dtype=bool)
  input_mask = jnp.asarray(input_mask, dtype=bool)
  if positions is None:
    positions = default_positions(input_mask)
  mask = attention_mask(input_mask, segment_ids)
  T = tokens.shape[1]
  index = jnp.arange(T, dtype=jnp.int32)
  query_index = jnp.broadcast_to(index[None], tokens.shape)
  if config.remat != "none" or config.scan_layers:
    return _forward_layered(config, params, tokens, positions, mask, query_index, index, return_hidden)
  out, _ = Transformer(config).apply({"params": params}, tokens, positions, mask, query_index, index,
                                     None, return_hidden)
  return out


def init_params(config: ModelConfig, rng) -> Params:
  """Random parameters (for random:<preset> sources and tests). `config.abstract_params(config)` gives shapes only.

  Weights ~ N(0, 0.02²), the embedding ~ N(0, 1/D) (scaled by sqrt(D) on input, so inputs have unit
  scale and the tied output logits start near unit scale), norm scales 0
  (the norms multiply by 1 + scale). All randomness comes from one normal draw that is sliced into leaves:
  XLA on CPU compiles one threefry call per random op (~0.15 s each), so per-leaf draws made a 7-layer
  model take ~10 s to initialise; one draw compiles in well under a second.
  """
  shapes = param_shapes(config)
  dtype = _dtype(config.param_dtype)
  random_paths = [p for p in shapes if not p.endswith("/scale")]
  sizes = [math.prod(shapes[p]) for p in random_paths]
  flat = jax.random.normal(rng, (sum(sizes),), jnp.float32)
  leaves, offset = {}, 0
  for path, size in zip(random_paths, sizes):
    std = config.embed_dim ** -0.5 if path == "embedder/input_embedding" else 0.02
    leaves[path] = (flat[offset:offset + size].reshape(shapes[path]) * std).astype(dtype)
    offset += size
  for path in shapes:
    if path.endswith("/scale"):
      leaves[path] = jnp.zeros(shapes[path], dtype)
  return tree_paths.unflatten({path: leaves[path] for path in shapes})


def module_param_shapes(config: ModelConfig) -> Params:
  """The parameter tree the Flax module itself declares (ShapeDtypeStructs): tests check that
  `init_params` and `model_config.param_shapes` agree with it."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  mask = jnp.ones((1, 1, 1), bool)
  index = jnp.zeros((1,), jnp.int32)
  init = lambda: Transformer(config).init(jax.random.key(0), tokens, tokens, mask, tokens, index)["params"]
  return jax.eval_shape(init)


# ---- KV cache ----------------------------------------------------------------------------------------
def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> Cache:
  dtype = _dtype(dtype or config.dtype)
  cache = {}
  for i in range(config.num_layers):
    layer = {"index": jnp.zeros((), jnp.int32)}
    for j, (_, k) in enumerate(config.layer_attn_branches(i)):
      if j == 0 or k:        # branch 0 and every head branch with kv heads of its own
        suffix = "" if j == 0 else f"_{j}"
        shape = (batch_size, max_len, k if j else config.num_kv_heads, config.head_dim)
        layer["k" + suffix], layer["v" + suffix] = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    cache[f"layer_{i}"] = layer
  return cache


def forward_with_cache(config: ModelConfig, params: Params, tokens, positions, key_mask, cache: Cache):
  """Run T new tokens starting at the cache's index; returns (logits (B, T, V), new cache).

  key_mask: (B, S) bool over the whole cache, True where a written (or being written) slot holds a real
  token. Query t (at cache slot index + t) sees slots s <= index + t that are real.
  """
  B, T = tokens.shape
  S = key_mask.shape[1]
  start = cache["layer_0"]["index"]
  query_index = start + jnp.arange(T, dtype=jnp.int32)
  key_index = jnp.arange(S, dtype=jnp.int32)
  mask = (key_index[None, None, :] <= query_index[None, :, None]) & key_mask[:, None, :]
  query_index = jnp.broadcast_to(query_index[None], (B, T))
  logits, new_cache = Transformer(config).apply({"params": params}, tokens, positions, mask, query_index,
                                                key_index, cache)
  return logits, new_cache
