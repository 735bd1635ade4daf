"""Checkpoints with orbax: the training state, the data-iterator position and the model metadata.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta}` written by one `ocp.CheckpointManager`:
    state  params, optimizer state, step, RNG (and the method's constants: L2-SP anchor, EWC Fisher)
    data   the train iterator's `state()` (JSON)
    meta   model config including growth, training mode, ... (JSON) so the restore target shape is known
           before any weights are read.
Saves are asynchronous (the next steps run while the arrays are written); the last `keep` are kept.

Restores take the abstract state (ShapeDtypeStructs carrying the *current* mesh's shardings), so a checkpoint
written on one mesh restores onto any other. Before reading any array the stored tree is compared with the
target leaf by leaf; a mismatch raises CheckpointMismatchError naming every differing path and both shapes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from grow_jax.train.sharding import flatten_with_paths

ITEMS = ("state", "data", "meta")


class CheckpointMismatchError(ValueError):
  """A checkpoint whose tree (paths, shapes, dtypes) differs from the restore target."""


def checkpoint_dir(path: str) -> str:
  """A workdir or its checkpoints/ directory -> the checkpoints directory."""
  path = os.path.abspath(os.fspath(path))
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _signature(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  out = {}
  for path, leaf in flatten_with_paths(tree):
    if leaf is None:
      continue
    out[path] = (tuple(int(s) for s in leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def compare_trees(expected, found, *, what: str = "checkpoint", limit: int = 12) -> None:
  """Raises CheckpointMismatchError listing paths missing, unexpected, or with another shape/dtype."""
  exp, got = _signature(expected), _signature(found)
  problems = []
  for path in sorted(set(exp) | set(got)):
    if path not in got:
      problems.append(f"{path}: expected {exp[path][0]} {exp[path][1]}, missing in the {what}")
    elif path not in exp:
      problems.append(f"{path}: in the {what} with {got[path][0]} {got[path][1]}, not expected")
    elif exp[path] != got[path]:
      problems.append(f"{path}: {what} has {got[path][0]} {got[path][1]}, expected {exp[path][0]} {exp[path][1]}")
  if problems:
    more = f" ... and {len(problems) - limit} more" if len(problems) > limit else ""
    raise CheckpointMismatchError(f"{what} does not match the model being trained ({len(problems)} leaves differ): "
                                  + "; ".join(problems[:limit]) + more)


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` for {state, data, meta} checkpoints."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:     # orbax warns that read-only mode disables saving: that is the point
      absl_logger.setLevel(logging.ERROR)
    try:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    finally:
      absl_logger.setLevel(level)

  # ---- queries -----------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def stored_tree(self, step: int):
    """The stored state tree's metadata (shapes and dtypes per leaf), read without loading arrays."""
    return self.manager.item_metadata(step)["state"]

  # ---- save / restore ----------------------------------------------------------------------------
  def save(self, step: int, state, data_state: Mapping[str, Any], meta: Mapping[str, Any], *,
           force: bool = False) -> bool:
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)),
                              meta=ocp.args.JsonSave(dict(meta)))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(state, data_state, meta) at `step`, placed with the shardings carried by `abstract_state`."""
    compare_trees(abstract_state, self.stored_tree(step), what=f"checkpoint {self.directory}/{step}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    compare_trees(abstract_state, restored.state, what=f"restored checkpoint {self.directory}/{step}")
    logging.info("restored checkpoint %s/%d", self.directory, step)
    return restored.state, dict(restored.data or {}), dict(restored.meta or {})

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (the orbax restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def load_trained_params(path: str, step: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
  """(model_config, params, meta) of a training checkpoint, on this host's first device — for evaluation
  and notebooks. `path` is a workdir or its checkpoints/ directory; `step` defaults to the latest.

  `params` is what `model.forward` takes: LoRA adapters, if the run had them, are merged into the weights.
  """
  from grow_jax.model.config import ModelConfig
  directory = checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise CheckpointMismatchError(f"{path!r}: no checkpoints/ directory there (expected a grow_jax workdir)")
  ckpt = Checkpointer(directory, read_only=True)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise CheckpointMismatchError(f"{directory}: holds no checkpoint")
  meta = ckpt.read_meta(step)
  if "model_config" not in meta:
    raise CheckpointMismatchError(f"{directory}/{step}: meta has no model_config (not a grow_jax training checkpoint)")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), ckpt.stored_tree(step))
  state, _, _ = ckpt.restore(step, target)
  ckpt.close()
  params = state["params"]
  if "lora" in params:
    from grow_jax.methods import lora
    train = meta.get("train", {})
    params = lora.merge(params, lora.scale_for(train.get("lora_rank", 8), train.get("lora_alpha")))
  return ModelConfig.from_dict(meta["model_config"]), params, meta
