"""A study's runs: the grid a study file declares, expanded into runs; each run trained, evaluated and written
as one small JSON under `<out>/runs/`; a run whose JSON exists is skipped (the study resumes anywhere).

A study file (see experiments/studies/) defines

    get_config(arg)   the training config every run starts from (configs/ style)
    get_study(arg)    a dict of `StudySpec`'s fields: name, description, tasks {name: {dotted key: value}},
                      methods {name: {dotted key: value}}, grids {method: {dotted key: [values]}} (a value
                      '@<method>' takes the value selected for that method), extend_edges (the grid-edge rule:
                      how many points a geometric grid key may gain past an edge its pick sits on), seeds,
                      seeded_methods, task_methods, validation_eval and test_eval {task: [[entry, limit], ...]},
                      order, curves {every, max_examples, tasks {task: [entries]}, methods}, borrow, report
    select(task, method, runs, reference) -> run   the rule, fixed in advance, that picks a grid point on
                      validation (reference: the task's 'base' record and the records selected so far)

A study may also declare `borrow` {method: [study file[:arg], out dir, method there]}: a run of that method
(or 'base') whose twin in the other study is done is copied from the twin's record instead of trained again,
once the runner has checked that the two runs' training configs are equal (periodic evaluations aside) and
that they are scored on the same sets; a borrowed record says so ('borrowed_from') and costs nothing here.

Phases: 'sweep' (every grid point, seed = seeds[0], scored on the validation sets only; its trained params are
kept as a params file until the method's selected run is tested, then removed; --keep_params keeps a copy of
every trained run's params under kept/); selection (`select`, validation metrics only); 'test'
(the selected sweep run scored on the test sets, once); 'seeds' (the selected grid point of each seeded method
at the other seeds, validation and test). A 'base' run per task scores the untrained model on both. Runs go in
the study's `order` (blocks of (task, methods)), so the questions that matter most are answered first.

--out and the run workdirs may be local or gs:// (every read and write goes through grow_jax/files.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import itertools
import json
import logging
import os
import subprocess
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from grow_jax import files
from grow_jax.errors import ConfigError, TrainingDivergedError
from grow_jax.train import config as config_lib

_log = logging.getLogger(__name__)
SEP = "/"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a study (or the untrained base model of a task: method 'base')."""
  task: str
  method: str
  hparams: tuple[tuple[str, Any], ...]   # the grid point: ((dotted key, value), ...)
  seed: int
  phase: str                             # 'base' | 'sweep' | 'seeds'

  @property
  def id(self) -> str:
    """The run's name; a 'test' run scores a sweep run, and records into that run's id."""
    point = ",".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in self.hparams) or "default"
    return SEP.join((self.task, self.method, point, f"seed={self.seed}"))

  @property
  def key(self) -> str:
    return self.id + ("#test" if self.phase == "test" else "")

  @property
  def file_name(self) -> str:
    return self.id.replace(SEP, "__") + ".json"


