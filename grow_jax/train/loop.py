"""The training loop: `train_and_evaluate(config, workdir)`.

One function, in banner sections:
  1. check the config (mesh, batch, data, resume target, init source): cheap, nothing written yet
  2. workdir: config.json, metric writers
  3. model: resume order, logged — this workdir's latest checkpoint -> config.resume_from -> config.init.source
     (params only, fresh optimizer; then growth) -> scratch
  4. method (which leaves train), optimizer, state: abstract first, then materialised or restored sharded
  5. jit the train / eval steps with explicit shardings and a donated state
  6. the loop: train, log, evaluate, checkpoint; SIGTERM saves and exits; a NaN/inf loss stops the run

Evaluation is pluggable: `config.eval.tasks` names entries of `EVALUATORS` (register more with
`@register_evaluator(name)`), and `train_and_evaluate(..., eval_fns={name: fn})` adds functions directly.
Either way an evaluator is `eval_fn(params) -> {metric: value}` on the params `model.forward` takes
(LoRA merged); results are logged as `eval/<name>/<metric>`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from grow_jax.train import checkpointing
from grow_jax.growth import operators as growth
from grow_jax.methods import registry as methods
from grow_jax.train import optim
from grow_jax.train import sharding
from grow_jax.train import step as step_lib
from grow_jax.data import synthetic
from grow_jax.model import transformer as model_lib
from grow_jax.train.writers import MetricWriter, format_table
from grow_jax.model.config import ConfigError, ModelConfig, get_preset

Params = dict[str, Any]
EvalFn = Callable[[Params], Mapping[str, float]]

META_FORMAT = "grow_jax.train/1"
# config.train keys that are the trainer's own; the rest go to methods.setup_method as options.
_TRAINER_KEYS = ("mode", "loss_chunk", "reference_task")


class TrainingDivergedError(RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions that report bad input (config, mesh, data, checkpoints) or a diverged run: main.py prints
  them as one line instead of a traceback."""
  from grow_jax.data import CacheError, TaskError
  return (ConfigError, sharding.ShardingError, synthetic.DataError, checkpointing.CheckpointMismatchError,
          TrainingDivergedError, TaskError, CacheError)


# ---- evaluators: the extension point ---------------------------------------------------------------------
@dataclasses.dataclass
class EvalContext:
  """What an evaluator factory may use to build its `eval_fn(params) -> dict`."""

  config: ml_collections.ConfigDict
  model_config: ModelConfig
  mesh: jax.sharding.Mesh
  workdir: str
  make_batches: Callable[..., Iterator[dict[str, np.ndarray]]]   # (split, batch_size, max_examples)
  tokenizer: Any = None


EVALUATORS: dict[str, Callable[[EvalContext], EvalFn]] = {}


def register_evaluator(name: str):
  """Decorator: `@register_evaluator('winogrande')` on a factory `(EvalContext) -> eval_fn(params) -> dict`."""
  def wrap(factory):
    EVALUATORS[name] = factory
    return factory
  return wrap


@register_evaluator("heldout_loss")
def _heldout_loss(ctx: EvalContext) -> EvalFn:
  """Mean target-token cross-entropy (and perplexity) on the held-out split of the training task."""
  cfg = ctx.config
  eval_step = jax.jit(step_lib.make_eval_step(ctx.model_config, loss_chunk=cfg.train.loss_chunk),
                      out_shardings=sharding.replicated(ctx.mesh))

  def eval_fn(params):
    total, count = 0.0, 0.0
    for local in ctx.make_batches(cfg.data.eval_split, cfg.eval.batch_size, cfg.eval.max_examples):
      s, n = eval_step(params, sharding.global_batch(local, ctx.mesh, 1))
      total, count = total + float(s), count + float(n)
    if count == 0:
      raise synthetic.DataError(f"config.data.eval_split={cfg.data.eval_split!r} gave no target tokens")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}

  return eval_fn


def _data_task_names() -> list[str]:
  from grow_jax import data
  return data.list_tasks()


def evaluator_factory(entry: str) -> Callable[[EvalContext], EvalFn]:
  """A registered evaluator, or else a `grow_jax.data` task ('name' or 'name:split') scored as
  grow_jax.task_eval says."""
  if entry in EVALUATORS:
    return EVALUATORS[entry]
  name, _, split = entry.partition(":")
  return lambda ctx: _data_task_evaluator(ctx, name, split or ctx.config.eval.split)


