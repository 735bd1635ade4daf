"""The training loop: `train_and_evaluate(config, workdir)`, one function in banner sections, each a call into
the module that owns its concept:

  1. checks, with nothing written: config (train/config.py), a gs:// workdir reachable (files.py), mesh and
     batch (sharding.py), where the run starts
     (checkpointing.py: the workdir's newest readable checkpoint -> config.resume_from -> the init source), the
     model (setup.py), the data (data/pipeline.py), the restore target against the stored checkpoint
  2. workdir: writable (files.py), one live run per workdir (workdir.py); a workdir the run creates is removed
     if it cannot start
  3. state: restored from a checkpoint, or the init weights grown and the method's state built (setup.py);
     then config.json, the checkpointer and the metric writers
  4. jit the step with explicit shardings and a donated state; the evaluations (evaluation/registry.py)
  5. the loop: train, log, diagnose, evaluate, checkpoint; SIGTERM or Ctrl-C saves and exits; NaN/inf stops the run

Every file goes through grow_jax/files.py's one path type, so the workdir may be local or gs://bucket/dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from grow_jax import files
from grow_jax.data import pipeline
from grow_jax.errors import (CheckpointMismatchError, ConfigError, DataError, TrainingDivergedError, WorkdirError,
                             one_line)
from grow_jax.evaluation import registry
from grow_jax.growth import operators as growth
from grow_jax.model.config import abstract_params
from grow_jax.train import checkpointing, config as config_lib, setup as setup_lib, sharding, step as step_lib
from grow_jax.train import summary, workdir as workdir_lib
from grow_jax.train import preemption, writers
from grow_jax.train.writers import MetricWriter
from grow_jax.types import Params

EvalFn = Callable[[Params], Mapping[str, float]]

_log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       eval_fns: Mapping[str, EvalFn] | None = None) -> dict[str, Any]:
  """Trains as `config` says, writing checkpoints and metrics under `workdir`; returns the last metrics.

  eval_fns: extra evaluations {name: eval_fn(params) -> {metric: value}} besides config.eval.tasks.
  """
  workdir = os.fspath(files.as_path(workdir))
  is_main = jax.process_index() == 0

  # ==== 1. Checks: cheap, before any heavy work, nothing written ===========================================
  config_lib.check(config)
  pipeline.use_config(config)        # data: config.data.options and the staged copy (checked) for every task read
  files.check_reachable(workdir)
  if config.resume_from:
    files.check_reachable(config.resume_from, "config.resume_from")
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.batch_size, config.grad_accum_steps, mesh)
  sharding.check_batch_size(config.eval.batch_size, 1, mesh, field="eval.batch_size")
  # The rows this process loads: its block of the global batch (processes whose devices address the same
  # rows, as when a tensor group spans hosts, load the same block).
  block, blocks = sharding.batch_blocks(mesh)
  resume = _find_resume(config, workdir)
  mc = _model_config(config, resume)
  tokenizer = _tokenizer(config)
  train_iter = pipeline.batch_iterator(config, config.data.train_split, batch_size=config.batch_size,
                                       model_config=mc, tokenizer=tokenizer, process_index=block, process_count=blocks)
  train_setup, _ = setup_lib.build(config, mc, abstract_params(mc), mesh, abstract=True)
  if resume.checkpointer is not None:
    checkpointing.compare_trees(train_setup.abstract_state, resume.checkpointer.stored_tree(resume.step),
                                what=f"checkpoint {resume.checkpointer.directory}/{resume.step}")

  # Everything the run holds is released on the way out, last acquired first: the prefetcher, the signal
  # handlers, the metric writers, the checkpointer (waiting for an asynchronous save), the workdir lock.
  with contextlib.ExitStack() as held:
    # ==== 2. Workdir: one live run at a time, writable; a workdir this run creates is removed if it can't start
    lock = workdir_lib.WorkdirLock(workdir)
    held.callback(lock.release)
    created = is_main and not files.as_path(workdir).exists()
    with contextlib.ExitStack() as undo_start:                   # kept only if the run cannot start
      if created:
        undo_start.callback(files.remove_tree, workdir)
      undo_start.callback(lock.release)
      if is_main:
        files.check_writable(workdir)
        lock.acquire()
      resume = _set_aside_unreadable(resume)          # every process: process 0 moves, the others wait for it
      # ==== 3. State: restored, or the init weights grown and the method's state built ====================
      t0 = time.time()
      state, resume = _restore_or_init(config, mesh, resume, train_setup, train_iter, tokenizer)
      undo_start.pop_all()
    if is_main:
      files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                      async_save=config.checkpoint.async_save)
    held.callback(_close_checkpointer, ckpt)
    start_step = int(state["step"])
    writer = MetricWriter(workdir, enabled=is_main, total_steps=config.total_steps, initial_step=start_step)
    held.callback(writer.close)
    writer.print(f"resume order -> {resume.describe()}; model ready at step {start_step} in "
                 f"{time.time() - t0:.1f} s")
    for path in resume.set_aside:
      writer.print(f"an unreadable checkpoint was moved aside to {path} (kept for inspection)")
    writer.print(summary.accounting_table(train_setup))

    # ==== 4. Jit the step (explicit shardings, donated state); the evaluations ============================
    capacity = _target_capacity(config, train_iter, mesh)
    train_step = setup_lib.jit_train_step(config, train_setup, mesh, capacity)
    rep = sharding.replicated(mesh)
    divergence = (jax.jit(lambda p: growth.clone_divergence(mc, p), out_shardings=rep) if mc.is_grown else None)
    evaluations = _evaluations(config, mc, mesh, workdir, tokenizer, block, blocks)
    evaluations.update(eval_fns or {})
    run = _Run(config, mc, mesh, train_setup, writer, ckpt, evaluations,
               model_params=jax.jit(train_setup.method.model_params),
               all_finite=jax.jit(_all_finite, out_shardings=rep))

    # ==== 5. The loop ======================================================================================
    stop = preemption.SignalFlag(signal.SIGTERM, signal.SIGINT)    # preemption, Ctrl-C
    held.callback(stop.restore)
    batches = pipeline.Prefetcher(train_iter, lambda b: sharding.global_batch(b, mesh, config.grad_accum_steps))
    held.callback(batches.close)
    metrics = writers.StepMetrics(writer, config.batch_size * config.data.seq_len, lambda: _kept(ckpt))
    last: dict[str, Any] = {"step": start_step}
    first_eval: dict[str, Any] = {}
    evaluated_at = -1
    run_start = time.time()
    step = start_step
    if config.eval.at_start and step == 0 and evaluations:
      first_eval = run.evaluate(state, 0)
      last.update(first_eval)
      writer.restart_clock()                   # the ETA counts training steps only
    compile_start = time.time()
    while step < config.total_steps:
      try:
        batch = next(batches)
      except StopIteration:
        raise DataError(f"config.data.task={config.data.task!r} ran out of training batches at step "
                        f"{step}") from None
      state, step_metrics = train_step(state, batch)
      step += 1
      metrics.add(step, step_metrics)
      if step == start_step + 1:
        jax.block_until_ready(step_metrics)
        writer.print(f"first step (compile + run) took {time.time() - compile_start:.1f} s")
        metrics.restart_clock()
      writer.progress(step)
      log, save = _due(step, config.log_every_steps), _due(step, config.checkpoint.every_steps)
      final = step == config.total_steps
      stopping = stop.raised(sync=log or save)
      extra = {}
      if divergence is not None and (_due(step, config.diagnostics_every_steps) or final):
        extra = jax.device_get(divergence(state["params"]))
      if log or save or stopping or final or extra:
        record = metrics.flush(extra)
        last.update(record, step=step)
        writer.progress(step, {"loss": record.get("loss")})
      if evaluations and (_due(step, config.eval_every_steps) or final):
        last.update(run.evaluate(state, step))
        evaluated_at = step
        metrics.restart_clock()                  # steps/s measures training steps only
      if save or stopping or final:
        run.save(state, step, batches.state())
        metrics.restart_clock()
      if stopping:
        writer.print(f"stopped by signal {stop.name or '(sent to another process)'} at step {step}; "
                     "checkpoint saved")
        break
    if step == start_step and start_step > 0:
      writer.print(f"nothing to do: the checkpoint is at step {step} >= total_steps={config.total_steps}")
  last["step"] = step
  last["preempted"] = stop.signum is not None
  # A before/after table only when "after" was evaluated at the last step (a run stopped by a signal between
  # evaluations writes none: its resumed run's evaluations are the ones that count).
  rows = (summary.before_after_table(first_eval, last)
          if first_eval and step > start_step and evaluated_at == step else [])
  if rows and is_main:
    print("\n" + summary.write_summary(workdir, config, rows, start_step, step, time.time() - run_start), flush=True)
  return last


# ---- 1. where the run starts and what it trains --------------------------------------------------------
def _find_resume(config, workdir: str) -> checkpointing.Resume:
  """The resume order, read-only: this workdir's newest readable checkpoint -> config.resume_from -> init.
  Unreadable newer checkpoints of this workdir are noted and moved aside once the run holds the workdir."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  has_dir = files.as_path(ckpt_dir).is_dir()
  if jax.process_count() > 1:
    # Every process must take the same branch (orbax managers synchronise across processes), and process 0
    # may already be creating the directory while another looks: process 0 decides for all.
    from jax.experimental import multihost_utils
    has_dir = bool(multihost_utils.broadcast_one_to_all(np.asarray(has_dir)))
  if has_dir:
    own = checkpointing.Checkpointer(ckpt_dir, read_only=True)
    steps = own.all_steps()
    step, meta, _ = checkpointing.newest_readable(own, may_set_aside=False)
    if step is not None:
      unreadable = tuple(s for s in steps if s > step)
      return checkpointing.Resume("workdir", own, step, meta, set_aside=unreadable)
    if steps:
      _log.warning("no readable checkpoint in %s (steps %s are damaged)", ckpt_dir, steps)
  if config.resume_from:
    other_dir = checkpointing.checkpoint_dir(config.resume_from)
    other = (checkpointing.Checkpointer(other_dir, read_only=True) if files.as_path(other_dir).is_dir() else None)
    step, meta, _ = (None, None, None) if other is None else checkpointing.newest_readable(other, may_set_aside=False)
    if step is None:
      raise ConfigError(f"config.resume_from={config.resume_from!r}: no readable checkpoint there (expected a "
                        "workdir or its checkpoints/ directory)")
    return checkpointing.Resume("resume_from", other, step, meta)
  return checkpointing.Resume("init")


