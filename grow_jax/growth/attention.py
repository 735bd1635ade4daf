"""Attention-head growth (the paper's appendix ablation), with the new heads as their own leaves.

`grow_attention(config, params, factor=k)` keeps every existing head branch of a grown layer at its path with
its output projection divided by k (`attn_vec_einsum / k`) and appends k - 1 copies of it as new head
branches `layer_i/attn/grown_j/{q_einsum,attn_vec_einsum}/w` (+ `kv_einsum/w` when the copy has kv heads of
its own). The model computes every branch's attention on its own and sums the branch outputs in order
(model/transformer.py `Attention`), exactly as MLP branches are summed, so:

  * the copies are leaves a label can select: `g_freeze_attn` (methods/builtin.py) trains only them;
  * for k = 2 the growth is bit-exact in float32: a copy's q (and k, v) are the same matmuls on the same
    values, hence the same attention output `e`; `e @ (O / 2)` is exactly `(e @ O) / 2` (a power-of-two
    scale commutes with rounding, barring underflow), and `y/2 + y/2 == y`. For k = 3, O / 3 rounds:
    preserved to float rounding. (tests/test_attention_growth.py asserts both.)

Grouped-query attention (Gemma 3 270M/1B: one kv head): a branch's query head n reads kv head n // (N_j/K_j).
  * grow_kv=False: the copies' queries read the ORIGINAL kv heads (config `(N, 0)`: no kv leaf of their own);
  * grow_kv=True: the kv heads are copied too (config `(N, K)`, own `kv_einsum` leaf, own KV-cache entries).
Growing again copies every existing branch (copy c of branch b is branch c * m + b for m existing branches),
a branch with kv heads of its own keeping its own kv, as MLP growth does.

`merge_attention` folds the branches back into one wider head set per layer for HF export (same function to
float rounding: one N'·H contraction instead of a sum of branch outputs): copies that read the original kv
heads are interleaved into their kv group (query head n must still read kv head n // G'), copies with their
own kv heads are appended as whole groups; layers are zero-padded to one layout (a zero query head with a
zero output row contributes exactly 0).
"""

from __future__ import annotations

import jax.numpy as jnp

from grow_jax.errors import ConfigError
from grow_jax.growth.operators import _check_factor, _copy
from grow_jax.model.config import ModelConfig, parse_layers
from grow_jax.types import Params

PROJECTIONS = ("q_einsum", "kv_einsum", "attn_vec_einsum")


def _layer_ids(config: ModelConfig, layers) -> tuple[int, ...]:
  ids = parse_layers(layers, config.num_layers)
  return tuple(range(config.num_layers)) if ids is None else ids


def attention_config(config: ModelConfig, *, factor: int = 2, grow_kv: bool = False, layers=None) -> ModelConfig:
  """The config `grow_attention` returns, without weights (abstract shapes, accounting)."""
  factor = _check_factor(factor, "attention factor")
  branches = [config.layer_attn_branches(i) for i in range(config.num_layers)]
  for i in _layer_ids(config, layers):
    old = branches[i]
    copies = []
    for _ in range(1, factor):
      for b, (n, k) in enumerate(old):
        own = k if b > 0 else 0                   # a grown branch's own kv heads are copied with it
        copies.append((n, own or (config.num_kv_heads if grow_kv else 0)))
    branches[i] = tuple(old) + tuple(copies)
  return config.replace(attn_branches=tuple(branches))


def grown_head_layers(config: ModelConfig) -> tuple[int, ...]:
  """Indices of layers with grown attention-head branches."""
  return tuple(i for i in range(config.num_layers) if len(config.layer_attn_branches(i)) > 1)


def _branch_nodes(config: ModelConfig, attn: Params, i: int) -> list[Params]:
  """[{projection: w}] per head branch of layer i, checked against the config."""
  branches = config.layer_attn_branches(i)
  have = sorted(k for k in attn if k.startswith("grown_"))
  want = [f"grown_{j}" for j in range(1, len(branches))]
  if sorted(want) != have:
    raise ConfigError(f"layer_{i}/attn has head branches {have}; config.attn_branches[{i}]={branches} lists {want}")
  nodes = []
  for j, (n, k) in enumerate(branches):
    node = attn if j == 0 else attn[f"grown_{j}"]
    nodes.append({name: node[name]["w"] for name in PROJECTIONS if name in node})
    if (j == 0 or k) and "kv_einsum" not in node:
      raise ConfigError(f"layer_{i}/attn/grown_{j} lacks kv_einsum/w that config.attn_branches[{i}][{j}]="
                        f"{(n, k)} gives it")
  return nodes


