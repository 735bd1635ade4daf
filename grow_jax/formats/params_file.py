"""grow_jax's own params file: one safetensors file of our params (leaf paths as names) with the model config
as JSON in its metadata. The conversion cache of GGUF sources uses it; written atomically.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from grow_jax import files, tree_paths
from grow_jax.errors import CheckpointError
from grow_jax.model.config import ModelConfig, param_shapes
from grow_jax.types import Params


FORMAT = "grow_jax.params"


def save_params_file(path: str | os.PathLike, config: ModelConfig, params: Params) -> None:
  """One safetensors file of our params (paths as names) with the config JSON in its metadata; atomic."""
  from safetensors.numpy import save_file
  flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tree_paths.flatten(params).items()}
  metadata = {"format": FORMAT, "config": config.to_json()}
  files.write_with(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def load_params_file(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
  """Inverse of save_params_file (memory-mapped read, a second or two for the 270M; gs:// via a local copy)."""
  from safetensors import safe_open
  try:
    with files.local_copy(path) as local, safe_open(str(local), framework="numpy") as f:
      config = _config_from_metadata(path, f.metadata())
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"cannot read params file {str(path)!r}: {e}") from e
  params = tree_paths.unflatten(flat)
  check_params(config, params, what=str(path))
  return config, params


def read_config(path: pathlib.Path) -> ModelConfig:
  from safetensors import safe_open
  try:
    with safe_open(str(path), framework="numpy") as f:
      return _config_from_metadata(path, f.metadata())
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"cannot read params file {str(path)!r}: {e}") from e


def _config_from_metadata(path, metadata) -> ModelConfig:
  metadata = metadata or {}
  if metadata.get("format") != FORMAT or "config" not in metadata:
    raise CheckpointError(f"{str(path)!r} is not a grow_jax params file (metadata format="
                          f"{metadata.get('format')!r}, expected {FORMAT!r})")
  return ModelConfig.from_dict(json.loads(metadata["config"]))


def check_params(config: ModelConfig, params: Params, what: str = "params") -> None:
  """Raises CheckpointError naming the first leaf that is missing, unexpected or of the wrong shape."""
  expected = param_shapes(config)
  found = {k: tuple(np.shape(v)) for k, v in tree_paths.flatten(params).items()}
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  if missing:
    raise CheckpointError(f"{what}: missing parameter {missing[0]!r} (expected shape {expected[missing[0]]})"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  if extra:
    raise CheckpointError(f"{what}: unexpected parameter {extra[0]!r} of shape {found[extra[0]]} "
                          "that the config does not have" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
  for key, shape in expected.items():
    if found[key] != tuple(shape):
      raise CheckpointError(f"{what}: parameter {key!r} has shape {found[key]}, expected {tuple(shape)} "
                            "from the config")