def _is_known_evaluator(entry: str) -> bool:
  return entry in EVALUATORS or entry.partition(":")[0] in _data_task_names()


def _data_task_evaluator(ctx: EvalContext, name: str, split: str) -> EvalFn:
  """Scores data task `name` on `split` (at most config.eval.max_examples examples).

  KL(base ‖ model) is measured against the init source's own (ungrown) weights; their final hidden states
  are computed once and cached under <workdir>/eval_cache.
  """
  from grow_jax.evaluation import scoring as evaluation
  from grow_jax.evaluation import tasks as task_eval
  cfg = ctx.config
  limit = cfg.eval.max_examples if cfg.eval.max_examples > 0 else None
  tasks = task_eval.eval_tasks(name, split=split, limit=limit, max_new_tokens=cfg.eval.max_new_tokens)
  base = None
  if any(t.kind == "kl" for t in tasks):
    base = _base_model(cfg)
  evaluator = evaluation.Evaluator(ctx.tokenizer, tasks, base=base, base_id=cfg.init.source,
                                   batch_size=cfg.eval.batch_size, max_len=cfg.data.seq_len,
                                   cache_dir=os.path.join(ctx.workdir, "eval_cache"))
  evaluate = evaluator.eval_fn(ctx.model_config)

  def eval_fn(params):
    # '<name>/bleu' -> 'bleu', the KL task's '<name>_kl/kl' -> 'kl/kl' (logged as eval/<name>/...).
    return {key[len(name) + 1:] if key.startswith(name) else key: value
            for key, value in evaluate(params).items()}

  return eval_fn


def _base_model(config) -> tuple[ModelConfig, Params]:
  """The init source's weights before growth (KL reference)."""
  preset = _scratch_preset(config.init.source)
  if preset is not None:
    mc = source_model_config(config)
    return mc, model_lib.init_params(mc, jax.random.key(config.seed))
  from grow_jax.formats import sources as checkpoints
  return checkpoints.load_checkpoint(config.init.source, **model_overrides(config))


def before_after_table(first: Mapping[str, Any], last: Mapping[str, Any]) -> list[tuple[str, float, float]]:
  """(metric, before, after) for every eval metric present at both ends of a run."""
  rows = []
  for key, before in first.items():
    if key.endswith(("/num_examples", "/num_tokens", "/tokens")) or key == "eval/seconds":
      continue                                    # counts, not measurements
    if key.startswith("eval/") and key in last and isinstance(before, (int, float)):
      rows.append((key[len("eval/"):], float(before), float(last[key])))
  return rows


def write_summary(workdir: str, config, rows: list[tuple[str, float, float]], start_step: int, step: int,
                  wall_seconds: float) -> str:
  """<workdir>/summary.json and summary.md: the before/after table of this run. Returns the markdown."""
  lines = [f"# {config.train.mode}: {config.init.source}, growth x{config.growth.factor} "
           f"(layers {config.growth.layers}), {config.data.task}, steps {start_step} -> {step}", "",
           "| metric | before | after | change |", "|---|---|---|---|"]
  lines += [f"| {k} | {b:.4g} | {a:.4g} | {a - b:+.4g} |" for k, b, a in rows]
  lines += ["", f"wall time {wall_seconds / 60:.1f} min"]
  text = "\n".join(lines) + "\n"
  summary = {"mode": config.train.mode, "init": config.init.source, "growth": config.growth.to_dict(),
             "task": config.data.task, "steps": [start_step, step], "wall_seconds": wall_seconds,
             "metrics": {k: {"before": b, "after": a} for k, b, a in rows}}
  for name, content in (("summary.json", json.dumps(summary, indent=2) + "\n"), ("summary.md", text)):
    tmp = os.path.join(workdir, f".{name}.tmp")
    with open(tmp, "w") as f:
      f.write(content)
    os.replace(tmp, os.path.join(workdir, name))
  return text