def _model_config(config, resume: checkpointing.Resume):
  """The model this run trains: the checkpoint's (checked against what the config describes) or the init
  source's grown as config.growth says."""
  try:
    base = setup_lib.base_model_config(config)       # raises for a missing / malformed init source
  except ConfigError:
    if resume.checkpointer is None:
      raise
    base = None                                    # resuming: the init source is not needed
  expected = setup_lib.grown_model_config(config, base) if base is not None else None
  if resume.checkpointer is None:
    return expected
  where = f"{resume.checkpointer.directory}/{resume.step}"
  mc = checkpointing.model_config_from_meta(resume.meta, where)
  # The compute dtype and settings (remat, scan_layers) are the config's, not the checkpoint's.
  compute = {k: v for k, v in config_lib.model_overrides(config).items() if k in ("dtype", "remat", "scan_layers")}
  mc = mc.replace(**compute) if compute else mc
  if expected is not None:
    diff = _config_diff(mc, expected)
    if diff:
      raise CheckpointMismatchError(
          f"{where} holds a checkpoint of another model than config.init.source={config.init.source!r} with "
          f"config.growth ({'; '.join(diff)}); use another --workdir or remove that checkpoint")
  method = resume.meta.get("method", {}).get("name")
  if method != config.train.mode:
    raise CheckpointMismatchError(f"{where} was trained with train.mode={method!r}, the config says "
                                  f"{config.train.mode!r}; use another --workdir")
  return mc


