"""Specification of the update analysis used to pick layers for targeted growth."""

import jax
import numpy as np
import pytest

from grow_jax.growth import analysis
from grow_jax.model.transformer import init_params
from grow_jax.model.config import get_preset
from grow_jax.errors import ConfigError


def test_effective_rank_of_identity_is_its_size():
  assert analysis.effective_rank(np.eye(7)) == pytest.approx(7.0)


def test_effective_rank_of_rank_one_update_is_one():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(12, 1)), rng.normal(size=(1, 5))
  assert analysis.effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_zero_matrix_is_zero():
  assert analysis.effective_rank(np.zeros((4, 3))) == 0.0


def test_effective_rank_between_one_and_min_dim_for_random_matrix():
  m = np.random.default_rng(1).normal(size=(20, 6))
  assert 1.0 < analysis.effective_rank(m) <= 6.0


def _perturbed(config, params, layers, scale, rank=None, seed=0):
  rng = np.random.default_rng(seed)
  out = jax.tree_util.tree_map(np.array, params)
  for i in layers:
    mlp = out[f"layer_{i}"]["mlp"]
    F, D = mlp["linear"].shape
    if rank is None:
      delta = rng.normal(size=(F, D))
    else:
      delta = rng.normal(size=(F, rank)) @ rng.normal(size=(rank, D))
    mlp["linear"] = mlp["linear"] + scale * delta.astype(np.float32)
    mlp["gating_einsum"] = mlp["gating_einsum"] + scale * np.stack([delta, delta]).astype(np.float32)
  return out


def test_rank_layers_picks_the_layers_with_the_largest_updates():
  config = get_preset("tiny")
  base = init_params(config, jax.random.key(0))
  tuned = _perturbed(config, base, layers=[1, 4], scale=1.0)
  tuned = _perturbed(config, tuned, layers=[0, 2, 3, 5, 6], scale=1e-3, seed=1)
  assert analysis.rank_layers(config, base, tuned, criterion="fro", num_layers=2) == [1, 4]


def test_erank_criterion_prefers_high_rank_updates_over_low_rank_ones():
  config = get_preset("tiny")
  base = init_params(config, jax.random.key(0))
  tuned = _perturbed(config, base, layers=[3], scale=0.1)                    # full rank
  tuned = _perturbed(config, tuned, layers=[0, 1, 2, 4, 5, 6], scale=0.1, rank=1, seed=2)
  stats = analysis.update_stats(config, base, tuned, criteria=("erank",))
  assert stats[3]["erank"] > 10 * stats[0]["erank"]
  assert analysis.rank_layers(config, base, tuned, criterion="erank", num_layers=1) == [3]


def test_param_fraction_budget_limits_the_number_of_layers():
  config = get_preset("tiny")
  base = init_params(config, jax.random.key(0))
  tuned = _perturbed(config, base, layers=range(7), scale=1.0)
  per_layer = 3 * config.hidden_dim * config.embed_dim
  from grow_jax.model.config import count_params
  fraction = 2.5 * per_layer / count_params(config)
  assert len(analysis.rank_layers(config, base, tuned, criterion="fro", param_fraction=fraction)) == 2


def test_bad_arguments_are_named():
  config = get_preset("tiny")
  base = init_params(config, jax.random.key(0))
  with pytest.raises(ConfigError, match="unknown update criterion"):
    analysis.update_stats(config, base, base, criteria=("nuclear",))
  with pytest.raises(ConfigError, match="exactly one"):
    analysis.rank_layers(config, base, base)
  with pytest.raises(ConfigError, match="num_layers=99"):
    analysis.rank_layers(config, base, base, num_layers=99)
