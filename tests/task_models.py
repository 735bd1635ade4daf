"""Models grown for task A, trained, then grown for task B and trained, as G-Freeze leaves them (tests of task
branches and deltas)."""

import numpy as np

from grow_jax import tree_paths
from grow_jax.growth import tasks
from grow_jax.model.config import get_preset
from random_params import random_params

SMALL = get_preset("tiny", num_layers=3, sliding_window_pattern=3)


def flat(params):
  return {k: np.asarray(v) for k, v in tree_paths.flatten(params).items()}


def assert_same_params(a, b):
  """Same leaves, bit for bit."""
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def train_only(config, params, task, seed):
  """What G-Freeze does to a model whose newest task is `task`: every leaf of that task's branches moves, nothing
  else (a random step of relative size ~10%, enough to change every logit)."""
  rng = np.random.default_rng(seed)
  out = dict(flat(params))
  for i in tasks.task_layers(config, task):
    j = config.mlp_branch_tasks[i].index(task) + 1
    for leaf in ("gating_einsum", "linear"):
      key = f"layer_{i}/mlp/grown_{j}/{leaf}"
      out[key] = out[key] + 0.1 * np.std(out[key]) * rng.normal(size=out[key].shape).astype(np.float32)
  return tree_paths.unflatten(out)


def grown_and_trained():
  """base -> grown for A (all layers) and trained -> grown for B (layers 0 and 2) and trained."""
  base = random_params(SMALL)
  a_config, a_grown = tasks.grow_task(SMALL, base, "A")
  a_params = train_only(a_config, a_grown, "A", seed=1)
  ab_config, ab_grown = tasks.grow_task(a_config, a_params, "B", layers="0,2")
  ab_params = train_only(ab_config, ab_grown, "B", seed=2)
  return dict(base=base, a_config=a_config, a_grown=a_grown, a_params=a_params, ab_config=ab_config,
              ab_grown=ab_grown, ab_params=ab_params)