def _config_diff(a, b, ignore=("dtype",)) -> list[str]:
  da, db = a.to_dict(), b.to_dict()
  return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in sorted(da) if k not in ignore and da[k] != db[k]]


def _tokenizer(config):
  """The tokenizer, when the training task, the reference text or an evaluation reads text (each declares it)."""
  if not (pipeline.needs_tokenizer(config) or registry.needs_tokenizer(tuple(config.eval.tasks))):
    return None
  from grow_jax.model.tokenizer import load_tokenizer
  return load_tokenizer(config.data.tokenizer or config.init.source)


# ---- 3. state --------------------------------------------------------------------------------------------
def _set_aside_unreadable(resume: checkpointing.Resume) -> checkpointing.Resume:
  """Moves the workdir's unreadable checkpoints newer than the resume step aside (the run holds the workdir
  now), so that new saves at those steps are possible; they are kept and reported, never deleted. Every process
  calls it (process 0 moves what it found; the others wait, so none lists the directory before the move)."""
  if resume.origin != "workdir":
    return resume
  moved = resume.checkpointer.set_aside(resume.set_aside, "its meta or tree metadata cannot be read")
  return checkpointing.Resume(resume.origin, resume.checkpointer, resume.step, resume.meta, moved)


def _restore_or_init(config, mesh, resume, train_setup, train_iter, tokenizer):
  """(state, resume): the checkpoint restored (an unreadable one moved aside and the next older tried), or
  the init weights grown and the method's state built."""
  while resume.checkpointer is not None:
    error = None
    try:
      state, data_state, _ = resume.checkpointer.restore(resume.step, train_setup.abstract_state)
    except CheckpointMismatchError:
      raise
    except Exception as e:  # a damaged array file: tensorstore / orbax raise many types
      error = e
    # Each process reads its own shards, so a damaged file may fail some processes only: one verdict for all.
    if checkpointing.all_processes(error is None):
      if data_state:
        train_iter.restore(data_state)
      return state, resume
    reason = one_line(error) if error is not None else "it could not be restored on another process"
    if resume.origin != "workdir":
      raise CheckpointMismatchError(f"{resume.describe()} cannot be restored: {reason}") from error
    moved = resume.set_aside + resume.checkpointer.set_aside([resume.step], reason)
    step, meta, more = checkpointing.newest_readable(resume.checkpointer, may_set_aside=True)
    resume = (checkpointing.Resume("workdir", resume.checkpointer, step, meta, moved + tuple(more))
              if step is not None else _find_resume_elsewhere(config, moved))
  _log.info("resume order: no checkpoint -> init source %s", config.init.source)
  mc, base = setup_lib.init_params(config, mesh)
  reference = lambda n: _reference_batches(config, mc, tokenizer, n)     # read only by a method that asks
  _, state = setup_lib.build(config, mc, base, mesh, reference_batches=reference)
  return state, resume


