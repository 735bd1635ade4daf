"""Random test weights: numpy draws (no XLA compiles) with non-trivial norm scales, so every path matters."""

import numpy as np

from grow_jax import tree_paths
from grow_jax import model


def random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return tree_paths.map_with_path(
      lambda p, x: rng.normal(0.0, 1.0 if "embedder" in p else 0.3 if p.endswith("scale") else 0.05,
                              x.shape).astype(np.float32), model.abstract_params(config))
