"""What a training protocol costs: trainable parameters, optimizer memory, added inference FLOPs.

Works on real or abstract params (`jax.ShapeDtypeStruct`s: `abstract_params(config)` needs no weights, so
Gemma 3 1B / 4B accounting runs in milliseconds).

Definitions (per model, embeddings tied so counted once):
  total            every leaf of params (incl. grown branches and LoRA adapters)
  embedding        embedder/input_embedding (V * D)
  base             the ungrown model: `base_config` if given, else config with only branch 0 of each MLP
  trainable        leaves labelled 'trainable'
  trainable/base   the paper's "share of parameters": G-Freeze on all 26 layers of Gemma 3 1B = 62%
  optimizer bytes  Adam: 2 moments in the param dtype per trainable scalar (+ a 4-byte step count); L2-SP
                   and EWC keep 1 (anchor) or 2 (anchor + Fisher) more copies of the trainable leaves
  flops/token      forward matmul FLOPs per token, 2 per multiply-add:
                   base = Σ_layers 2 * D * H * (2N + 2K) + 6 * D * F_layer + 2 * D * V (the logits),
                   added by growth = Σ_grown branches 6 * D * F_j (gate, up and down of the copy);
                   attention scores/values (4 * T * N * H per token at context T) are left out.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from grow_jax import tree_paths
from grow_jax.model.config import ModelConfig, count_params, param_shapes
from grow_jax.methods.partition import GROWN_BRANCH, TRAINABLE

ADAM_MOMENTS = 2
_REG_COPIES = {"l2sp": 1, "ewc": 2}


def abstract_params(config: ModelConfig, dtype: str | None = None) -> dict[str, Any]:
  """ShapeDtypeStructs of every leaf, straight from model_config.param_shapes (no tracing, no weights)."""
  dt = jnp.dtype(dtype or config.param_dtype)
  return tree_paths.unflatten({p: jax.ShapeDtypeStruct(s, dt) for p, s in param_shapes(config).items()})


def base_config_of(config: ModelConfig) -> ModelConfig:
  """The config before MLP growth: only branch 0 of every layer."""
  if config.mlp_branches is None:
    return config
  widths = [config.layer_mlp_branches(i)[0] for i in range(config.num_layers)]
  if len(set(widths)) == 1:
    return config.replace(hidden_dim=widths[0], mlp_branches=None)
  return config.replace(mlp_branches=tuple((w,) for w in widths))


def forward_flops_per_token(config: ModelConfig) -> int:
  """Forward matmul FLOPs per token (see module docstring), all MLP branches included."""
  D, N, K, H, V = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size
  total = 2 * D * V
  for i in range(config.num_layers):
    total += 2 * D * H * (2 * N + 2 * K) + 6 * D * config.layer_mlp_width(i)
  return total


def account(config: ModelConfig, params: Any, labels: Any, base_config: ModelConfig | None = None,
            regularizer: str | None = None) -> dict[str, Any]:
  """Parameter, memory and FLOP accounting of `params` under `labels` (see the module docstring).

  regularizer: None, 'l2sp' or 'ewc' adds its anchor (/ Fisher) copies to the optimizer-state bytes.
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
  grown = [p for p in flat if re.fullmatch(GROWN_BRANCH, p)]
  total = sum(size.values())
  embedding = size.get("embedder/input_embedding", 0)
  base_total = count_params(base_config)
  base_embedding = base_config.vocab_size * base_config.embed_dim
  n_train = sum(size[p] for p in trainable)
  train_bytes = sum(nbytes[p] for p in trainable)
  copies = ADAM_MOMENTS + _REG_COPIES.get(regularizer or "", 0)
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


def _human(n: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.1f}{unit}"
  return f"{n:.0f}"


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
  """A markdown table, one row per named account()."""
  header = ("| setup | params | trainable | % of base | % of all | % of non-emb | Adam state | "
            "+FLOPs/token | +FLOPs % |")
  lines = [header, "|" + "---|" * 9]
  for name, a in rows.items():
    lines.append(
        f"| {name} | {_human(a['total_params'])} | {_human(a['trainable_params'])} "
        f"| {100 * a['trainable_share_base']:.1f} | {100 * a['trainable_share_total']:.1f} "
        f"| {100 * a['trainable_share_non_embedding']:.1f} | {_human(a['optimizer_state_bytes'])}B "
        f"| {_human(a['added_flops_per_token'])} | {100 * a['added_flops_share']:.1f} |")
  return "\n".join(lines)


def print_table(rows: Mapping[str, Mapping[str, Any]]) -> None:
  print(format_table(rows))


def standard_rows(preset: str, targeted: int = 10) -> dict[str, dict[str, Any]]:
  """The accounting rows for a named architecture: SFT, LoRA matched to G-Freeze, G-Freeze / G-Train on all
  layers and on `targeted` evenly spaced layers (abstract shapes only)."""
  from grow_jax.growth import operators as growth
  from grow_jax.methods import lora
  from grow_jax.methods import registry as methods
  from grow_jax.methods import partition
  from grow_jax.model.config import get_preset
  config = get_preset(preset)
  abstract = abstract_params(config)
  rows = {"sft": account(config, abstract, partition.trainable_labels(config, abstract, "sft"))}
  target = methods.preset_trainable_count("g_freeze", config, abstract)
  rank, _ = lora.rank_for_count(abstract, target)
  with_lora = jax.eval_shape(lambda p: lora.init(p, rank=rank, rng=jax.random.key(0)), abstract)
  rows[f"lora r={rank} (= g_freeze all)"] = account(config, with_lora,
                                                     partition.trainable_labels(config, with_lora, "lora"),
                                                     base_config=config)
  L = config.num_layers
  subset = sorted({round(i * (L - 1) / (targeted - 1)) for i in range(targeted)}) if targeted > 1 else [0]
  for name, layers in (("all", None), (f"{len(subset)} layers", subset)):
    grown_config = growth.grow_config(config, layers=layers)
    grown = abstract_params(grown_config)
    for mode in ("g_freeze", "g_train"):
      rows[f"{mode} {name}"] = account(grown_config, grown, partition.trainable_labels(grown_config, grown, mode))
  return rows


def main(argv=None) -> None:
  """python -m grow_jax.methods.accounting [preset ...] [--targeted N]: print the accounting tables."""
  import argparse
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("presets", nargs="*", default=["gemma3_270m", "gemma3_1b"])
  parser.add_argument("--targeted", type=int, default=10, help="layers in the targeted-growth rows")
  args = parser.parse_args(argv)
  for preset in args.presets:
    print(f"\n{preset} (f32; +FLOPs = forward matmul FLOPs per token added by growth)")
    print_table(standard_rows(preset, args.targeted))


if __name__ == "__main__":
  main()


__all__ = ["account", "abstract_params", "base_config_of", "forward_flops_per_token", "format_table",
           "print_table", "standard_rows"]