def _fmt(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


# ---- the study file ------------------------------------------------------------------------------------
@dataclasses.dataclass
class StudySpec:
  """What a study file's get_study() declares (see the module docstring)."""
  name: str
  tasks: dict[str, dict[str, Any]]
  methods: dict[str, dict[str, Any]]
  grids: dict[str, dict[str, list]]
  seeds: list[int]
  validation_eval: dict[str, list]       # task -> [[entry, limit], ...]: what selection reads
  test_eval: dict[str, list]             # task -> [[entry, limit], ...]: what the report reads
  seeded_methods: list[str] = dataclasses.field(default_factory=list)
  task_methods: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  curves: dict[str, Any] | None = None
  report: dict[str, dict] = dataclasses.field(default_factory=dict)
  description: str = ""
  order: list = dataclasses.field(default_factory=list)    # [[task, [methods]], ...]: run these blocks first
  borrow: dict[str, list] = dataclasses.field(default_factory=dict)   # method -> [study, out dir, method there]
  extend_edges: int = 0                  # points a numeric grid key may gain past an edge its selection sits on


@dataclasses.dataclass
class Study:
  path: str
  arg: str | None
  module: Any
  spec: StudySpec

  @property
  def name(self) -> str:
    return self.spec.name

  def base_config(self) -> ml_collections.ConfigDict:
    return self.module.get_config(self.arg)

  def select(self, task: str, method: str, runs: Sequence[dict], reference: Mapping[str, dict]) -> dict:
    return self.module.select(task, method, runs, reference)

  def methods(self, task: str) -> list[str]:
    """The methods a task is studied with (study.task_methods, default all)."""
    return list(self.spec.task_methods.get(task, list(self.spec.methods)))


def load_study(text: str) -> Study:
  """'path/to/study.py[:arg]' -> Study."""
  path, _, arg = text.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--study={text!r}: no study file at {path!r}")
  spec = importlib.util.spec_from_file_location(f"study_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for fn in ("get_config", "get_study", "select"):
    if not callable(getattr(module, fn, None)):
      raise ConfigError(f"--study={text!r}: the study file defines no {fn}()")
  declared = module.get_study(arg or None)
  fields = {f.name for f in dataclasses.fields(StudySpec)}
  unknown = sorted(set(declared) - fields)
  if unknown:
    raise ConfigError(f"--study={text!r}: get_study() returned unknown keys {unknown}; expected {sorted(fields)}")
  try:
    spec = StudySpec(**declared)
  except TypeError as e:
    raise ConfigError(f"--study={text!r}: get_study(): {e}") from None
  if isinstance(spec.extend_edges, bool) or not isinstance(spec.extend_edges, int) or spec.extend_edges < 0:
    raise ConfigError(f"--study={text!r}: get_study()['extend_edges'] is {spec.extend_edges!r}; expected an "
                      "integer >= 0 (how many points a grid key may gain past an edge)")
  for task, entries in spec.test_eval.items():
    shared = sorted({e for e, _ in entries} & {e for e, _ in spec.validation_eval.get(task, [])})
    if shared:
      raise ConfigError(f"--study={text!r}: test_eval[{task!r}] repeats validation_eval entries {shared}; the "
                        "test sets must be disjoint from what selection reads")
  return Study(path, arg or None, module, spec)


# ---- expanding the grid --------------------------------------------------------------------------------
class Selected(dict):
  """(task, method) -> the selected sweep record; `.grids` (task, method) -> {key: values}: the grids the edge
  rule extended (`extend_at_edges`), which replace the declared ones."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.grids: dict[tuple[str, str], dict[str, list]] = {}


def method_grid(study: Study, selected: Mapping[tuple[str, str], dict], task: str, method: str) -> dict[str, list]:
  """The method's grid on `task`: as declared, or as the edge rule grew it (`Selected.grids`)."""
  return dict(getattr(selected, "grids", {}).get((task, method), study.spec.grids.get(method, {})))


def grid_points(study: Study, method: str, selected: Mapping[tuple[str, str], dict], task: str):
  """The method's grid points as tuples of (key, value); '@m' values take method m's selected value
  (None while m is not selected yet)."""
  grid = method_grid(study, selected, task, method)
  keys = sorted(grid)
  for values in itertools.product(*(grid[k] for k in keys)):
    point = []
    for key, value in zip(keys, values):
      if isinstance(value, str) and value.startswith("@"):
        chosen = selected.get((task, value[1:]))
        if chosen is None:
          return
        value = dict(chosen["hparams"])[key]
      point.append((key, value))
    yield tuple(point)


def expand(study: Study, selected: Mapping[tuple[str, str], dict]) -> list[Run]:
  """Every run of the study that can be named now (a grid depending on an unselected method waits)."""
  spec = study.spec
  first, others = spec.seeds[0], list(spec.seeds[1:])
  runs = []
  for task in spec.tasks:
    runs.append(Run(task, "base", (), first, "base"))
    for method in study.methods(task):
      for point in dict.fromkeys(grid_points(study, method, selected, task)):
        runs.append(Run(task, method, point, first, "sweep"))
      chosen = selected.get((task, method))
      if chosen is not None:
        point = tuple(tuple(kv) for kv in chosen["hparams"])
        runs.append(Run(task, method, point, first, "test"))
        if method in spec.seeded_methods:
          runs += [Run(task, method, point, seed, "seeds") for seed in others]
  return runs


def run_config(study: Study, run: Run, workdir_root: str) -> tuple[ml_collections.ConfigDict, str]:
  """The training config of a run and its workdir."""
  spec = study.spec
  overrides = {**dict(spec.tasks[run.task]), **dict(spec.methods.get(run.method, {})), **dict(run.hparams),
               "seed": run.seed}
  config = config_lib.apply_overrides(study.base_config(), overrides)
  curves = spec.curves
  if curves and run.method in curves["methods"] and run.task in curves["tasks"]:
    config.eval.tasks = tuple(curves["tasks"][run.task])
    config.eval_every_steps = curves["every"]
    config.eval.max_examples = curves["max_examples"]
    config.eval.at_start = False
  else:
    config.eval.tasks = ()
    config.eval_every_steps = 0
  return config, os.path.join(workdir_root, study.name, run.id.replace(SEP, "__"))


# ---- executing a run -------------------------------------------------------------------------------------
def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def evaluate(entries, config, model_config, params, tokenizer, base_model=None) -> dict[str, float]:
  """Evaluations [[entry, limit], ...] of (model_config, params): {'<entry>/<metric>': value}. `base_model`:
  () -> (config, params) of the untrained model, for a caller that holds it (default: loaded from
  config.init.source when an entry first needs it)."""
  from grow_jax import formats
  from grow_jax.evaluation import registry
  base_cache = {}

  def load_base():
    if "model" not in base_cache:
      base_cache["model"] = formats.load_checkpoint(config.init.source, seed=config.seed,
                                                    **config_lib.model_overrides(config))
    return base_cache["model"]

  out = {}
  for entry, limit in entries:
    ctx = registry.EvalContext(model_config, tokenizer=tokenizer, limit=limit, batch_size=config.eval.batch_size,
                               max_len=config.eval.max_len, max_new_tokens=config.eval.max_new_tokens,
                               base_model=base_model or load_base, base_id=config.init.source)
    metrics = registry.build(entry, ctx)(params)
    out.update({f"{entry}/{k}": float(v) for k, v in metrics.items()})
  return out


def params_path(workdir_root: str, study: Study, run: Run, folder: str = "params") -> str:
  """Where a sweep run's trained params wait for the test phase (grow_jax's params file; not committed);
  folder 'kept': where --keep_params leaves every trained run's params (pilots, dials), which the test phase
  does not clean up."""
  return os.path.join(workdir_root, study.name, folder, run.id.replace(SEP, "__") + ".safetensors")


def write_record(out_dir: str, run: Run, record: Mapping[str, Any]) -> None:
  """`<out_dir>/runs/<run file name>`: the run's record, which marks it done."""
  files.write_text(os.path.join(out_dir, "runs", run.file_name), json.dumps(record, indent=1, sort_keys=True) + "\n")


# Periodic evaluations (learning curves) read the params and change nothing in training.
_CURVE_KEYS = ("eval.tasks", "eval_every_steps", "eval.max_examples", "eval.at_start")


def training_config(study: Study, run: Run) -> dict[str, Any]:
  """The run's config as flat {dotted key: value}, without the periodic-evaluation keys."""
  config, _ = run_config(study, run, "")
  flat = {}

  def walk(prefix, node):
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(prefix + key + ".", value)
      else:
        flat[prefix + key] = value
  walk("", config.to_dict())
  return {k: v for k, v in flat.items() if k not in _CURVE_KEYS}


def scored_entries(study: Study, run: Run) -> list[tuple[str, int]]:
  """The (entry, limit) pairs a run's phase adds to its record: validation for a sweep run, test for a test
  run (its sweep record holds validation), both for a seed run and a base run."""
  spec = study.spec
  if run.phase == "test":
    return [tuple(e) for e in spec.test_eval[run.task]]
  tests = [] if run.phase == "sweep" else spec.test_eval[run.task]
  return [tuple(e) for e in list(spec.validation_eval[run.task]) + list(tests)]


def borrowed_record(study: Study, run: Run, out_dir: str) -> dict | None:
  """The run's record copied from its done twin in the study it is borrowed from (see the module docstring),
  or None (not borrowed, or the twin is not done, diverged, or lacks an evaluation this phase needs)."""
  source = study.spec.borrow.get(run.method)
  if source is None:
    return None
  where = f"study {study.name}: borrow[{run.method!r}] = {list(source)}"
  if not (isinstance(source, (list, tuple)) and len(source) == 3):
    raise ConfigError(f"{where}: expected [study file[:arg], out dir, method there]")
  path, other_out, method = source
  swept = load_records(out_dir)[run.id] if run.phase == "test" else None
  if swept is not None and not swept.get("borrowed_from"):
    return None                            # trained here: scored here too
  other = load_study(path)
  twin = Run(run.task, method, run.hparams, run.seed, "sweep" if run.phase == "test" else run.phase)
  theirs = load_records(other_out).get(twin.id)
  if theirs is None or theirs.get("diverged"):
    return None
  mine, their_config = training_config(study, run), training_config(other, twin)
  differ = sorted(k for k in set(mine) | set(their_config) if mine.get(k) != their_config.get(k))
  if differ:
    raise ConfigError(f"{where}: {run.id} and {twin.id} would train differently: their configs differ in "
                      f"{differ}")
  limits = {e: n for e, n in list(other.spec.validation_eval.get(run.task, []))
            + list(other.spec.test_eval.get(run.task, []))}
  entries = scored_entries(study, run)
  for entry, limit in entries:
    if entry in limits and limits[entry] != limit:
      raise ConfigError(f"{where}: {entry} is scored on {limit} examples here and on {limits[entry]} there")
  final = {k: v for k, v in theirs["final"].items() if k.split("/", 1)[0] in dict(entries)}
  if any(e not in limits or not any(k.startswith(e + "/") for k in final) for e, _ in entries):
    return None
  source_id = f"{other.name}:{twin.id}"
  if swept is not None:
    swept["final"].update(final)
    swept["test_seconds"] = 0.0
    swept["borrowed_test_from"] = source_id
    return swept
  record = {k: v for k, v in theirs.items() if k != "curve"}
  record.update(id=run.id, method=run.method, phase=run.phase, study=study.name, final=final,
                borrowed_from=source_id, borrowed_seconds=theirs["seconds"], train_seconds=0.0,
                eval_seconds=0.0, seconds=0.0)
  record.pop("test_seconds", None)
  return record


def execute(study: Study, run: Run, out_dir: str, workdir_root: str, *, keep_workdir: bool = False,
            keep_params: bool = False) -> dict:
  """Trains (unless 'base' or 'test') and evaluates one run; writes and returns its record. `keep_params`: also
  leaves the trained params at params_path(..., folder='kept')."""
  import jax
  from grow_jax import formats
  from grow_jax.formats import params_file
  from grow_jax.model.tokenizer import load_tokenizer
  from grow_jax.train import loop
  from grow_jax.train.checkpointing import load_trained_params
  borrowed = borrowed_record(study, run, out_dir)
  if borrowed is not None:
    write_record(out_dir, run, borrowed)
    return borrowed
  config, workdir = run_config(study, run, workdir_root)
  tokenizer = load_tokenizer(config.data.tokenizer or config.init.source)
  t0 = time.time()
  if run.phase == "test":
    record = load_records(out_dir)[run.id]
    stored = params_path(workdir_root, study, run)
    if not files.as_path(stored).exists():                # another machine: train the sweep run again (deterministic)
      loop.train_and_evaluate(config, workdir)
      params_file.save_params_file(stored, *load_trained_params(workdir)[:2])
      files.remove_tree(workdir)
    model_config, params = params_file.load_params_file(stored)
    record["final"].update(evaluate(scored_entries(study, run), config, model_config, params, tokenizer))
    record["test_seconds"] = time.time() - t0
    record["seconds"] += record["test_seconds"]
    write_record(out_dir, run, record)
    _drop_unselected_params(study, run, workdir_root, out_dir)
    return record
  record = {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
            "seed": run.seed, "phase": run.phase, "study": study.name, "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": 0 if run.method == "base" else config.total_steps,
            "batch_size": config.batch_size, "seq_len": config.data.seq_len, "mode": config.train.mode,
            "device": f"{jax.devices()[0].platform} x{jax.device_count()}"}
  if run.method == "base":
    model_config, params = formats.load_checkpoint(config.init.source, seed=config.seed,
                                                   **config_lib.model_overrides(config))
    record["train_seconds"] = 0.0
  else:
    try:
      loop.train_and_evaluate(config, workdir)
    except TrainingDivergedError as e:       # a record all the same: a resumed study must not retry it forever
      record.update(diverged=str(e), final={}, train_seconds=time.time() - t0, eval_seconds=0.0,
                    seconds=time.time() - t0)
      write_record(out_dir, run, record)
      if not keep_workdir:                   # --keep_workdirs: the last good checkpoint the error names stays
        files.remove_tree(workdir)
      return record
    record["train_seconds"] = time.time() - t0
    record["curve"] = read_curve(workdir)
    model_config, params, _ = load_trained_params(workdir)
  t1 = time.time()
  record["final"] = evaluate(scored_entries(study, run), config, model_config, params, tokenizer)
  record["eval_seconds"] = time.time() - t1
  record["seconds"] = time.time() - t0
  if run.phase == "sweep":
    params_file.save_params_file(params_path(workdir_root, study, run), model_config, params)
  if keep_params and run.method != "base":
    params_file.save_params_file(params_path(workdir_root, study, run, "kept"), model_config, params)
  write_record(out_dir, run, record)
  if not keep_workdir:
    files.remove_tree(workdir)
  return record


def _drop_unselected_params(study: Study, tested: Run, workdir_root: str, out_dir: str) -> None:
  """Once a method's selected run is tested, the other grid points' params files are not needed."""
  for run in expand(study, selections(study, load_records(out_dir))):
    if (run.task, run.method, run.phase) == (tested.task, tested.method, "sweep") and run.id != tested.id:
      path = params_path(workdir_root, study, run)
      files.remove_file(path)
  path = params_path(workdir_root, study, tested)
  files.remove_file(path)


def read_curve(workdir: str) -> list[dict[str, Any]]:
  """The periodic evaluations of a run: [{'step': s, '<task>/<metric>': v, ...}] from its metrics.jsonl."""
  path = files.as_path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  curve = []
  for line in path.read_text().splitlines():
    record = json.loads(line)
    evals = {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/") and k != "eval/seconds"}
    if evals:
      curve.append({"step": record["step"], **evals})
  return curve


# ---- the records -----------------------------------------------------------------------------------------
def load_records(out_dir: str) -> dict[str, dict]:
  """Every finished run's record, by run id."""
  runs_dir = files.as_path(out_dir) / "runs"
  records = {}
  if runs_dir.is_dir():
    for path in sorted(runs_dir.iterdir(), key=lambda p: p.name):
      if path.name.endswith(".json"):
        record = json.loads(path.read_text())
        records[record["id"]] = record
  return records


def _geometric(values: Sequence) -> bool:
  """Whether a grid key's values are numbers, positive and increasing: a grid the edge rule can continue."""
  numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  return numbers and len(values) >= 2 and values[0] > 0 and all(a < b for a, b in zip(values, values[1:]))


def grid_edges(grid: Mapping[str, list], point: Mapping[str, Any]) -> dict[str, str]:
  """{key: 'lowest' | 'highest'} for every key of `grid` whose values are positive increasing numbers and whose
  value in `point` is the first or the last of them: where a selection says nothing about what lies beyond."""
  out = {}
  for key, values in grid.items():
    if _geometric(list(values)) and point.get(key) in (values[0], values[-1]):
      out[key] = "lowest" if point[key] == values[0] else "highest"
  return out


def extend_at_edges(declared: Mapping[str, list], current: Mapping[str, list], point: Mapping[str, Any],
                    limit: int) -> dict[str, list] | None:
  """The edge rule: the grid with one more value past each edge the selected `point` sits on (`grid_edges`;
  None when no key grows: the point is interior, or the key has `limit` values past its `declared` ones
  already). The new value continues the grid's own geometric spacing (the ratio between the second and third
  values from that edge), so 1e-5, 3e-5, 1e-4 grows to 3e-6 below and 3e-4 above."""
  grown = dict(current)
  for key, side in grid_edges(current, point).items():
    values = list(current[key])
    if len(values) - len(declared.get(key, [])) >= limit:
      continue
    if side == "lowest":                       # the step two values in, so a 1-3-10 grid stays 1-3-10
      step = values[2] / values[1] if len(values) >= 3 else values[1] / values[0]
      grown[key] = [_round(values[0] / step)] + values
    else:
      step = values[-2] / values[-3] if len(values) >= 3 else values[-1] / values[-2]
      grown[key] = values + [_round(values[-1] * step)]
  return grown if grown != dict(current) else None


def _round(x: float) -> float:
  return float(f"{x:.6g}")                 # 3.0000000000000004e-06 -> 3e-06: the run id and config read as meant


def selections(study: Study, records: Mapping[str, dict]) -> Selected:
  """(task, method) -> the selected sweep record, for every method whose sweep is complete. With the study's
  `extend_edges`, a selection on the edge of its grid extends the grid (`extend_at_edges`) instead, and the
  method is selected once the new points are done."""
  out = Selected()
  changed = True
  while changed:                           # '@method' grids become nameable as their reference is selected
    changed = False
    for run in expand(study, out):
      key = (run.task, run.method)
      if run.phase != "sweep" or key in out:
        continue
      sweep = [r for r in expand(study, out) if (r.task, r.method) == key and r.phase == "sweep"]
      done = [records[r.id] for r in sweep if r.id in records]
      finite = [r for r in done if not r.get("diverged")]    # a diverged grid point is never selected
      base = records.get(Run(run.task, "base", (), study.spec.seeds[0], "base").id)
      if sweep and len(done) == len(sweep) and finite and base is not None:
        reference = {"base": base, **{m: rec for (t, m), rec in out.items() if t == run.task}}
        pick = study.select(run.task, run.method, finite, reference)
        grown = extend_at_edges(study.spec.grids.get(run.method, {}), method_grid(study, out, *key),
                                dict(pick["hparams"]), study.spec.extend_edges)
        if grown is None:
          out[key] = pick
        else:
          out.grids[key] = grown
        changed = True
  return out


def is_done(run: Run, records: Mapping[str, dict], study: Study) -> bool:
  record = records.get(run.id)
  if record is None:
    return False
  if run.phase == "test":                 # the sweep record holds the test metrics once scored
    return all(any(k.startswith(entry + "/") for k in record["final"]) for entry, _ in study.spec.test_eval[run.task])
  return True


def block(study: Study, run: Run) -> int:
  """The index of the first `order` block naming the run's (task, method) (a base run belongs to its task's
  first block); unnamed runs come last."""
  for i, (task, methods) in enumerate(study.spec.order):
    if task == run.task and (run.method in methods or run.method == "base"):
      return i
  return len(study.spec.order)


def in_run_order(study: Study, runs: Iterable[Run], only: str | None = None) -> list[Run]:
  """`runs` in the order the runner takes them (by block; within a block base, sweeps, tests, seeds), only those
  whose id matches the glob `only` when given."""
  runs = [r for r in runs if not only or fnmatch.fnmatch(r.id, only)]
  phase = {"base": 0, "sweep": 1, "test": 2, "seeds": 3}
  return sorted(runs, key=lambda r: (block(study, r), phase[r.phase]))


def pending(study: Study, records: Mapping[str, dict], only: str | None = None) -> list[Run]:
  """The runs to do next, in order, `only` a glob over run ids."""
  selected = selections(study, records)
  return in_run_order(study, [r for r in expand(study, selected) if not is_done(r, records, study)], only)


def run_all(study: Study, out_dir: str, workdir_root: str, *, only: str | None = None, max_runs: int | None = None,
            keep_workdirs: bool = False, keep_params: bool = False,
            on_record: Callable[[dict], None] | None = None) -> int:
  """Executes pending runs until none is left (selections unlock further runs); returns how many ran."""
  done = 0
  while max_runs is None or done < max_runs:
    todo = pending(study, load_records(out_dir), only)
    if not todo:
      break
    run = todo[0]
    _log.info("study %s: %s run %s (%d pending)", study.name, run.phase, run.id, len(todo))
    record = execute(study, run, out_dir, workdir_root, keep_workdir=keep_workdirs, keep_params=keep_params)
    done += 1
    if on_record is not None:
      on_record(record)
  return done
