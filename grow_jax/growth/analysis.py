"""Analysis of fine-tuning updates: effective rank of ΔW and the layer ranking behind targeted growth.

The paper grows only the layers a short pilot SFT run says need it. Our reading (docs/method.md): rank layers by
the size of their MLP updates ΔW = W_finetuned − W_pretrained, with a pluggable criterion:

  'erank'  effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σ_j σ_j over the singular values of ΔW
  'fro'    Frobenius norm ||ΔW||_F
  'rel'    relative Frobenius norm ||ΔW||_F / ||W_pretrained||_F

A layer's score is the mean over its gate, up and down projections (ΔW of each as an (F, D) matrix).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from grow_jax.model.config import ModelConfig
from grow_jax.errors import ConfigError

Params = dict[str, Any]


def effective_rank(matrix, eps: float = 1e-12) -> float:
  """exp of the Shannon entropy of the normalised singular values; 0 for an all-zero matrix."""
  s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
  total = s.sum()
  if total <= eps:
    return 0.0
  p = s / total
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def _mlp_matrices(params: Params, layer: int) -> dict[str, np.ndarray]:
  mlp = params[f"layer_{layer}"]["mlp"]
  gating = np.asarray(mlp["gating_einsum"], dtype=np.float64)
  return {"gate": gating[0], "up": gating[1], "down": np.asarray(mlp["linear"], dtype=np.float64)}


CRITERIA: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "erank": lambda delta, base: effective_rank(delta),
    "fro": lambda delta, base: float(np.linalg.norm(delta)),
    "rel": lambda delta, base: float(np.linalg.norm(delta) / max(np.linalg.norm(base), 1e-30)),
}


def update_stats(config: ModelConfig, base: Params, finetuned: Params,
                 criteria: Sequence[str] = ("erank", "fro", "rel")) -> list[dict[str, float]]:
  """Per layer and per MLP matrix, each criterion of ΔW (original branch only: mlp/gating_einsum, mlp/linear).

  Returns one dict per layer: {'layer': i, 'gate/erank': ..., 'up/fro': ..., ..., '<criterion>': mean}.
  """
  unknown = [c for c in criteria if c not in CRITERIA]
  if unknown:
    raise ConfigError(f"unknown update criterion {unknown}; expected some of {sorted(CRITERIA)}")
  rows = []
  for i in range(config.num_layers):
    before, after = _mlp_matrices(base, i), _mlp_matrices(finetuned, i)
    row: dict[str, float] = {"layer": i}
    for name in ("gate", "up", "down"):
      if before[name].shape != after[name].shape:
        raise ConfigError(f"layer_{i} mlp {name}: base shape {before[name].shape} != finetuned shape "
                          f"{after[name].shape}; compare an ungrown pilot run with its own starting point")
      delta = after[name] - before[name]
      for c in criteria:
        row[f"{name}/{c}"] = CRITERIA[c](delta, before[name])
    for c in criteria:
      row[c] = float(np.mean([row[f"{n}/{c}"] for n in ("gate", "up", "down")]))
    rows.append(row)
  return rows


def rank_layers(config: ModelConfig, base: Params, finetuned: Params, *, criterion: str = "erank",
                num_layers: int | None = None, param_fraction: float | None = None) -> list[int]:
  """Layers to grow, highest-scoring first, chosen from a pilot run's ΔW.

  Give `num_layers` (e.g. 9 of 26) or `param_fraction` (grow layers in score order while the added MLP
  parameters stay within that fraction of the base model's parameters, e.g. 0.30). Returned sorted by index.
  """
  if (num_layers is None) == (param_fraction is None):
    raise ConfigError("rank_layers: give exactly one of num_layers or param_fraction")
  stats = update_stats(config, base, finetuned, criteria=(criterion,))
  order = sorted(range(config.num_layers), key=lambda i: -stats[i][criterion])
  if num_layers is not None:
    if not 0 < num_layers <= config.num_layers:
      raise ConfigError(f"rank_layers: num_layers={num_layers}, expected 1..{config.num_layers}")
    return sorted(order[:num_layers])
  if not 0.0 < param_fraction <= 1.0:
    raise ConfigError(f"rank_layers: param_fraction={param_fraction}, expected a value in (0, 1]")
  from grow_jax.model.config import count_params
  budget = param_fraction * count_params(config)
  chosen, used = [], 0
  for i in order:
    cost = 3 * config.layer_mlp_branches(i)[0] * config.embed_dim
    if used + cost > budget:
      break
    chosen.append(i)
    used += cost
  return sorted(chosen)


def format_table(rows: Sequence[Mapping[str, float]], columns: Sequence[str]) -> str:
  """A fixed-width text table of per-layer stats."""
  header = "layer " + " ".join(f"{c:>12}" for c in columns)
  lines = [header]
  for row in rows:
    lines.append(f"{int(row['layer']):>5} " + " ".join(f"{row[c]:>12.4g}" for c in columns))
  return "\n".join(lines)
