"""Delta files: one task's branches saved on their own, applied to the exact weights they extend.

A task branch (growth/tasks.py) is a copy of branch 0 grown for one task; under G-Freeze it is all that trains.
A delta file holds only those leaves, plus what is needed to put them back: the task's name and layers, and a
hash of the exact model it was grown on (the base with every task grown before it). Applying a delta grows the
task on that model (`tasks.grow_task`, which halves branch 0's down projection) and puts the trained branches in:
the result is the trained model's leaves bit for bit (float32 storage). Like a PEFT adapter, but for grown
capacity: several deltas stack on one base in the order they were grown.

    save_delta(path, config, params, task, base=None)     the trained model -> <path> (refuses what is not a delta)
    read_delta(path) -> Delta                              its metadata and leaves
    apply_delta(config, params, delta) -> (config, params) refused, naming both hashes, on another base
    load_with_deltas(source, deltas) -> (config, params)   a checkpoint source with deltas applied in order
    params_hash(config, params) -> str                     the hash deltas record (config + every leaf's bytes)

The file is safetensors (leaf names `layer_<i>/gating_einsum`, `layer_<i>/linear`) with JSON metadata
(`format` grow_jax.delta). `dtype="bfloat16"` halves it; applying casts back to the model's dtype, so a bf16
delta gives the trained model to bf16 rounding, not bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from grow_jax import files, tree_paths
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.growth import tasks
from grow_jax.model.config import ModelConfig
from grow_jax.types import Params


FORMAT = "grow_jax.delta"
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Delta:
  task: str
  layers: tuple[int, ...]
  base_hash: str                 # params_hash of the model the task was grown on
  base_tasks: tuple[str, ...]    # that model's tasks, in growth order
  dtype: str                     # the storage dtype
  leaves: dict[str, np.ndarray]  # 'layer_<i>/gating_einsum', 'layer_<i>/linear'
  path: str = ""


def params_hash(config: ModelConfig, params: Params) -> str:
  """sha256 (first 16 hex digits) of the model's architecture (ModelConfig.to_dict) and every leaf's path, dtype,
  shape and bytes, in path order: equal exactly when the weights are equal bit for bit."""
  h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
  for path, leaf in sorted(tree_paths.flatten(params).items()):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{path}|{a.dtype.str}|{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _branch_index(config: ModelConfig, layer: int, task: str) -> int:
  return config.mlp_branch_tasks[layer].index(task) + 1


def _split(config: ModelConfig, params: Params, task: str):
  """(the model the task was grown on, the model up to and including the task): both exact, since the tasks
  removed are the newest ones (tasks.select_tasks)."""
  names = tasks.task_names(config)
  before = list(names[:names.index(task)])
  return tasks.select_tasks(config, params, before), tasks.select_tasks(config, params, before + [task])


def save_delta(path: str | os.PathLike, config: ModelConfig, params: Params, task: str, *,
               base: tuple[ModelConfig, Params] | None = None, dtype: str | None = None,
               overwrite: bool = False) -> Delta:
  """Save `task`'s branches of a trained model as a delta file.

  `base`: the (config, params) the task was grown on (a run's init source; the CLI passes it). Given, the model
  with `task` and later tasks switched off must be that base bit for bit, else refused naming the first leaf that
  differs: the method trained more than the task's branches (G-Train's gate/up, norms, SFT) or growth added noise
  to branch 0, and a delta could not give the model back. Without it the model is taken to be G-Freeze's, and a
  wrong guess shows when the delta is applied (another base hash)."""
  dtype = dtype or "float32"
  if dtype not in DTYPES:
    raise ConfigError(f"dtype={dtype!r}: expected one of {list(DTYPES)}")
  tasks.check_task_names(config, [task], field="task")
  target = files.as_path(path)
  if target.exists() and not overwrite:
    raise ConfigError(f"{os.fspath(path)!r} exists; pass overwrite=True (--overwrite) to replace it")
  (parent_config, parent), (grown_config, grown_params) = _split(config, params, task)
  if base is not None:
    _check_base(task, parent_config, parent, *base)
  layers = tasks.task_layers(config, task)
  leaves = {}
  for i in layers:
    mlp = grown_params[f"layer_{i}"]["mlp"][f"grown_{_branch_index(grown_config, i, task)}"]
    leaves[f"layer_{i}/gating_einsum"] = np.asarray(mlp["gating_einsum"])
    leaves[f"layer_{i}/linear"] = np.asarray(mlp["linear"])
  if dtype != "float32":
    import ml_dtypes
    leaves = {k: v.astype(ml_dtypes.bfloat16) for k, v in leaves.items()}
  delta = Delta(task, layers, params_hash(parent_config, parent), tasks.task_names(parent_config), dtype, leaves,
                os.fspath(path))
  metadata = {"format": FORMAT, "task": task, "layers": json.dumps(list(layers)), "base_hash": delta.base_hash,
              "base_tasks": json.dumps(list(delta.base_tasks)), "dtype": dtype}
  from safetensors.numpy import save_file
  files.write_with(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in leaves.items()}, str(tmp),
                                               metadata=metadata))
  return delta


def _check_base(task: str, parent_config: ModelConfig, parent: Params, base_config: ModelConfig,
                base_params: Params) -> None:
  if parent_config != base_config:
    raise ConfigError(f"save_delta({task!r}): without {task!r} and later tasks the model is not the given base "
                      f"(tasks {list(tasks.task_names(parent_config))} vs {list(tasks.task_names(base_config))}, "
                      "or another architecture)")
  ours, theirs = tree_paths.flatten(parent), tree_paths.flatten(base_params)
  for key in sorted(set(ours) | set(theirs)):
    if key not in ours or key not in theirs or not np.array_equal(np.asarray(ours[key]), np.asarray(theirs[key])):
      raise ConfigError(f"save_delta({task!r}): leaf {key} differs from the base the task was grown on; the method "
                        "trained more than the task's branches (G-Train's gate/up, norms, SFT), or growth added noise "
                        "to branch 0: save the whole model instead")


def read_delta(path: str | os.PathLike) -> Delta:
  from safetensors import safe_open
  try:
    with files.local_copy(path) as local, safe_open(str(local), framework="numpy") as f:
      metadata = f.metadata() or {}
      if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{os.fspath(path)!r} is not a grow_jax delta file (metadata format="
                              f"{metadata.get('format')!r}, expected {FORMAT!r})")
      leaves = {k: f.get_tensor(k) for k in f.keys()}
    return Delta(metadata["task"], tuple(json.loads(metadata["layers"])), metadata["base_hash"],
                 tuple(json.loads(metadata["base_tasks"])), metadata["dtype"], leaves, os.fspath(path))
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"cannot read delta file {os.fspath(path)!r}: {e}") from e


def apply_delta(config: ModelConfig, params: Params, delta: Delta | str | os.PathLike, *,
                check: bool = True) -> tuple[ModelConfig, Params]:
  """Grow `delta.task` on the model and put the delta's trained branches in. Refused, naming both hashes, unless
  the model is exactly the one the delta was grown on (`check=False` skips that: tests and save_delta only)."""
  if not isinstance(delta, Delta):
    delta = read_delta(delta)
  where = f"delta {delta.path!r} (task {delta.task!r})" if delta.path else f"delta of task {delta.task!r}"
  if check:
    got = params_hash(config, params)
    if got != delta.base_hash:
      have = list(tasks.task_names(config))
      raise ConfigError(f"{where} extends base {delta.base_hash} (tasks {list(delta.base_tasks)}) but was given "
                        f"{got} (tasks {have}): apply it to the exact weights it was grown on, after the same deltas")
  new_config, grown = tasks.grow_task(config, params, delta.task, layers=list(delta.layers))
  flat = dict(tree_paths.flatten(grown))
  for i in delta.layers:
    j = _branch_index(new_config, i, delta.task)
    for leaf in ("gating_einsum", "linear"):
      key = f"layer_{i}/mlp/grown_{j}/{leaf}"
      stored = delta.leaves.get(f"layer_{i}/{leaf}")
      if stored is None or tuple(stored.shape) != tuple(np.shape(flat[key])):
        raise CheckpointError(f"{where}: leaf layer_{i}/{leaf} is "
                              f"{'missing' if stored is None else f'of shape {tuple(stored.shape)}'}, expected "
                              f"{tuple(np.shape(flat[key]))}")
      flat[key] = np.asarray(stored).astype(np.asarray(flat[key]).dtype)
  return new_config, tree_paths.unflatten(flat)


def load_with_deltas(source: str, deltas: Sequence[str | os.PathLike], **kwargs) -> tuple[ModelConfig, Params]:
  """A checkpoint source (formats.load_checkpoint's forms, a params file included) with `deltas` applied in
  order."""
  from grow_jax.formats import sources
  config, params = sources.load_checkpoint(source, **kwargs)
  for path in deltas:
    config, params = apply_delta(config, params, path)
  return config, params


__all__ = ["Delta", "save_delta", "read_delta", "apply_delta", "load_with_deltas", "params_hash", "FORMAT"]
