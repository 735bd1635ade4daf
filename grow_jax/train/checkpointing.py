"""Training checkpoints with orbax: the training state, the data-iterator position and the run's metadata.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta}` written by one `ocp.CheckpointManager`:
    state  params (with a method's extra leaves, e.g. LoRA), optimizer state (incl. the L2-SP anchor / EWC
           Fisher), step, RNG
    data   the train iterator's `state()` (JSON)
    meta   the model config including growth, the method (name, options, what it decided), the init source
           (JSON), so the restore target's shapes are known before any weights are read.
Saves are asynchronous (the next steps run while the arrays are written) and atomic: orbax writes a temporary
directory and renames it at the end, so a run killed mid-save leaves the previous step as the latest.

Restores take the abstract state (ShapeDtypeStructs carrying the *current* mesh's shardings), so a checkpoint
written on one mesh restores onto any other. Before reading any array the stored tree is compared with the
target leaf by leaf; a mismatch raises CheckpointMismatchError naming every differing path and both shapes.

The resume order, logged: this workdir's newest *readable* checkpoint -> config.resume_from -> the init
source. An unreadable checkpoint (a truncated file, a missing item) is reported, moved aside to
`<step>.unreadable-<time>` (never deleted) and the next older one is used. In a multi-process run every process
reads only its own shards, so a damaged file may fail some processes and not others: the processes first agree
(any failure counts for all), then process 0 alone moves the checkpoint aside while the others wait for it, so
that every process goes on from the same step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from grow_jax import files, tree_paths
from grow_jax.errors import CheckpointMismatchError, one_line

ITEMS = ("state", "data", "meta")
META_FORMAT = "grow_jax.train/2"

_log = logging.getLogger(__name__)


def checkpoint_dir(path: str) -> str:
  """A workdir or its checkpoints/ directory -> the checkpoints directory."""
  path = os.fspath(files.as_path(path))
  sub = os.path.join(path, "checkpoints")
  return sub if epath.Path(sub).is_dir() else path


def _signature(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  out = {}
  for path, leaf in tree_paths.flatten_items(tree):
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
    self.directory = os.fspath(files.as_path(directory))
    self.read_only = read_only
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:     # orbax warns that read-only mode disables saving: that is the point
      absl_logger.setLevel(logging.ERROR)
    try:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
          cleanup_tmp_directories=not read_only)
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    finally:
      absl_logger.setLevel(level)

  # ---- queries -----------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

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
    _log.info("restored checkpoint %s/%d", self.directory, step)
    return restored.state, dict(restored.data or {}), dict(restored.meta or {})

  def set_aside(self, steps: Sequence[int], reason: str) -> tuple[str, ...]:
    """Moves unreadable checkpoints to `<step>.unreadable-<time>` (kept for inspection, invisible to orbax),
    reports them and re-lists the directory; returns the new paths (process 0's: the one that moves them).

    Multi-process it is a collective: every process calls it, the same number of times; process 0 alone moves
    its `steps`, and every process waits for that before it re-lists, so all see the same checkpoints after."""
    suffix = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for step in steps:
      src = epath.Path(self.directory) / str(step)
      dst = epath.Path(self.directory) / f"{step}.unreadable-{suffix}"
      if jax.process_index() == 0:
        src.rename(dst)
        _log.warning("checkpoint %s is unreadable (%s); moved to %s", src, reason, dst)
      moved.append(os.fspath(dst))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"grow_jax: unreadable checkpoints set aside in {self.directory}")
    self.manager.reload()
    return tuple(moved)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (the orbax restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ---- where a run starts ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Resume:
  """Where the run's state comes from: 'workdir' (its own newest readable checkpoint), 'resume_from' (another
  run's), or 'init' (the init source: weights only, a fresh optimizer)."""
  origin: str
  checkpointer: Checkpointer | None = None
  step: int | None = None
  meta: dict[str, Any] | None = None
  set_aside: tuple[str, ...] = ()     # unreadable checkpoints moved aside on the way

  def describe(self) -> str:
    if self.checkpointer is None:
      return "init source (no checkpoint)"
    return f"{self.origin} checkpoint {self.checkpointer.directory}/{self.step}"


def newest_readable(ckpt: Checkpointer, *, may_set_aside: bool) -> tuple[int | None, dict | None, list[str]]:
  """(step, meta, moved aside) of the newest checkpoint whose meta and tree metadata read cleanly.

  With `may_set_aside` (this run's own workdir; every process of the run calls it) a newer unreadable one is
  moved aside, each step's verdict agreed by all processes; else it is skipped with a warning."""
  moved = []
  for step in reversed(ckpt.all_steps()):
    meta, reason = None, None
    try:
      meta = ckpt.read_meta(step)
      ckpt.stored_tree(step)
    except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
      reason = one_line(e)
    if may_set_aside:
      if all_processes(reason is None):
        return step, meta, moved
      moved.extend(ckpt.set_aside([step], reason or "unreadable on another process"))
    elif reason is None:
      return step, meta, moved
    else:
      _log.warning("checkpoint %s/%d is unreadable (%s); trying an older one", ckpt.directory, step, reason)
  return None, None, moved


def all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process: one answer for all (multi-process, a collective every process calls)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


# ---- the meta item -----------------------------------------------------------------------------------
def make_meta(config, model_config, method, mesh_description: str, step: int) -> dict[str, Any]:
  return {"format": META_FORMAT, "step": int(step), "model_config": model_config.to_dict(),
          "method": method.meta(), "init_source": config.init.source, "growth": dict(config.growth),
          "train": config.train.to_dict(), "mesh": mesh_description}


def model_config_from_meta(meta: Mapping[str, Any], where: str):
  from grow_jax.model.config import ModelConfig
  if meta.get("format") != META_FORMAT or "model_config" not in meta or "method" not in meta:
    raise CheckpointMismatchError(f"{where} is not a grow_jax training checkpoint of this version "
                                  f"(meta format {meta.get('format')!r}, expected {META_FORMAT!r})")
  return ModelConfig.from_dict(meta["model_config"])


def load_trained_params(path: str, step: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
  """(model_config, params, meta) of a training checkpoint, on this host's first device — for evaluation
  and notebooks. `path` is a workdir or its checkpoints/ directory; `step` defaults to the newest readable.

  `params` is what `model.forward` takes: the method that trained them is rebuilt from the checkpoint's meta
  (e.g. LoRA with the rank it actually used) and its `model_params` applied (adapters merged).
  """
  from grow_jax import methods
  directory = checkpoint_dir(path)
  if not epath.Path(directory).is_dir():
    raise CheckpointMismatchError(f"{path!r}: no checkpoints/ directory there (expected a grow_jax workdir)")
  ckpt = Checkpointer(directory, read_only=True)
  try:
    if step is None:
      step, meta, _ = newest_readable(ckpt, may_set_aside=False)
      if step is None:
        raise CheckpointMismatchError(f"{directory}: holds no readable checkpoint")
    else:
      meta = ckpt.read_meta(step)
    config = model_config_from_meta(meta, f"{directory}/{step}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), ckpt.stored_tree(step))
    state, _, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  params = state["params"]
  method = methods.from_meta(meta["method"], config, params)
  return config, method.model_params(params), meta