def grow_attention(config: ModelConfig, params: Params, *, factor: int = 2, grow_kv: bool = False,
                   layers=None) -> tuple[ModelConfig, Params]:
  """Copy the attention heads of `layers` (None = all; a list or '0,3,5') `factor` times, as separate head
  branches (see the module docstring). Returns (config with attn_branches, params). Pure: jit / eval_shape."""
  new_config = attention_config(config, factor=factor, grow_kv=grow_kv, layers=layers)
  out = dict(params)
  for i in _layer_ids(config, layers):
    layer = dict(params[f"layer_{i}"])
    attn = dict(layer["attn"])
    old = config.layer_attn_branches(i)
    nodes = _branch_nodes(config, attn, i)
    for node in nodes:
      node["attn_vec_einsum"] = node["attn_vec_einsum"] / jnp.asarray(factor, node["attn_vec_einsum"].dtype)
    attn["attn_vec_einsum"] = {**attn["attn_vec_einsum"], "w": nodes[0]["attn_vec_einsum"]}
    for j in range(1, len(old)):
      attn[f"grown_{j}"] = {**attn[f"grown_{j}"], "attn_vec_einsum": {"w": nodes[j]["attn_vec_einsum"]}}
    new = new_config.layer_attn_branches(i)
    for j in range(len(old), len(new)):
      b = j % len(old)
      node = {"q_einsum": {"w": _copy(nodes[b]["q_einsum"])},
              "attn_vec_einsum": {"w": _copy(nodes[b]["attn_vec_einsum"])}}
      if new[j][1]:
        node["kv_einsum"] = {"w": _copy(nodes[b].get("kv_einsum", nodes[0]["kv_einsum"]))}
      attn[f"grown_{j}"] = node
    layer["attn"] = attn
    out[f"layer_{i}"] = layer
  return new_config, out


# ---- merging (export) --------------------------------------------------------------------------------
def _fold_layer(config: ModelConfig, attn: Params, i: int):
  """(q (N', D, H), kv (2, K', D, H), o (N', H, D)) of layer i with its branches folded into one head set."""
  branches = config.layer_attn_branches(i)
  nodes = _branch_nodes(config, attn, i)
  q0, kv0, o0 = nodes[0]["q_einsum"], nodes[0]["kv_einsum"], nodes[0]["attn_vec_einsum"]
  if len(branches) == 1:
    return q0, kv0, o0
  K, D, H = config.num_kv_heads, config.embed_dim, config.head_dim
  shared = [k == 0 for _, k in branches[1:]]
  if all(shared):                       # every copy reads the original kv heads: interleave within each group
    group = lambda w, n, rest: w.reshape(K, n // K, *rest)
    q = jnp.concatenate([group(nd["q_einsum"], n, (D, H)) for nd, (n, _) in zip(nodes, branches)], axis=1)
    o = jnp.concatenate([group(nd["attn_vec_einsum"], n, (H, D)) for nd, (n, _) in zip(nodes, branches)], axis=1)
    return q.reshape(-1, D, H), kv0, o.reshape(-1, H, D)
  ratios = {n // k for n, k in branches if k}
  if any(shared) or len(ratios) != 1:
    raise ConfigError(f"merge_attention: layer_{i} mixes head branches {branches} (kv shared and own, or "
                      "different queries per kv head); one folded head layout cannot hold them")
  cat = lambda name, axis: jnp.concatenate([nd[name] for nd in nodes], axis=axis)
  return cat("q_einsum", 0), cat("kv_einsum", 1), cat("attn_vec_einsum", 0)


def _pad_layer(q, kv, o, heads: int, kv_heads: int, i: int):
  """Zero-pad a folded layer to (heads, kv_heads): zero query heads inside each kv group when the kv count
  already matches, whole zero groups (zero kv heads too) when the queries per kv head match."""
  n, k = q.shape[0], kv.shape[1]
  if (n, k) == (heads, kv_heads):
    return q, kv, o
  if k == kv_heads:
    g, g_new = n // k, heads // kv_heads
    pad = lambda w: jnp.pad(w.reshape(k, g, *w.shape[1:]), ((0, 0), (0, g_new - g), (0, 0), (0, 0)))
    return pad(q).reshape(heads, *q.shape[1:]), kv, pad(o).reshape(heads, *o.shape[1:])
  if n // k == heads // kv_heads:
    rows = lambda w, m: jnp.pad(w, [(0, m)] + [(0, 0)] * (w.ndim - 1))
    return rows(q, heads - n), jnp.pad(kv, ((0, 0), (0, kv_heads - k), (0, 0), (0, 0))), rows(o, heads - n)
  raise ConfigError(f"merge_attention: layer_{i} folds to {n} query heads on {k} kv heads, another layer to "
                    f"{heads} on {kv_heads}; zero padding cannot give both one layout")


def merge_attention(config: ModelConfig, params: Params) -> tuple[ModelConfig, Params]:
  """Fold every layer's head branches into one head set and zero-pad all layers to the widest layout: a
  standard config (num_heads, num_kv_heads, attn_branches=None) with the same function to float rounding."""
  folded = {i: _fold_layer(config, params[f"layer_{i}"]["attn"], i) for i in range(config.num_layers)}
  heads = max(q.shape[0] for q, _, _ in folded.values())
  kv_heads = max(kv.shape[1] for _, kv, _ in folded.values())
  out = dict(params)
  for i, (q, kv, o) in folded.items():
    q, kv, o = _pad_layer(q, kv, o, heads, kv_heads, i)
    layer = dict(params[f"layer_{i}"])
    attn = {k: v for k, v in layer["attn"].items() if not k.startswith("grown_")}
    attn.update({"q_einsum": {"w": q}, "kv_einsum": {"w": kv}, "attn_vec_einsum": {"w": o}})
    layer["attn"] = attn
    out[f"layer_{i}"] = layer
  return config.replace(num_heads=heads, num_kv_heads=kv_heads, attn_branches=None), out


__all__ = ["attention_config", "grow_attention", "grown_head_layers", "merge_attention"]
