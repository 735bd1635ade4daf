"""Statistics of a fine-tuning update ΔW = W_finetuned − W_pretrained of each layer's ORIGINAL MLP branch.

Per layer i and matrix m in (gate, up, down), each an (F, D) matrix (`layer_i/mlp/gating_einsum[0|1]`,
`layer_i/mlp/linear`), `update_stats` gives

  '{m}/fro'    ||ΔW||_F
  '{m}/rel'    ||ΔW||_F / ||W_pretrained||_F
  '{m}/erank'  effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σ_j σ_j over the singular values
  '{m}/srank'  stable rank ||ΔW||_F² / σ_max²  (1 for a rank-one update, ≤ rank; 0 for ΔW = 0)
  'fro'        the layer's whole MLP update: sqrt(Σ_m ||ΔW_m||_F²)

(singular values in float64). Layer criteria built on these, budgets and the growth-plan JSON are plan.py.
Also here: the rank-agreement statistics of two rankings (Spearman, top-k overlap) and the localisation of an
update (the share of the total update norm in the top-k layers).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from grow_jax.errors import ConfigError
from grow_jax.model.config import ModelConfig
from grow_jax.types import Params

MATRICES = ("gate", "up", "down")
STATS = ("fro", "rel", "erank", "srank")


def _singular_values(matrix) -> np.ndarray:
  return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def effective_rank(matrix, eps: float = 1e-12, *, singular_values=None) -> float:
  """exp of the Shannon entropy of the normalised singular values; 0 for an all-zero matrix."""
  s = _singular_values(matrix) if singular_values is None else singular_values
  total = s.sum()
  if total <= eps:
    return 0.0
  p = s / total
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(matrix, eps: float = 1e-12, *, singular_values=None) -> float:
  """||M||_F² / σ_max² (= Σ σ_i² / σ_1²); 0 for an all-zero matrix."""
  s = _singular_values(matrix) if singular_values is None else singular_values
  if s.size == 0 or s[0] <= eps:
    return 0.0
  return float(np.sum(s ** 2) / s[0] ** 2)


def matrix_stats(delta, base) -> dict[str, float]:
  """fro, rel, erank, srank of one update `delta` of the matrix `base` (one SVD)."""
  delta = np.asarray(delta, np.float64)
  s = _singular_values(delta)
  fro = float(np.sqrt(np.sum(s ** 2)))
  return {"fro": fro, "rel": fro / max(float(np.linalg.norm(np.asarray(base, np.float64))), 1e-30),
          "erank": effective_rank(delta, singular_values=s), "srank": stable_rank(delta, singular_values=s)}


def _mlp_matrices(params: Params, layer: int) -> dict[str, np.ndarray]:
  mlp = params[f"layer_{layer}"]["mlp"]
  gating = np.asarray(mlp["gating_einsum"], dtype=np.float64)
  return {"gate": gating[0], "up": gating[1], "down": np.asarray(mlp["linear"], dtype=np.float64)}


def update_stats(config: ModelConfig, base: Params, finetuned: Params) -> list[dict[str, float]]:
  """One row per layer: {'layer': i, '{m}/{stat}': ..., 'fro': ...} (see the module docstring)."""
  rows = []
  for i in range(config.num_layers):
    before, after = _mlp_matrices(base, i), _mlp_matrices(finetuned, i)
    row: dict[str, float] = {"layer": i}
    for name in MATRICES:
      if before[name].shape != after[name].shape:
        raise ConfigError(f"layer_{i} mlp {name}: base shape {before[name].shape} != finetuned shape "
                          f"{after[name].shape}; compare an ungrown pilot run with its own starting point")
      for stat, value in matrix_stats(after[name] - before[name], before[name]).items():
        row[f"{name}/{stat}"] = value
    row["fro"] = float(np.sqrt(sum(row[f"{m}/fro"] ** 2 for m in MATRICES)))
    rows.append(row)
  return rows


# ---- comparing rankings and updates ---------------------------------------------------------------------
def ranks(scores: Sequence[float]) -> np.ndarray:
  """Ranks 1..n of `scores` in ascending order, ties sharing their average rank."""
  x = np.asarray(scores, np.float64)
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x), np.float64)
  r[order] = np.arange(1, len(x) + 1)
  for value in np.unique(x):
    tied = x == value
    r[tied] = r[tied].mean()
  return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman's rank correlation of two score lists over the same items (Pearson of the tie-averaged ranks);
  nan when either list is constant."""
  if len(a) != len(b) or len(a) < 2:
    raise ConfigError(f"spearman: need two score lists of one length >= 2, got {len(a)} and {len(b)}")
  ra, rb = ranks(a) - (len(a) + 1) / 2, ranks(b) - (len(b) + 1) / 2
  denom = float(np.sqrt(np.sum(ra ** 2) * np.sum(rb ** 2)))
  return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def top_k(scores: Sequence[float], k: int) -> list[int]:
  """Indices of the k highest scores (ties: the lower index first)."""
  return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
  """|top-k(a) ∩ top-k(b)| / k."""
  if not 0 < k <= min(len(a), len(b)):
    raise ConfigError(f"top_k_overlap: k={k}, expected 1..{min(len(a), len(b))}")
  return len(set(top_k(a, k)) & set(top_k(b, k))) / k


def localisation(norms: Sequence[float], k: int) -> float:
  """The share of the total update norm held by the k layers with the largest norms: Σ_top-k n_i / Σ n_i
  (k / L for an update spread evenly over L layers, 1 when k layers hold all of it; nan for no update)."""
  norms = np.asarray(norms, np.float64)
  if not 0 < k <= len(norms):
    raise ConfigError(f"localisation: k={k}, expected 1..{len(norms)}")
  total = float(norms.sum())
  return float(np.sort(norms)[::-1][:k].sum() / total) if total > 0 else float("nan")


def format_table(rows: Sequence[Mapping[str, float]], columns: Sequence[str]) -> str:
  """A fixed-width text table of per-layer stats."""
  header = "layer " + " ".join(f"{c:>12}" for c in columns)
  lines = [header]
  for row in rows:
    lines.append(f"{int(row['layer']):>5} " + " ".join(f"{row[c]:>12.4g}" for c in columns))
  return "\n".join(lines)
