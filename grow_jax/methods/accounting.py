"""What a training method costs: trainable parameters, optimizer memory, added inference FLOPs.

Works on real or abstract params (`jax.ShapeDtypeStruct`s: `abstract_params(config)` needs no weights, so
Gemma 3 1B / 4B accounting runs in milliseconds).

Definitions (per model, embeddings tied so counted once):
  total            every leaf of params (incl. grown branches and LoRA adapters)
  embedding        embedder/input_embedding (V * D)
  base             the ungrown model: `base_config` if given, else config with only branch 0 of each MLP and
                   of each layer's attention heads
  grown            the grown MLP branches and grown attention-head branches
  trainable        leaves labelled 'trainable'
  trainable/base   the paper's "share of parameters": G-Freeze on all 26 layers of Gemma 3 1B = 62%
  optimizer bytes  Adam: 2 moments in the param dtype per trainable scalar (+ a 4-byte step count), plus the
                   method's `regularizer_copies` (L2-SP: the anchor; EWC: anchor and Fisher)
  flops/token      forward matmul FLOPs per token, 2 per multiply-add:
                   base = Σ_layers 2 * D * H * (2N + 2K) + 6 * D * F_layer + 2 * D * V (the logits),
                   added by growth = Σ_grown branches 6 * D * F_j (gate, up and down of the copy)
                   + Σ_grown head branches 2 * D * H * (2 N_j + 2 K_j) (q, own k/v, output);
                   attention scores/values (4 * T * N * H per token at context T) are left out.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from grow_jax import tables, tree_paths
from grow_jax.model.config import ModelConfig, abstract_params, count_params
from grow_jax.methods.partition import GROWN_BRANCH, GROWN_HEADS, TRAINABLE

ADAM_MOMENTS = 2


def base_config_of(config: ModelConfig) -> ModelConfig:
  """The config before growth: only branch 0 of every layer's MLP and attention heads."""
  config = config.replace(attn_branches=None, mlp_branch_tasks=None)
  if config.mlp_branches is None:
    return config
  widths = [config.layer_mlp_branches(i)[0] for i in range(config.num_layers)]
  if len(set(widths)) == 1:
    return config.replace(hidden_dim=widths[0], mlp_branches=None)
  return config.replace(mlp_branches=tuple((w,) for w in widths))


def forward_flops_per_token(config: ModelConfig) -> int:
  """Forward matmul FLOPs per token (see module docstring), all MLP and head branches included."""
  D, H, V = config.embed_dim, config.head_dim, config.vocab_size
  total = 2 * D * V
  for i in range(config.num_layers):
    total += sum(2 * D * H * (2 * n + 2 * k) for n, k in config.layer_attn_branches(i))
    total += 6 * D * config.layer_mlp_width(i)
  return total


def account(config: ModelConfig, params: Any, labels: Any, base_config: ModelConfig | None = None,
            regularizer_copies: int = 0) -> dict[str, Any]:
  """Parameter, memory and FLOP accounting of `params` under `labels` (see the module docstring).

  regularizer_copies: extra copies of the trainable leaves in the optimizer state (a method's
  `regularizer_copies`: L2-SP 1, EWC 2).
  """
  base_config = base_config or base_config_of(config)
  flat = tree_paths.flatten(params)
  flat_labels = tree_paths.flatten(labels)
  missing = sorted(set(flat) - set(flat_labels))
  if missing:
    raise ValueError(f"labels have no entry for {missing[:5]}")
  size = {p: math.prod(x.shape) for p, x in flat.items()}
  nbytes = {p: size[p] * jnp.dtype(x.dtype).itemsize for p, x in flat.items()}
  trainable = [p for p in flat if flat_labels[p] == TRAINABLE]
  grown = [p for p in flat if re.fullmatch(GROWN_BRANCH, p) or re.fullmatch(GROWN_HEADS, p)]
  total = sum(size.values())
  embedding = size.get("embedder/input_embedding", 0)
  base_total = count_params(base_config)
  base_embedding = base_config.vocab_size * base_config.embed_dim
  n_train = sum(size[p] for p in trainable)
  train_bytes = sum(nbytes[p] for p in trainable)
  copies = ADAM_MOMENTS + regularizer_copies
  base_flops = forward_flops_per_token(base_config)
  added_flops = forward_flops_per_token(config) - base_flops
  return {
      "total_params": total,
      "embedding_params": embedding,
      "non_embedding_params": total - embedding,
      "base_params": base_total,
      "base_non_embedding_params": base_total - base_embedding,
      "grown_params": sum(size[p] for p in grown),
      "trainable_params": n_train,
      "trainable_share_total": n_train / total,
      "trainable_share_non_embedding": sum(size[p] for p in trainable if p != "embedder/input_embedding")
                                       / max(total - embedding, 1),
      "trainable_share_base": n_train / base_total,
      "param_bytes": sum(nbytes.values()),
      "trainable_bytes": train_bytes,
      "optimizer_state_bytes": copies * train_bytes + 4,
      "base_flops_per_token": base_flops,
      "added_flops_per_token": added_flops,
      "added_flops_share": added_flops / base_flops,
  }