def _find_resume_elsewhere(config, moved) -> checkpointing.Resume:
  if config.resume_from:
    raise ConfigError("every checkpoint of this workdir is unreadable (moved aside: "
                      f"{list(moved)}); remove the workdir's checkpoints to restart from config.resume_from")
  return checkpointing.Resume("init", set_aside=moved)


def _reference_batches(config, mc, tokenizer, n: int | None) -> list:
  """At most n batches (None: all) of original-domain text for a method's `prepare`:
  config.train.reference_task (default: general English prose, stdlib_text; the training task itself only for
  synthetic runs), its eval split — never the new task's text by default."""
  task = pipeline.reference_task(config)
  return list(pipeline.batch_iterator(
      config, config.data.eval_split, batch_size=config.eval.batch_size, model_config=mc, tokenizer=tokenizer,
      task=task, max_examples=None if n is None else n * config.eval.batch_size, finite=True))


# ---- 4. the step's target capacity and the evaluations ----------------------------------------------------
def _target_capacity(config, train_iter, mesh) -> int:
  """config.train.target_capacity, with -1 measured on the next few training batches (not consumed; per
  group of microbatch rows on one data shard), the same on every process (a static shape)."""
  if config.train.target_capacity >= 0:
    return config.train.target_capacity
  position = train_iter.state()
  sample = [sharding.to_microbatches(next(train_iter), config.grad_accum_steps) for _ in range(8)]
  train_iter.restore(position)
  groups = sharding.data_parallel_size(mesh) // sharding.batch_blocks(mesh)[1]      # this process's shards
  capacity = step_lib.target_capacity_for(sample, groups=max(groups, 1))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    every = multihost_utils.process_allgather(np.asarray(capacity if capacity else 1 << 30))
    capacity = int(every.max()) if int(every.max()) != 1 << 30 else 0
  return capacity


