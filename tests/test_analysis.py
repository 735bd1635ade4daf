"""ΔW statistics (effective and stable rank, norms) and the statistics that compare rankings and updates."""

import jax
import numpy as np
import pytest

from grow_jax.errors import ConfigError
from grow_jax.growth import analysis
from grow_jax.model.config import get_preset
from grow_jax.model.transformer import init_params


def test_effective_rank_of_identity_is_its_size():
  assert analysis.effective_rank(np.eye(7)) == pytest.approx(7.0)


def test_effective_rank_of_rank_one_update_is_one():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(12, 1)), rng.normal(size=(1, 5))
  assert analysis.effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_zero_matrix_is_zero():
  assert analysis.effective_rank(np.zeros((4, 3))) == 0.0 == analysis.stable_rank(np.zeros((4, 3)))


def test_effective_rank_between_one_and_min_dim_for_random_matrix():
  m = np.random.default_rng(1).normal(size=(20, 6))
  assert 1.0 < analysis.effective_rank(m) <= 6.0


def test_stable_rank():
  assert analysis.stable_rank(np.eye(5)) == pytest.approx(5.0)
  rng = np.random.default_rng(2)
  assert analysis.stable_rank(rng.normal(size=(9, 1)) @ rng.normal(size=(1, 4))) == pytest.approx(1.0)
  assert analysis.stable_rank(np.diag([2.0, 1.0])) == pytest.approx(1.25)        # (4 + 1) / 4
  m = rng.normal(size=(30, 8))
  assert 1.0 < analysis.stable_rank(m) <= analysis.effective_rank(m) <= 8.0


def _perturbed(params, layers, scale, rank=None, seed=0):
  rng = np.random.default_rng(seed)
  out = jax.tree_util.tree_map(np.array, params)
  for i in layers:
    mlp = out[f"layer_{i}"]["mlp"]
    F, D = mlp["linear"].shape
    delta = rng.normal(size=(F, D)) if rank is None else rng.normal(size=(F, rank)) @ rng.normal(size=(rank, D))
    mlp["linear"] = mlp["linear"] + scale * delta.astype(np.float32)
    mlp["gating_einsum"] = mlp["gating_einsum"] + scale * np.stack([delta, 2 * delta]).astype(np.float32)
  return out


def test_update_stats_per_layer_and_matrix():
  config = get_preset("tiny")
  base = init_params(config, jax.random.key(0))
  tuned = _perturbed(base, layers=[3], scale=0.1)
  tuned = _perturbed(tuned, layers=[0, 1], scale=0.1, rank=1, seed=2)
  stats = analysis.update_stats(config, base, tuned)
  assert [r["layer"] for r in stats] == list(range(7))
  assert stats[5]["fro"] == 0.0 and stats[5]["gate/erank"] == 0.0
  assert stats[0]["down/srank"] == pytest.approx(1.0, rel=1e-4) and stats[3]["down/srank"] > 10
  assert stats[3]["up/fro"] == pytest.approx(2 * stats[3]["gate/fro"], rel=1e-5)
  w = np.asarray(base["layer_3"]["mlp"]["linear"], np.float64)
  assert stats[3]["down/rel"] == pytest.approx(stats[3]["down/fro"] / np.linalg.norm(w))
  assert stats[3]["fro"] == pytest.approx(np.sqrt(sum(stats[3][f"{m}/fro"] ** 2 for m in ("gate", "up", "down"))))
  with pytest.raises(ConfigError, match="layer_0 mlp gate: base shape"):
    analysis.update_stats(config, base, init_params(get_preset("tiny", hidden_dim=64), jax.random.key(0)))


def test_spearman_top_k_and_localisation():
  assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert analysis.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # scipy, ties
  assert analysis.ranks([3.0, 1.0, 3.0]).tolist() == [2.5, 1.0, 2.5]
  assert analysis.top_k([0.1, 0.9, 0.5, 0.9], 2) == [1, 3]
  assert analysis.top_k_overlap([5, 4, 3, 2], [4, 5, 1, 3], 2) == 1.0
  assert analysis.top_k_overlap([5, 4, 3, 2], [1, 2, 3, 4], 2) == 0.0
  assert analysis.localisation([1.0] * 6, 3) == pytest.approx(0.5)
  assert analysis.localisation([6.0, 0, 0, 1.0, 1.0, 2.0], 3) == pytest.approx(0.9)
  with pytest.raises(ConfigError, match="k=7, expected 1..6"):
    analysis.localisation([1.0] * 6, 7)
  with pytest.raises(ConfigError, match="one length"):
    analysis.spearman([1, 2], [1, 2, 3])
