"""Hugging Face model directories: read (config.json + model.safetensors or its shards) and write (`save_hf`).

Reading uses safetensors' numpy API (no torch), lazily: a tensor is read from disk only when the conversion
asks for it. Writing converts our params with hf_format.py, merges a grown model's MLP branches into one
wider MLP per layer and its head branches into wider heads (the same function, standard shapes), and builds the directory in a temporary sibling that
is renamed into place.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping

import numpy as np

from grow_jax import files
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.formats import hf_format
from grow_jax.formats.params_file import check_params
from grow_jax.model.config import ModelConfig
from grow_jax.types import Params


HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def read_config(directory: pathlib.Path) -> ModelConfig:
  config_path = directory / HF_CONFIG
  if not config_path.is_file():
    raise CheckpointError(f"{str(directory)!r} has no {HF_CONFIG}; expected a Hugging Face model directory")
  try:
    hf_config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{str(config_path)!r} is not valid JSON: {e}") from None
  try:
    return hf_format.config_from_hf(hf_config)
  except ConfigError as e:
    raise CheckpointError(f"{str(config_path)!r}: {e}") from None


def load_hf(directory: str | os.PathLike) -> tuple[ModelConfig, Params]:
  """(config, params) from a Hugging Face Gemma 3 directory (config.json + safetensors)."""
  directory = pathlib.Path(directory)
  config = read_config(directory)
  tensors = read_safetensors_dir(directory)
  try:
    params = hf_format.params_from_hf(config, tensors)
  except ConfigError as e:
    raise CheckpointError(f"{str(directory)!r}: {e}") from None
  return config, params


def read_safetensors_dir(directory: str | os.PathLike) -> "SafetensorsDir":
  """The tensors of model.safetensors, or of the shards listed in model.safetensors.index.json, as a lazy
  read-only mapping name -> numpy array (each access reads that tensor from disk)."""
  return SafetensorsDir(directory)


class SafetensorsDir(Mapping):
  """name -> numpy array over a directory's safetensors file(s); reads a tensor only when it is accessed."""

  def __init__(self, directory: str | os.PathLike):
    from safetensors import safe_open
    self.directory = directory = pathlib.Path(directory)
    index_path, single = directory / HF_INDEX, directory / HF_WEIGHTS
    if index_path.is_file():
      try:
        weight_map = json.loads(index_path.read_text()).get("weight_map")
      except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(index_path)!r} is not valid JSON: {e}") from None
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{str(index_path)!r} has no 'weight_map' object")
      files = sorted(set(weight_map.values()))
    elif single.is_file():
      files = [HF_WEIGHTS]
    else:
      found = sorted(p.name for p in directory.iterdir())
      raise CheckpointError(f"{str(directory)!r} holds neither {HF_WEIGHTS} nor {HF_INDEX}; found {found}")
    self._file_of: dict[str, pathlib.Path] = {}
    for name in files:
      path = directory / name
      if not path.is_file():
        raise CheckpointError(f"shard {str(path)!r} listed in {HF_INDEX} does not exist")
      try:
        with safe_open(str(path), framework="numpy") as f:
          self._file_of.update({key: path for key in f.keys()})
      except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {e}") from e

  def __getitem__(self, name: str) -> np.ndarray:
    from safetensors import safe_open
    path = self._file_of[name]
    try:
      with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor(name)
    except Exception as e:
      raise CheckpointError(f"cannot read tensor {name!r} from {str(path)!r}: {e}") from e

  def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
    return name in self._file_of

  def __iter__(self):
    return iter(self._file_of)

  def __len__(self) -> int:
    return len(self._file_of)


# ---- export ------------------------------------------------------------------------------------------
def save_hf(config: ModelConfig, params: Params, out_dir: str | os.PathLike, *, tokenizer=None,
            overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> pathlib.Path:
  """Writes a Hugging Face Gemma 3 directory that `AutoModelForCausalLM.from_pretrained` loads.

  config.json + model.safetensors, or model-0000i-of-0000n.safetensors shards + model.safetensors.index.json
  when the weights exceed `max_shard_bytes`. Tensors keep the params' dtype. A grown model is first merged
  into one wide MLP per layer (`growth.merge_branches(..., uniform=True)`: same function, standard shapes) and
  its grown attention heads into wider heads (`growth.merge_attention`: copies interleaved in their kv groups,
  layers zero-padded to one head count).
  `tokenizer` (a grow_jax.tokenizer.Tokenizer) is saved alongside. Everything is written to a temporary
  directory and renamed into place; an existing non-empty `out_dir` is refused unless `overwrite=True`.
  Returns the directory.
  """
  out_dir = pathlib.Path(out_dir).expanduser()
  if out_dir.exists() and not out_dir.is_dir():
    raise CheckpointError(f"save_hf: {str(out_dir)!r} exists and is not a directory")
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise CheckpointError(f"save_hf: {str(out_dir)!r} exists and is not empty; pass overwrite=True to replace it")
  if config.attn_grown:
    from grow_jax.growth.attention import merge_attention
    config, params = merge_attention(config, params)
  if config.is_grown:
    from grow_jax.growth import operators as growth
    config, params = growth.merge_branches(config, params, uniform=True)
  check_params(config, params, what="save_hf")
  hf_config = hf_format.config_to_hf(config)
  tensors = hf_format.params_to_hf(config, params)
  dtypes = sorted({str(v.dtype) for v in tensors.values()})
  if len(dtypes) == 1:
    hf_config["torch_dtype"] = hf_config["dtype"] = dtypes[0]

  def write(tmp: pathlib.Path) -> None:
    (tmp / HF_CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    _write_safetensors_shards(tmp, tensors, max_shard_bytes)
    if tokenizer is not None:
      tokenizer.save(tmp)

  files.write_dir(out_dir, write)
  return out_dir


def _write_safetensors_shards(directory: pathlib.Path, tensors: Mapping[str, np.ndarray],
                              max_shard_bytes: int) -> None:
  from safetensors.numpy import save_file
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  metadata = {"format": "pt"}  # transformers expects this marker in safetensors it loads
  if len(shards) == 1:
    save_file(shards[0], str(directory / HF_WEIGHTS), metadata=metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(directory / name), metadata=metadata)
    weight_map.update({k: name for k in shard})
  index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))}, "weight_map": weight_map}
  (directory / HF_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