def _evaluations(config, mc, mesh, workdir, tokenizer, block, blocks) -> dict[str, EvalFn]:
  def heldout_batches(split, batch_size, limit):
    return pipeline.batch_iterator(config, split or config.data.eval_split, batch_size=batch_size, model_config=mc,
                                   tokenizer=tokenizer, max_examples=limit, finite=True, process_index=block,
                                   process_count=blocks)

  def base_model():
    """The init source's own weights, before growth: the KL reference."""
    from grow_jax import formats
    return formats.load_checkpoint(config.init.source, seed=config.seed, **config_lib.model_overrides(config))

  limit = config.eval.max_examples if config.eval.max_examples > 0 else None
  ctx = registry.EvalContext(mc, tokenizer=tokenizer, split=config.eval.split, limit=limit,
                             batch_size=config.eval.batch_size, max_len=config.eval.max_len,
                             max_new_tokens=config.eval.max_new_tokens, cache_dir=os.path.join(workdir, "eval_cache"),
                             base_model=base_model, base_id=config.init.source, heldout_batches=heldout_batches,
                             mesh=mesh, loss_chunk=config.train.loss_chunk)
  return registry.build_all(tuple(config.eval.tasks), ctx)


# ---- 5. the loop's helpers ----------------------------------------------------------------------------
def _due(step: int, every: int) -> bool:
  """Whether a periodic action every `every` steps (0 = never) falls on `step`."""
  return bool(every) and step % every == 0


@dataclasses.dataclass
class _Run:
  """What the loop's evaluations and saves need besides the state, which they are given explicitly."""
  config: ml_collections.ConfigDict
  mc: Any
  mesh: Any
  train_setup: setup_lib.TrainSetup
  writer: MetricWriter
  ckpt: checkpointing.Checkpointer
  evaluations: dict[str, EvalFn]
  model_params: Callable
  all_finite: Callable

  def evaluate(self, state, step: int) -> dict[str, Any]:
    t = time.time()
    params = self.model_params(state["params"])
    out = {f"eval/{name}/{k}": v for name, fn in self.evaluations.items() for k, v in fn(params).items()}
    out["eval/seconds"] = time.time() - t
    self.writer.write_scalars(step, out)
    self.writer.print(f"step {step}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in out.items()))
    return out

  def save(self, state, step: int, data_state) -> None:
    if not bool(self.all_finite(state["params"])):
      raise TrainingDivergedError(f"parameters are not finite at step {step}: not saving. {_kept(self.ckpt)}")
    meta = checkpointing.make_meta(self.config, self.mc, self.train_setup.method, sharding.describe(self.mesh), step)
    self.writer.flush()                  # the metrics up to `step` are stored before its checkpoint can exist
    try:
      self.ckpt.save(step, state, data_state, meta, force=True)
    except OSError as e:     # disk full, unwritable: orbax's temporary directory is never the latest
      raise WorkdirError(f"checkpoint step {step} could not be written to {self.ckpt.directory}: "
                         f"{e.strerror or e}. {_kept(self.ckpt)}") from None


def _close_checkpointer(ckpt: checkpointing.Checkpointer) -> None:
  """Waits for an asynchronous save to finish; a save that failed is one WorkdirError."""
  try:
    ckpt.close()
  except OSError as e:
    raise WorkdirError(f"the last checkpoint could not be written to {ckpt.directory}: {e.strerror or e}. "
                       f"{_kept(ckpt)}") from None


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


def _kept(ckpt: checkpointing.Checkpointer) -> str:
  latest = ckpt.latest_step()
  if latest is None:
    return f"No checkpoint was saved yet in {ckpt.directory}."
  return f"The last good checkpoint (step {latest}) is kept in {ckpt.directory}."