def account_method(method, params: Any) -> dict[str, Any]:
  """`account` of a bound method (methods.create) on its trained params (with the method's extra leaves)."""
  base = method.model_config if "lora" in params else None
  return account(method.model_config, params, method.labels, base_config=base,
                 regularizer_copies=method.regularizer_copies)


def _human(n: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.1f}{unit}"
  return f"{n:.0f}"


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
  """A markdown table, one row per named account()."""
  header = ("setup", "params", "trainable", "% of base", "% of all", "% of non-emb", "Adam state", "+FLOPs/token",
            "+FLOPs %")
  return tables.markdown(header, [
      (name, _human(a["total_params"]), _human(a["trainable_params"]), f"{100 * a['trainable_share_base']:.1f}",
       f"{100 * a['trainable_share_total']:.1f}", f"{100 * a['trainable_share_non_embedding']:.1f}",
       f"{_human(a['optimizer_state_bytes'])}B", _human(a["added_flops_per_token"]),
       f"{100 * a['added_flops_share']:.1f}") for name, a in rows.items()])


def standard_rows(preset: str, targeted: int = 10) -> dict[str, dict[str, Any]]:
  """The accounting rows for a named architecture: SFT, LoRA matched to G-Freeze, G-Freeze / G-Train on all
  layers and on `targeted` evenly spaced layers (abstract shapes only)."""
  from grow_jax import methods
  from grow_jax.growth import operators as growth
  from grow_jax.model.config import get_preset
  config = get_preset(preset)
  abstract = abstract_params(config)

  def row(name, options, model_config, params):
    method = methods.create(name, options, model_config, params)
    return account_method(method, jax.eval_shape(lambda p: method.init_params(p, jax.random.key(0)), params))

  rows = {"sft": row("sft", {}, config, abstract)}
  lora = methods.create("lora", {"match_params_of": "g_freeze"}, config, abstract)
  rows[f"lora r={lora.rank} (= g_freeze all)"] = row("lora", {"match_params_of": "g_freeze"}, config, abstract)
  L = config.num_layers
  subset = sorted({round(i * (L - 1) / (targeted - 1)) for i in range(targeted)}) if targeted > 1 else [0]
  for name, layers in (("all", None), (f"{len(subset)} layers", subset)):
    grown_config = growth.grow_config(config, layers=layers)
    for mode in ("g_freeze", "g_train"):
      rows[f"{mode} {name}"] = row(mode, {}, grown_config, abstract_params(grown_config))
  return rows


def main(argv=None) -> int:
  """python -m grow_jax.methods.accounting [preset ...] [--targeted N]: print the accounting tables."""
  from absl import flags
  from grow_jax import cli
  args = flags.FlagValues()
  flags.DEFINE_integer("targeted", 10, "layers in the targeted-growth rows", flag_values=args)
  presets = cli.parse("python -m grow_jax.methods.accounting", args, argv)
  if isinstance(presets, int):
    return presets
  for preset in presets or ["gemma3_270m", "gemma3_1b"]:
    print(f"\n{preset} (f32; +FLOPs = forward matmul FLOPs per token added by growth)")
    print(format_table(standard_rows(preset, args.targeted)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