# ---- data ------------------------------------------------------------------------------------------------
def make_batch_iterator(config, split: str, *, batch_size: int, model_config: ModelConfig, tokenizer=None,
                        task: str | None = None, max_examples: int | None = None, finite: bool = False,
                        seed: int | None = None, per_process: bool = True):
  """This process's batches of `config.data.task` (or `task`): an iterator with state() / restore().

  finite=True: one ordered pass over at most `max_examples` examples (evaluation); else an endless
  shuffled stream (training). per_process=False: every process gets the whole global batch.
  """
  task = task or config.data.task
  seed = config.seed if seed is None else seed
  pi, pc = (jax.process_index(), jax.process_count()) if per_process else (0, 1)
  if task == "synthetic":
    n = config.data.num_examples
    if finite:
      n = max_examples if max_examples else n
    source = synthetic.SyntheticSource(
        split=split, global_batch_size=batch_size, seq_len=config.data.seq_len, vocab_size=model_config.vocab_size,
        seed=seed, packing=config.data.packing, num_examples=n, process_index=pi, process_count=pc,
        bos_id=model_config.bos_token_id, eos_id=model_config.eos_token_id)
    if finite:
      rows = n if n > 0 else batch_size
      return _take(source, -(-rows // batch_size))
    return source
  from grow_jax import data
  limit = max_examples if max_examples and max_examples > 0 else None
  if not finite and config.data.num_examples > 0:
    limit = config.data.num_examples
  examples = data.get_task(task).examples(split, limit=limit)
  sequences, _ = data.tokenize_examples(examples, tokenizer, config.data.seq_len, on_overflow="skip")
  if not sequences:
    raise synthetic.DataError(f"config.data.task={task!r} split {split!r} has no usable examples "
                              f"({len(examples)} read, none fit seq_len={config.data.seq_len}); expected at least one")
  return data.BatchIterator(sequences, batch_size=batch_size, seq_len=config.data.seq_len, pad_id=tokenizer.pad_id,
                            packing=config.data.packing, shuffle=not finite, seed=seed,
                            num_epochs=1 if finite else None, drop_remainder=not finite,
                            process_index=pi, process_count=pc)


def _take(iterator, n):
  for _ in range(n):
    yield next(iterator)


# ---- model configs without weights (for the checks before heavy work) -----------------------------------
def _scratch_preset(source: str) -> str | None:
  return source.split(":", 1)[1] if source.startswith("scratch:") else None


def model_overrides(config) -> dict[str, Any]:
  """config.model fields that are set (None = keep the source's value)."""
  return {k: v for k, v in config.model.items() if v is not None}


def source_model_config(config) -> ModelConfig | None:
  """The init source's ModelConfig (with config.model overrides), read without weights; None if that
  would need the weights (a GGUF not converted yet). Raises for a missing or malformed source."""
  source = config.init.source
  overrides = model_overrides(config)
  preset = _scratch_preset(source)
  if preset is not None:
    try:
      return get_preset(preset, **overrides)
    except TypeError as e:
      raise ConfigError(f"config.model: {e}") from None
  shape_keys = sorted(set(overrides) - {"dtype", "param_dtype"})
  if shape_keys:
    raise ConfigError(f"config.model.{shape_keys[0]}={overrides[shape_keys[0]]!r} changes the architecture; "
                      f"only scratch:<preset> sources allow that (config.init.source={source!r})")
  from grow_jax.formats import sources as checkpoints
  try:
    src = checkpoints.parse_source(source)
  except ConfigError as e:
    raise ConfigError(f"config.init.source={source!r}: {e}") from None
  if src.kind == "hf":
    from grow_jax.formats import hf_format
    path = src.path / checkpoints.HF_CONFIG
    if not path.is_file():
      raise ConfigError(f"config.init.source={source!r}: {str(path)!r} does not exist")
    return hf_format.config_from_hf(json.loads(path.read_text()), **overrides)
  cached = checkpoints.conversion_cache_path(src)
  if cached.is_file():
    from safetensors import safe_open
    with safe_open(str(cached), framework="numpy") as f:
      return ModelConfig.from_dict(json.loads(f.metadata()["config"])).replace(**overrides)
  return None


def grown_model_config(config, base: ModelConfig) -> ModelConfig:
  g = config.growth
  if g.factor == 1:
    return base
  return growth.grow_config(base, factor=g.factor, layers=g.layers)


def _config_diff(a: ModelConfig, b: ModelConfig, ignore=("dtype",)) -> list[str]:
  da, db = a.to_dict(), b.to_dict()
  return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in sorted(da) if k not in ignore and da[k] != db[k]]


def check_config(config) -> None:
  """Value checks ml_collections' types do not cover; one message naming the field and what is expected."""
  def need(ok, field, value, expected):
    if not ok:
      raise ConfigError(f"config.{field}={value!r}: expected {expected}")
  need(config.total_steps >= 0, "total_steps", config.total_steps, "an integer >= 0")
  need(config.batch_size > 0, "batch_size", config.batch_size, "a positive integer")
  need(config.grad_accum_steps > 0, "grad_accum_steps", config.grad_accum_steps, "a positive integer")
  for field in ("log_every_steps", "eval_every_steps"):
    need(config[field] >= 0, field, config[field], "an integer >= 0 (0 = never)")
  need(config.checkpoint.every_steps >= 0, "checkpoint.every_steps", config.checkpoint.every_steps,
       "an integer >= 0 (0 = only at the end)")
  need(config.checkpoint.keep > 0, "checkpoint.keep", config.checkpoint.keep, "a positive integer")
  need(config.train.mode in methods.MODES, "train.mode", config.train.mode, f"one of {list(methods.MODES)}")
  need(config.growth.factor >= 1, "growth.factor", config.growth.factor, "1 (no growth) or an integer >= 2")
  need(config.data.seq_len > 1, "data.seq_len", config.data.seq_len, "an integer >= 2")
  need(config.train.loss_chunk >= 0, "train.loss_chunk", config.train.loss_chunk, "an integer >= 0")
  need(config.data.num_examples != 0, "data.num_examples", config.data.num_examples,
       "-1 (all) or a positive count, not an empty training set")
  for name in config.eval.tasks:
    need(_is_known_evaluator(name), "eval.tasks", tuple(config.eval.tasks),
         f"names from {sorted(EVALUATORS)} or grow_jax.data tasks {_data_task_names()} (optionally 'task:split')")
  try:
    optim.schedule_fn(optimizer_config(config))
  except ConfigError as e:
    raise ConfigError(f"config.optimizer: {e}") from None


def optimizer_config(config) -> dict[str, Any]:
  opt = dict(config.optimizer)
  opt["total_steps"] = max(config.total_steps, opt.get("warmup_steps", 0) + 1)
  return opt


def method_options(config) -> dict[str, Any]:
  return {k: v for k, v in config.train.items() if k not in _TRAINER_KEYS}


# ---- method + optimizer + state -----------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
  """Everything the loop needs about the trained model (built by `build_setup`)."""
  model_config: ModelConfig
  method: methods.TrainMethod        # params / anchor / fisher may be abstract (resume path)
  tx: Any
  state_shardings: Any
  abstract_state: Any                # ShapeDtypeStructs carrying `state_shardings`
  step_method: step_lib.StepMethod


def _reference_batches(config, model_config, tokenizer):
  if config.train.mode != "ewc":
    return None
  task = config.train.reference_task or config.data.task
  it = make_batch_iterator(config, config.data.eval_split, batch_size=config.eval.batch_size,
                           model_config=model_config, tokenizer=tokenizer, task=task,
                           max_examples=config.train.ewc_batches * config.eval.batch_size, finite=True,
                           per_process=False)
  return list(it)


def build_setup(config, model_config: ModelConfig, base_params, mesh, *, tokenizer=None,
                abstract: bool = False) -> tuple[Setup, Any]:
  """Method, optimizer and state for `base_params` (the possibly grown model).

  abstract=False: base_params are real (sharded) arrays; returns (setup, materialised sharded state).
  abstract=True:  base_params are ShapeDtypeStructs; nothing is computed (jax.eval_shape); returns
                  (setup, None) and `setup.abstract_state` is the restore target.
  """
  mode = config.train.mode
  options = method_options(config)
  rng = jax.random.key(config.seed + 1)
  ref = _reference_batches(config, model_config, tokenizer)
  loss_fn = lambda p, b: step_lib.mean_loss(model_config, p, b, loss_chunk=config.train.loss_chunk)
  opt = optimizer_config(config)

  if abstract:
    captured = {}

    def build(base):
      m = methods.setup_method(mode, model_config, base, options, rng=rng, reference_batches=ref, loss_fn=loss_fn)
      captured["method"] = m
      return m.params, m.anchor, m.fisher, optim.make_optimizer(opt, m).init(m.params)

    params, anchor, fisher, opt_state = jax.eval_shape(build, base_params)
    method = captured["method"]._replace(params=params, anchor=anchor, fisher=fisher)
  else:
    method = methods.setup_method(mode, model_config, base_params, options, rng=rng, reference_batches=ref,
                                  loss_fn=loss_fn)
    params = method.params
    opt_state = None
  tx = optim.make_optimizer(opt, method)

  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  if opt_state is None:
    opt_state = jax.eval_shape(tx.init, abstract_params)
  param_sh = sharding.param_shardings(abstract_params, mesh)
  opt_sh = sharding.like_params_shardings(opt_state, param_sh, abstract_params, mesh)
  rep = sharding.replicated(mesh)
  state_sh = {"step": rep, "params": param_sh, "opt_state": opt_sh, "rng": rep}
  rng_data = jax.random.key_data(jax.random.key(config.seed))
  abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params, "opt_state": opt_state,
                    "rng": jax.ShapeDtypeStruct(rng_data.shape, rng_data.dtype)}
  abstract_state = checkpointing.abstract_with_shardings(abstract_state, state_sh)

  trainable = {p: l == "trainable" for p, l in sharding.flatten_with_paths(method.labels)}
  penalty = None
  if method.l2sp_coef:
    penalty = step_lib.regularizer_penalty("l2sp", method.l2sp_coef)
  elif method.ewc_coef:
    penalty = step_lib.regularizer_penalty("ewc", method.ewc_coef)
  step_method = step_lib.StepMethod(trainable, method.model_params, penalty)
  setup = Setup(model_config, method, tx, state_sh, abstract_state, step_method)
  if abstract:
    return setup, None

  params = jax.device_put(params, param_sh)
  opt_state = jax.device_put(tx.init(params), opt_sh)
  state = {"step": jax.device_put(jnp.zeros((), jnp.int32), rep), "params": params, "opt_state": opt_state,
           "rng": jax.device_put(rng_data, rep)}
  return setup, state


def init_base_params(config, mesh) -> tuple[ModelConfig, Params]:
  """Weights from config.init.source (or random for scratch:<preset>), placed sharded, then grown."""
  source = config.init.source
  preset = _scratch_preset(source)
  if preset is not None:
    mc = source_model_config(config)
    shardings = sharding.param_shardings(model_lib.abstract_params(mc), mesh)
    init = jax.jit(lambda key: model_lib.init_params(mc, key), out_shardings=shardings)
    params = init(jax.random.key(config.seed))
  else:
    from grow_jax.formats import sources as checkpoints
    mc, host = checkpoints.load_checkpoint(source, **model_overrides(config))
    params = sharding.put_global(host, sharding.param_shardings(host, mesh))
    del host
  g = config.growth
  if g.factor > 1:
    grown_mc = growth.grow_config(mc, factor=g.factor, layers=g.layers)
    shardings = sharding.param_shardings(model_lib.abstract_params(grown_mc), mesh)
    grow = jax.jit(lambda p: growth.grow_mlp(mc, p, factor=g.factor, layers=g.layers, noise_scale=g.noise_scale,
                                             seed=g.seed)[1], out_shardings=shardings)
    params, mc = grow(params), grown_mc
  return mc, params


def jit_train_step(config, setup: Setup, mesh):
  """`train_step(state, batch) -> (state, metrics)` jitted with explicit shardings and a donated state."""
  step_fn = step_lib.make_train_step(setup.model_config, setup.step_method, setup.tx,
                                     schedule=optim.schedule_fn(optimizer_config(config)),
                                     loss_chunk=config.train.loss_chunk)
  return jax.jit(step_fn, in_shardings=(setup.state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(setup.state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


def _meta(config, mc: ModelConfig, mesh, step: int) -> dict[str, Any]:
  return {"format": META_FORMAT, "step": int(step), "model_config": mc.to_dict(), "mode": config.train.mode,
          "init_source": config.init.source, "growth": dict(config.growth), "train": config.train.to_dict(),
          "mesh": sharding.describe(mesh)}


def _model_config_from_meta(meta: Mapping[str, Any], where: str, config) -> ModelConfig:
  if meta.get("format") != META_FORMAT or "model_config" not in meta:
    raise checkpointing.CheckpointMismatchError(f"{where} is not a grow_jax training checkpoint "
                                                f"(meta format {meta.get('format')!r}, expected {META_FORMAT!r})")
  mc = ModelConfig.from_dict(meta["model_config"])
  dtype = model_overrides(config).get("dtype")
  return mc.replace(dtype=dtype) if dtype else mc


# ---- the loop ------------------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       eval_fns: Mapping[str, EvalFn] | None = None) -> dict[str, Any]:
  """Trains as `config` says, writing checkpoints and metrics under `workdir`; returns the last metrics."""
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0

  # ==== 1. Check the config: cheap, before any heavy work; nothing is written yet ========================
  check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.batch_size, config.grad_accum_steps, mesh, jax.process_count())
  try:
    sharding.check_batch_size(config.eval.batch_size, 1, mesh, jax.process_count())
  except sharding.ShardingError as e:
    raise sharding.ShardingError(str(e).replace("batch_size=", "eval.batch_size=", 1)) from None

  ckpt_dir = os.path.join(workdir, "checkpoints")
  has_ckpt_dir = os.path.isdir(ckpt_dir)
  if jax.process_count() > 1:
    # Every process must take the same branch (orbax managers synchronise across processes), and process 0
    # may already be creating the directory while another looks: process 0 decides for all.
    from jax.experimental import multihost_utils
    has_ckpt_dir = bool(multihost_utils.broadcast_one_to_all(np.asarray(has_ckpt_dir)))
  existing = checkpointing.Checkpointer(ckpt_dir, read_only=True) if has_ckpt_dir else None
  latest = existing.latest_step() if existing else None
  if latest is not None:
    resume = ("workdir", existing, latest)
  elif config.resume_from:
    rdir = checkpointing.checkpoint_dir(config.resume_from)
    other = checkpointing.Checkpointer(rdir, read_only=True) if os.path.isdir(rdir) else None
    if other is None or other.latest_step() is None:
      raise ConfigError(f"config.resume_from={config.resume_from!r}: no checkpoint there (expected a workdir or "
                        "its checkpoints/ directory)")
    resume = ("resume_from", other, other.latest_step())
  else:
    resume = ("init", None, None)

  # The model the config describes (init source + growth), from config files only.
  try:
    base_mc = source_model_config(config)       # raises for a missing / malformed init source
  except ConfigError:
    if resume[0] == "init":
      raise
    base_mc = None                              # resuming: the init source is not needed
  expected_mc = grown_model_config(config, base_mc) if base_mc is not None else None
  mc = expected_mc                              # None until the weights are read (a GGUF not converted yet)
  if resume[1] is not None:
    where = f"{resume[1].directory}/{resume[2]}"
    mc = _model_config_from_meta(resume[1].read_meta(resume[2]), where, config)
    if expected_mc is not None and _config_diff(mc, expected_mc):
      raise checkpointing.CheckpointMismatchError(
          f"{where} holds a checkpoint of another model than config.init.source={config.init.source!r} with "
          f"config.growth ({'; '.join(_config_diff(mc, expected_mc))}); use another --workdir or remove that "
          "checkpoint")

  tokenizer = None
  needs_text = any(name not in EVALUATORS for name in config.eval.tasks)
  if config.data.task != "synthetic" or config.train.reference_task not in ("", "synthetic") or needs_text:
    from grow_jax.model import tokenizer as tokenizer_lib
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer or config.init.source)

  def make_train_iter(vocab_mc):
    return make_batch_iterator(config, config.data.train_split, batch_size=config.batch_size,
                               model_config=vocab_mc, tokenizer=tokenizer)

  # Builds (and so checks) the training data now; the synthetic task's ids depend on the vocab only.
  train_iter = make_train_iter(mc or get_preset("tiny"))

  setup = None
  if resume[1] is not None:
    # The restore target, abstract (no weights), checked leaf by leaf against the stored tree right away.
    setup, _ = build_setup(config, mc, model_lib.abstract_params(mc), mesh, tokenizer=tokenizer, abstract=True)
    checkpointing.compare_trees(setup.abstract_state, resume[1].stored_tree(resume[2]),
                                what=f"checkpoint {resume[1].directory}/{resume[2]}")

  # ==== 2. Workdir: config.json, metric writers ===========================================================
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  ckpt = checkpointing.Checkpointer(ckpt_dir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)

  # ==== 3. Model: workdir checkpoint -> resume_from -> init source (+ growth) -> scratch ===================
  # ==== 4. Method, optimizer, state (abstract first, then materialised / restored sharded) ================
  t0 = time.time()
  if resume[0] == "init":
    how = "scratch (random init)" if _scratch_preset(config.init.source) else "init source (params only)"
    logging.info("resume order: no checkpoint in %s, no resume_from -> %s %s", ckpt_dir, how, config.init.source)
    known_mc = mc
    mc, base_params = init_base_params(config, mesh)
    if known_mc is None and config.data.task == "synthetic":
      train_iter = make_train_iter(mc)
    setup, state = build_setup(config, mc, base_params, mesh, tokenizer=tokenizer)
    del base_params
  else:
    logging.info("resume order: %s checkpoint %s/%d", resume[0], resume[1].directory, resume[2])
    state, data_state, _ = resume[1].restore(resume[2], setup.abstract_state)
    if data_state:
      train_iter.restore(data_state)
  start_step = int(state["step"])
  logging.info("model ready at step %d in %.1f s", start_step, time.time() - t0)
  writer = MetricWriter(workdir, enabled=is_main, total_steps=config.total_steps, initial_step=start_step)
  writer.print(f"resume order -> {resume[0]}"
               + (f" ({resume[1].directory}, step {resume[2]})" if resume[1] is not None else
                  f" ({config.init.source})"))
  writer.print(_accounting_table(config, setup))

  # ==== 5. Jit the steps: explicit shardings, donated state ===============================================
  rep = sharding.replicated(mesh)
  train_step = jit_train_step(config, setup, mesh)
  all_finite = jax.jit(_all_finite, out_shardings=rep)
  merge_fn = jax.jit(setup.method.model_params)
  model_params_of = (lambda p: merge_fn(p)) if "lora" in state["params"] else (lambda p: p)
  divergence = None
  if mc.is_grown:
    divergence = jax.jit(lambda p: growth.clone_divergence(mc, p), out_shardings=rep)

  ctx = EvalContext(config, mc, mesh, workdir, tokenizer=tokenizer, make_batches=lambda split, bs, n: make_batch_iterator(
      config, split, batch_size=bs, model_config=mc, tokenizer=tokenizer, max_examples=n, finite=True))
  evaluators = {name.partition(":")[0]: evaluator_factory(name)(ctx) for name in config.eval.tasks}
  evaluators.update(eval_fns or {})

  def evaluate(step: int) -> dict[str, Any]:
    t = time.time()
    mp = model_params_of(state["params"])
    out = {}
    for name, fn in evaluators.items():
      for k, v in fn(mp).items():
        out[f"eval/{name}/{k}"] = v
    out["eval/seconds"] = time.time() - t
    writer.write_scalars(step, out)
    writer.print(f"step {step}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in out.items()))
    return out

  # ==== 6. The loop ========================================================================================
  stop = {"signal": None}

  def on_sigterm(signum, frame):
    stop["signal"] = signum
    logging.warning("SIGTERM: saving a checkpoint after this step and exiting")

  previous_handler = None
  try:
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:        # not the main thread (e.g. a notebook worker): no preemption handling
    pass

  tokens_per_step = config.batch_size * config.data.seq_len
  pending: list[tuple[int, dict]] = []
  last: dict[str, Any] = {"step": start_step}
  last_good_ckpt = ckpt.latest_step()
  window = {"t": time.time(), "steps": 0}
  step = start_step

  def kept() -> str:
    if last_good_ckpt is None:
      return f"No checkpoint was saved yet in {ckpt.directory}."
    return f"The last good checkpoint (step {last_good_ckpt}) is kept in {ckpt.directory}."

  def flush(extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fetch pending step metrics, stop on NaN/inf, write one jsonl line per step (`extra` joins the last)."""
    nonlocal pending
    if not pending:
      return {}
    host = jax.device_get([m for _, m in pending])
    elapsed = time.time() - window["t"]
    for (s, _), m in zip(pending, host):
      record = {k: float(v) for k, v in m.items() if k != "finite"}
      if not bool(m["finite"]):
        raise TrainingDivergedError(
            f"loss={record['loss']} grad_norm={record['grad_norm']} at step {s} (not finite): stopping. {kept()}")
      if s == pending[-1][0]:
        record.update(extra or {})
        if window["steps"]:
          record["steps_per_sec"] = window["steps"] / elapsed
          record["tokens_per_sec"] = window["steps"] * tokens_per_step / elapsed
      writer.write_scalars(s, record)
    out = record
    pending = []
    window.update(t=time.time(), steps=0)
    return out

  def save(s: int):
    nonlocal last_good_ckpt
    if not bool(all_finite(state["params"])):
      raise TrainingDivergedError(f"parameters are not finite at step {s}: not saving. {kept()}")
    if ckpt.save(s, state, train_iter.state(), _meta(config, mc, mesh, s), force=True):
      last_good_ckpt = s

  run_start = time.time()
  first_eval: dict[str, Any] = {}
  try:
    if config.eval.at_start and step == 0 and evaluators:
      first_eval = evaluate(0)
      last.update(first_eval)
      writer.restart_clock()                   # the ETA counts training steps only
    compile_t = time.time()
    while step < config.total_steps:
      try:
        local = next(train_iter)
      except StopIteration:
        raise synthetic.DataError(f"config.data.task={config.data.task!r} ran out of training batches at step "
                                  f"{step}") from None
      state, metrics = train_step(state, sharding.global_batch(local, mesh, config.grad_accum_steps))
      step += 1
      pending.append((step, metrics))
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        writer.print(f"first step (compile + run) took {time.time() - compile_t:.1f} s")
        window.update(t=time.time(), steps=0)
      else:
        window["steps"] += 1
      writer.progress(step)
      log_due = config.log_every_steps and step % config.log_every_steps == 0
      eval_due = config.eval_every_steps and step % config.eval_every_steps == 0
      ckpt_due = config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0
      stopping = stop["signal"] is not None and jax.process_count() == 1
      if jax.process_count() > 1 and (log_due or ckpt_due):
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(stop["signal"] is not None))
        stopping = bool(np.any(flags))
      final = step == config.total_steps
      if log_due or ckpt_due or stopping or final:
        div = None
        if log_due and divergence is not None:
          div = divergence(state["params"])
        record = flush(jax.device_get(div))
        last.update(record, step=step)
        writer.progress(step, {"loss": record.get("loss")})
      if evaluators and (eval_due or final):
        last.update(evaluate(step))
      if ckpt_due or stopping or final:
        save(step)
      if eval_due or ckpt_due:
        window.update(t=time.time(), steps=0)     # steps/s measures training steps only
      if stopping:
        writer.print(f"stopped by signal {stop['signal']} at step {step}; checkpoint saved")
        break
    if step == start_step and start_step > 0:
      writer.print(f"nothing to do: the checkpoint is at step {step} >= total_steps={config.total_steps}")
  finally:
    ckpt.close()
    writer.close()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
  last["step"] = step
  last["preempted"] = stop["signal"] is not None
  rows = before_after_table(first_eval, last) if first_eval and step > start_step else []
  if rows and is_main:
    table = write_summary(workdir, config, rows, start_step, step, time.time() - run_start)
    print("\n" + table, flush=True)
  return last


def _accounting_table(config, setup: Setup) -> str:
  """Parameter accounting at start: grow_jax.accounting's table plus the actual optimizer-state bytes."""
  lines = []
  try:
    from grow_jax.methods import accounting
    reg = config.train.mode if config.train.mode in ("l2sp", "ewc") else None
    rows = {config.train.mode: accounting.account(setup.model_config, setup.method.params, setup.method.labels,
                                                  regularizer=reg)}
    lines.append(accounting.format_table(rows))
  except Exception as e:  # accounting is informative only
    lines.append(f"(accounting unavailable: {e})")
  opt_bytes = optim.state_bytes(setup.abstract_state["opt_state"])
  lines.append(format_table([(k, f"{v / 2**20:.2f} MiB") for k, v in opt_bytes.items()],
                            ("optimizer state", "bytes")))
  mc = setup.model_config
  grown = growth.grown_layers(mc)
  if grown:
    widths = sorted({mc.layer_mlp_branches(i) for i in grown})
    lines.append(f"grown layers ({len(grown)} of {mc.num_layers}): {list(grown)}; MLP branch widths {widths}")
  return "\n".join(lines)
