"""A study's runs: the grid a study file declares, expanded into runs; each run trained, evaluated and written
as one small JSON under `<out>/runs/`; a run whose JSON exists is skipped (the study resumes anywhere).

A study file (see experiments/studies/) defines

    get_config(arg)   the training config every run starts from (configs/ style)
    get_study(arg)    a dict of `StudySpec`'s fields: name, description, tasks {name: {dotted key: value}},
                      methods {name: {dotted key: value}}, grids {method: {dotted key: [values]}} (a value
                      '@<method>' takes the value selected for that method on the same task, '@<task>/<method>'
                      the value selected for it on another task of the study), extend_edges (the grid-edge rule:
                      how many points a geometric grid key may gain past an edge its pick sits on), seeds,
                      sweep_seeds (how many of the seeds, from the first, sweep every grid point; default 1),
                      seeded_methods, task_methods, validation_eval and test_eval {task: [[entry, limit], ...]},
                      order, curves {every, max_examples, tasks {task: [entries]}, methods}, borrow, report,
                      reproduce_tolerance {'<entry>/<metric>' glob: absolute tolerance} (see below)
                      after {task: parent task} (sequential stages: each run of the task starts from the trained
                      params of its parent task's run of the same method and seed; `_check_stages`),
                      task_method_overrides {task: {method: {dotted key: value}}} (e.g. a stage's growth.task)
    select(task, method, runs, reference) -> run   the rule, fixed in advance, that picks a grid point on
                      validation (reference: the task's 'base' record and the records selected so far)

A study may also declare `borrow` {method: [study file[:arg], out dir, method there]}: a run of that method
(or 'base') whose twin in the other study is done is copied from the twin's record instead of trained again,
once the runner has checked that the two runs' training configs are equal (periodic evaluations aside) and
that they are scored on the same sets; a borrowed record says so ('borrowed_from') and costs nothing here.

Phases: 'sweep' (every grid point at the first `sweep_seeds` seeds, scored on the validation sets only; its
trained params are kept as a params file until the method's selected run is tested, then removed; --keep_params
keeps a copy of every trained run's params under kept/); selection (`select`, validation metrics only; with
several sweep seeds it sees every seed's record and the first seed's record of the point it picks is the
selection); 'test' (the selected sweep run scored on the test sets, once, and the other sweep seeds' runs at that
point); 'seeds' (the selected grid point of each seeded method at the seeds that did not sweep, validation and
test). A 'base' run per task scores the untrained model on both. Runs go in
the study's `order` (blocks of (task, methods)), so the questions that matter most are answered first.

Integrity (what makes a record safe to re-use):
  * Identity: a record stores its run's resolved training config (flat dotted keys, periodic evaluations aside),
    the sets it was scored on with their limits, and `identity`, a hash of both (`identity_fields`). A record
    whose identity differs from what the study file now asks for is refused, naming the differing keys
    (`check_records`): never re-used, never retrained behind the user's back. Records written before identities
    existed are checked on what they stored (`_legacy_problems`).
  * Frozen selections: a method's test phase writes `<out>/selections/<task>__<method>.json` (the point chosen on
    validation, its grid and candidates); afterwards a grid or validation record that would select another point
    stops the runner (`selections`) unless --override_selection records who/when/why (`override_selection`).
  * Reproduction: a test phase whose sweep params are gone (another machine) retrains the run and must reproduce
    its recorded validation metrics within the study's `reproduce_tolerance` (default `REPRODUCE_TOLERANCE`)
    before the test sets are scored.
  * Source: each record notes the git commit and whether tracked files were modified (`source_state`).

Per-item records: every evaluation a run's record holds also leaves its items (predictions, per-item scores,
log-likelihoods, per-text NLL; grow_jax/evaluation/items.py) in `<out>/runs/<run>.items.jsonl.gz` (gzip'd JSON
lines, deterministic bytes), which the record names with its sha256 (`record['items']`); a test phase adds its
entries to the file its sweep left. The report's paired item-level comparisons read them (study/report.py).

--out and the run workdirs may be local or gs:// (every read and write goes through grow_jax/files.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import json
import logging
import math
import os
import subprocess
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from grow_jax import config_file, files
from grow_jax.errors import ConfigError, GrowJaxError, StudyInterrupted, TrainingDivergedError
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
  sweep_seeds: int = 1                   # how many of `seeds` (from the first) run every grid point
  reproduce_tolerance: dict[str, float] = dataclasses.field(default_factory=dict)   # metric glob -> abs tolerance
  after: dict[str, str] = dataclasses.field(default_factory=dict)     # task -> the task its runs continue from
  task_method_overrides: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)  # task -> method -> {}


def variant(arg: str | None, variants: Sequence[str], default: str = "cpu") -> str:
  """A study file's variant: `arg` (the text after ':' in --study; `default` when absent) if it is one of `variants`."""
  name = (arg or default).strip()
  if name not in variants:
    raise ConfigError(f"study variant {name!r}: expected one of {list(variants)}")
  return name


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
  module, arg = config_file.load_module(text, flag="--study", what="study")
  path = text.partition(":")[0]
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
  if (isinstance(spec.sweep_seeds, bool) or not isinstance(spec.sweep_seeds, int)
      or not 1 <= spec.sweep_seeds <= len(spec.seeds)):
    raise ConfigError(f"--study={text!r}: get_study()['sweep_seeds'] is {spec.sweep_seeds!r}; expected an integer "
                      f"from 1 to the number of seeds ({len(spec.seeds)})")
  for pattern, tol in spec.reproduce_tolerance.items():
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
      raise ConfigError(f"--study={text!r}: get_study()['reproduce_tolerance'][{pattern!r}] is {tol!r}; expected "
                        "an absolute tolerance >= 0")
  for task, entries in spec.test_eval.items():
    shared = sorted({e for e, _ in entries} & {e for e, _ in spec.validation_eval.get(task, [])})
    if shared:
      raise ConfigError(f"--study={text!r}: test_eval[{task!r}] repeats validation_eval entries {shared}; the "
                        "test sets must be disjoint from what selection reads")
  study = Study(path, arg or None, module, spec)
  _check_stages(study, text)
  _check_report(study, text)
  return study


# What a task's `report` entry may hold (study/report.py reads them); 'metrics' is required.
REPORT_KEYS = ("metrics", "selection", "reference", "validation", "frontier", "stages", "pareto", "curves")


def _check_report(study: Study, text: str) -> None:
  """`report` {task: {key: ...}}: known tasks and keys only, so a misspelt section fails here, not silently."""
  spec = study.spec
  where = f"--study={text!r}: get_study()['report']"
  unknown = sorted(set(spec.report) - set(spec.tasks))
  if unknown:
    raise ConfigError(f"{where} names tasks {unknown} that 'tasks' does not declare")
  for task, report in spec.report.items():
    unknown = sorted(set(report) - set(REPORT_KEYS))
    if unknown:
      raise ConfigError(f"{where}[{task!r}] has unknown keys {unknown}; expected some of {list(REPORT_KEYS)}")
    if not report.get("metrics"):
      raise ConfigError(f"{where}[{task!r}]['metrics'] is missing; expected [[label, '<entry>/<metric>'], ...]")
    if "stages" in report and task not in spec.after:
      raise ConfigError(f"{where}[{task!r}]['stages'] is given but task {task!r} continues no other task "
                        "(get_study()['after'] has no entry for it)")
    if "curves" in report and not spec.curves:
      raise ConfigError(f"{where}[{task!r}]['curves'] is given but get_study()['curves'] is not: nothing is "
                        "measured along training")
    reference = report.get("reference", "sft")
    if reference not in study.methods(task):
      raise ConfigError(f"{where}[{task!r}]['reference'] is {reference!r}; expected one of the task's methods "
                        f"{study.methods(task)}")


def _check_stages(study: Study, text: str) -> None:
  """`after` (sequential tasks): each child continues from its parent task's run of the same method and seed, so
  the parent must be a task of the study that runs every child method, each at ONE grid point of literal values
  (the run to continue from is then unambiguous), with every seed sweeping (all parent runs exist together)."""
  spec = study.spec
  for where, table in (("after", {t: None for t in spec.after}), ("task_method_overrides", spec.task_method_overrides)):
    unknown = sorted(set(table) - set(spec.tasks))
    if unknown:
      raise ConfigError(f"--study={text!r}: get_study()['{where}'] names tasks {unknown} that 'tasks' does not declare")
  for child, parent in spec.after.items():
    if parent not in spec.tasks or parent == child or parent in spec.after:
      raise ConfigError(f"--study={text!r}: get_study()['after'][{child!r}] is {parent!r}; expected another task of "
                        "the study that does not itself continue one (one stage back)")
    missing = sorted(set(study.methods(child)) - set(study.methods(parent)))
    if missing:
      raise ConfigError(f"--study={text!r}: task {child!r} continues {parent!r}, which does not run {missing}")
    for method in study.methods(child):
      grid = spec.grids.get(method, {})
      if any(len(v) != 1 or (isinstance(v[0], str) and v[0].startswith("@")) for v in grid.values()):
        raise ConfigError(f"--study={text!r}: task {child!r} continues {parent!r}, so method {method!r}'s grid must be "
                          f"one point of literal values (it is {grid}): the run to continue from must be unambiguous")
    if spec.sweep_seeds != len(spec.seeds):
      raise ConfigError(f"--study={text!r}: task {child!r} continues {parent!r}: every seed must sweep "
                        f"(sweep_seeds={len(spec.seeds)}), so that each seed's parent run exists to continue from")


def parent_run(study: Study, run: Run) -> Run | None:
  """The run `run` continues from (study.spec.after): its parent task's run of the same method and seed at the
  method's one grid point; None for a first-stage task or a 'base' run."""
  parent = study.spec.after.get(run.task)
  if parent is None or run.method == "base":
    return None
  point = tuple((k, v[0]) for k, v in sorted(study.spec.grids.get(run.method, {}).items()))
  return Run(parent, run.method, point, run.seed, "sweep")


def reference_config(study: Study, run: Run, workdir_root: str) -> ml_collections.ConfigDict:
  """The config whose init source is the untrained model `run` is compared with (KL(base ‖ model)): the run's own,
  or for a later stage (which starts from its parent's trained params) its first stage's, so that every stage is
  measured against the same base."""
  while (parent := parent_run(study, run)) is not None:
    run = parent
  return run_config(study, run, workdir_root)[0]


def is_parent_task(study: Study, task: str) -> bool:
  return task in study.spec.after.values()


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
  """The method's grid points as tuples of (key, value); '@m' values take method m's selected value on `task`,
  '@t/m' method m's on task t (no points while m is not selected yet)."""
  grid = method_grid(study, selected, task, method)
  keys = sorted(grid)
  for values in itertools.product(*(grid[k] for k in keys)):
    point = []
    for key, value in zip(keys, values):
      if isinstance(value, str) and value.startswith("@"):
        other_task, _, other = value[1:].rpartition("/")
        chosen = selected.get((other_task or task, other))
        if chosen is None:
          return
        value = dict(chosen["hparams"])[key]
      point.append((key, value))
    yield tuple(point)


def expand(study: Study, selected: Mapping[tuple[str, str], dict]) -> list[Run]:
  """Every run of the study that can be named now (a grid depending on an unselected method waits)."""
  spec = study.spec
  first, swept, others = spec.seeds[0], list(spec.seeds[:spec.sweep_seeds]), list(spec.seeds[spec.sweep_seeds:])
  runs = []
  for task in spec.tasks:
    runs.append(Run(task, "base", (), first, "base"))
    for method in study.methods(task):
      if task in spec.after and (spec.after[task], method) not in selected:
        continue                                # its parent runs are not all done yet
      for point in dict.fromkeys(grid_points(study, method, selected, task)):
        runs += [Run(task, method, point, seed, "sweep") for seed in swept]
      chosen = selected.get((task, method))
      if chosen is not None:
        point = tuple(tuple(kv) for kv in chosen["hparams"])
        runs += [Run(task, method, point, seed, "test") for seed in swept]   # every record there gets test
        if method in spec.seeded_methods:
          runs += [Run(task, method, point, seed, "seeds") for seed in others]
  return runs


def run_config(study: Study, run: Run, workdir_root: str) -> tuple[ml_collections.ConfigDict, str]:
  """The training config of a run and its workdir."""
  spec = study.spec
  overrides = {**dict(spec.tasks[run.task]), **dict(spec.methods.get(run.method, {})),
               **dict(spec.task_method_overrides.get(run.task, {}).get(run.method, {})), **dict(run.hparams),
               "seed": run.seed}
  parent = parent_run(study, run)
  if parent is not None:                  # a stage: it starts from its parent run's trained params, whose
    overrides["init.source"] = "params:" + params_path(workdir_root, study, parent, "stages")
    for key in ("num_layers", "hidden_dim", "vocab_size"):    # architecture they fix (a random preset's overrides
      overrides[f"model.{key}"] = None                       # shaped the parent, not this run)
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
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))    # the checkout whose state a record notes


def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=SOURCE_DIR, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def source_state(exclude: str | None = None, where: str | None = None) -> dict[str, Any]:
  """The code a record was made with: {'commit', 'dirty'} and, for a modified tree, 'dirty_files' (the tracked
  files that differ from the commit) and 'dirty_diff_sha256' (a hash of `git diff HEAD`, which names the exact
  change). `exclude`: a local directory left out (the study's own --out: records written since the last commit
  are results, not code); `where`: the checkout (default: the one grow_jax runs from). Not a git checkout:
  {'commit': 'unknown'}."""
  where = where or SOURCE_DIR

  def git(*args, text=True):
    return subprocess.run(["git", *args], capture_output=True, text=text, cwd=where, timeout=60)

  try:
    head, top = git("rev-parse", "--short", "HEAD"), git("rev-parse", "--show-toplevel")
    if head.returncode or top.returncode:
      return {"commit": "unknown"}
    pathspec = ["--", "."]
    if exclude and "://" not in exclude:
      rel = os.path.relpath(os.path.abspath(exclude), top.stdout.strip())
      if rel != "." and not rel.startswith(os.pardir):
        pathspec.append(f":(exclude){rel}")
    status = git("-C", top.stdout.strip(), "status", "--porcelain", "--untracked-files=no", *pathspec)
    changed = sorted(line[3:] for line in status.stdout.splitlines() if line.strip())
    state = {"commit": head.stdout.strip(), "dirty": bool(changed)}
    if changed:
      diff = git("-C", top.stdout.strip(), "diff", "HEAD", "--binary", *pathspec, text=False).stdout
      state.update(dirty_files=changed, dirty_diff_sha256=hashlib.sha256(diff).hexdigest())
    return state
  except (OSError, subprocess.SubprocessError):
    return {"commit": "unknown"}


class Scores(dict):
  """`evaluate`'s result: {'<entry>/<metric>': value}, and in `per_item` {entry: per-item records}."""

  def __init__(self, *args, per_item: dict[str, list] | None = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.per_item = per_item if per_item is not None else {}


def evaluate(entries, config, model_config, params, tokenizer, base_model=None, reference=None) -> Scores:
  """Evaluations [[entry, limit], ...] of (model_config, params): {'<entry>/<metric>': value}, with their per-item
  records in `.per_item`. The untrained model that KL(base ‖ model) compares with is `reference`'s init source
  (a config; default `config`: a later stage passes its first stage's, `reference_config`), loaded when an entry
  first needs it; `base_model`: () -> (config, params) of it, for a caller that holds it."""
  from grow_jax import formats
  from grow_jax.evaluation import registry
  reference = reference if reference is not None else config
  base_cache = {}

  def load_base():
    if "model" not in base_cache:
      base_cache["model"] = formats.load_checkpoint(reference.init.source, seed=reference.seed,
                                                    **config_lib.model_overrides(reference))
    return base_cache["model"]

  out = Scores()
  for entry, limit in entries:
    ctx = registry.EvalContext(model_config, tokenizer=tokenizer, limit=limit, batch_size=config.eval.batch_size,
                               max_len=config.eval.max_len, max_new_tokens=config.eval.max_new_tokens,
                               base_model=base_model or load_base, base_id=reference.init.source, items=True)
    metrics, out.per_item[entry] = registry.build(entry, ctx)(params)
    out.update({f"{entry}/{k}": float(v) for k, v in metrics.items()})
  return out


def params_path(workdir_root: str, study: Study, run: Run, folder: str = "params") -> str:
  """Where a sweep run's trained params wait for the test phase (grow_jax's params file; not committed);
  folder 'kept': where --keep_params leaves every trained run's params (pilots, dials), which the test phase
  does not clean up."""
  return os.path.join(workdir_root, study.name, folder, run.id.replace(SEP, "__") + ".safetensors")


def items_path(out_dir: str, run: Run) -> str:
  """`<out_dir>/runs/<run>.items.jsonl.gz`: the run's per-item records."""
  return os.path.join(out_dir, "runs", run.file_name[:-len(".json")] + ".items.jsonl.gz")


def write_items(out_dir: str, run: Run, record: dict, scored: Mapping[str, list]) -> None:
  """Adds `scored` ({entry: per-item records}) to the run's item file (entries already there are kept, those
  scored again replaced) and names the file, its sha256 and its entries in `record['items']`."""
  from grow_jax.evaluation import items as item_records
  if not scored:
    return
  path = items_path(out_dir, run)
  known = record.get("items", {}).get("entries", {})      # what the record names (a write cut short adds nothing)
  present = item_records.read_items(path) if known and files.as_path(path).exists() else {}
  present = {entry: values for entry, values in present.items() if entry in known}
  written = item_records.write_items(path, {**present, **scored})
  record["items"] = {"file": os.path.basename(path), "sha256": written["sha256"], "entries": written["entries"]}


def write_record(out_dir: str, run: Run, record: Mapping[str, Any]) -> None:
  """`<out_dir>/runs/<run file name>`: the run's record, which marks it done."""
  files.write_text(os.path.join(out_dir, "runs", run.file_name), json.dumps(record, indent=1, sort_keys=True) + "\n")


# Periodic evaluations (learning curves) read the params and change nothing in training.
_CURVE_KEYS = ("eval.tasks", "eval_every_steps", "eval.max_examples", "eval.at_start")


def training_config(study: Study, run: Run) -> dict[str, Any]:
  """The run's config as flat {dotted key: value}, without the periodic-evaluation keys."""
  config, _ = run_config(study, run, "")
  return {k: v for k, v in _flat(config).items() if k not in _CURVE_KEYS}


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{dotted key: value} of every leaf."""
  flat = {}

  def walk(prefix, node):
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(prefix + key + ".", value)
      else:
        flat[prefix + key] = value
  walk("", config.to_dict())
  return flat


def scored_entries(study: Study, run: Run) -> list[tuple[str, int]]:
  """The (entry, limit) pairs a run's phase adds to its record: validation for a sweep run, test for a test
  run (its sweep record holds validation), both for a seed run and a base run."""
  spec = study.spec
  if run.phase == "test":
    return [tuple(e) for e in spec.test_eval[run.task]]
  tests = [] if run.phase == "sweep" else spec.test_eval[run.task]
  return [tuple(e) for e in list(spec.validation_eval[run.task]) + list(tests)]


# ---- a run's identity ------------------------------------------------------------------------------------
_ABSENT = "(absent)"


def _canonical(value):
  """As JSON stores it (tuples become lists), so a value computed now compares equal to one read back."""
  return json.loads(json.dumps(value, sort_keys=True))


def record_run(record: Mapping[str, Any]) -> Run:
  """The run a record is of (its test phase records into the sweep run's record)."""
  return Run(record["task"], record["method"], tuple(tuple(kv) for kv in record["hparams"]), record["seed"],
             record["phase"])


def evaluation_spec(study: Study, run: Run, tested: bool = False) -> dict[str, list]:
  """The sets, with their limits, a record of `run` is scored on: {'validation': [[entry, limit], ...]} and
  'test' for a base or seed run, or for a sweep run once its test phase is `tested`."""
  spec = study.spec
  out = {"validation": [list(e) for e in spec.validation_eval[run.task]]}
  if run.phase in ("base", "seeds") or tested:
    out["test"] = [list(e) for e in spec.test_eval[run.task]]
  return out


def identity_fields(study: Study, run: Run, tested: bool = False) -> dict[str, Any]:
  """What a record stores to be recognised later: {'config': the resolved training config (flat dotted keys, the
  periodic-evaluation keys aside: they change nothing in training), 'evaluations': `evaluation_spec`,
  'identity': a hash of both}."""
  config = _canonical(training_config(study, run))
  evaluations = _canonical(evaluation_spec(study, run, tested))
  text = json.dumps({"config": config, "evaluations": evaluations}, sort_keys=True)
  return {"config": config, "evaluations": evaluations, "identity": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _config_problems(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """'key old -> new' for every dotted key whose value differs. A key the record lacks matches when the study
  leaves it at base_config()'s default: a knob added to the trainer since, at the behaviour it had before."""
  defaults = _canonical(_flat(config_lib.base_config()))
  out = []
  for key in sorted(set(old) | set(new)):
    if key not in old and key in new and key in defaults and new[key] == defaults[key]:
      continue
    if old.get(key, _ABSENT) != new.get(key, _ABSENT):
      out.append(f"{key} {old.get(key, _ABSENT)!r} -> {new.get(key, _ABSENT)!r}")
  return out


def _evaluation_problems(old: Mapping[str, list], new: Mapping[str, list]) -> list[str]:
  out = []
  for phase in sorted(set(old) | set(new)):
    before, now = dict(map(tuple, old.get(phase, []))), dict(map(tuple, new.get(phase, [])))
    out += [f"{phase}_eval[{entry}] {before.get(entry, _ABSENT)} -> {now.get(entry, _ABSENT)}"
            for entry in sorted(set(before) | set(now)) if before.get(entry, _ABSENT) != now.get(entry, _ABSENT)]
  return out


def _legacy_problems(study: Study, run: Run, record: Mapping[str, Any]) -> list[str]:
  """A record written before identities (no 'identity'): the keys it did store — steps, batch size, sequence
  length, mode, its grid point and seed — against the study's resolved config now, and the sets it was scored
  on (with their example counts, where the metric records one) against the study's sets and limits."""
  config = _canonical(training_config(study, run))
  implied = {"batch_size": record.get("batch_size"), "data.seq_len": record.get("seq_len"),
             "train.mode": record.get("mode"), "seed": record["seed"], **dict(run.hparams)}
  if run.method != "base":                 # a base record's 'steps' is 0 whatever the config says
    implied["total_steps"] = record.get("steps")
  out = [f"{key} {value!r} -> {config.get(key, _ABSENT)!r}" for key, value in sorted(_canonical(implied).items())
         if value != config.get(key, _ABSENT)]
  if record.get("diverged"):               # scored on nothing
    return out
  scored: dict[str, Any] = {}
  for key, value in record.get("final", {}).items():
    entry, metric = key.split("/", 1)
    scored.setdefault(entry, None)
    if metric == "num_examples":
      scored[entry] = int(value)
  validation = {e: n for e, n in study.spec.validation_eval[run.task]}
  test = {e: n for e, n in study.spec.test_eval[run.task]}
  tested = run.phase in ("base", "seeds") or "test_seconds" in record
  expected = {**validation, **(test if tested else {})}
  for entry in sorted(set(scored) | set(expected)):
    where = "validation_eval" if entry in validation else "test_eval"
    if entry not in scored:
      out.append(f"{where}[{entry}] not scored -> {expected[entry]}")
    elif entry not in expected:
      out.append(f"{where}[{entry}] scored -> {_ABSENT}")
    elif scored[entry] is not None and scored[entry] != expected[entry]:
      out.append(f"{where}[{entry}] {scored[entry]} scored -> {expected[entry]}")
  return out


def identity_problems(study: Study, record: Mapping[str, Any]) -> list[str]:
  """How a record differs from what the study file now asks for its run: ['<dotted key> old -> new', ...]
  (empty: the record may be re-used)."""
  run = record_run(record)
  if "identity" not in record:
    return _legacy_problems(study, run, record)
  now = identity_fields(study, run, tested="test" in record.get("evaluations", {}))
  if now["identity"] == record["identity"]:
    return []
  return (_config_problems(record.get("config", {}), now["config"])
          + _evaluation_problems(record.get("evaluations", {}), now["evaluations"]))


def _in_study(study: Study, record: Mapping[str, Any]) -> bool:
  """Whether a record is of a task and method the study still declares (others are never re-used)."""
  task = record.get("task")
  return task in study.spec.tasks and (record.get("method") == "base" or record.get("method") in study.methods(task))


def check_records(study: Study, records: Mapping[str, dict], out_dir: str) -> None:
  """Refuses (one line) records of the study whose identity differs from what the study file now asks for."""
  bad = [(run_id, problems) for run_id, record in sorted(records.items())
         if _in_study(study, record) and (problems := identity_problems(study, record))]
  if not bad:
    return
  (first, problems), others = bad[0], [run_id for run_id, _ in bad[1:]]
  more = f"; and {len(others)} more ({', '.join(others[:3])}{', …' if len(others) > 3 else ''})" if others else ""
  named = {p.split(" ", 1)[0] for p in problems}
  extra = sorted({p.split(" ", 1)[0] for _, ps in bad[1:] for p in ps} - named)
  more += f", which also differ in {', '.join(extra)}" if extra else ""
  raise ConfigError(f"study {study.name}: {len(bad)} recorded run(s) under {out_dir}/runs differ from what the study "
                    f"file now asks for; {first}: {', '.join(problems)}{more}. Revert the study file, or remove "
                    "those records to run them again")


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
  stale = identity_problems(other, theirs)
  if stale:
    raise ConfigError(f"{where}: their record {twin.id} under {other_out}/runs differs from what study {other.name} "
                      f"now asks for: {', '.join(stale)}")
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
  their_items = {}
  if theirs.get("items"):                  # their per-item records of the entries borrowed, checked by their sha256
    from grow_jax.evaluation import items as item_records
    stored = item_records.read_items(os.path.join(other_out, "runs", theirs["items"]["file"]), theirs["items"]["sha256"])
    their_items = {e: stored[e] for e, _ in entries if e in stored}
  if swept is not None:
    swept["final"].update(final)
    swept["test_seconds"] = 0.0
    swept["borrowed_test_from"] = source_id
    if "identity" in swept:
      swept.update(identity_fields(study, run, tested=True))
    write_items(out_dir, run, swept, their_items)
    return swept
  record = {k: v for k, v in theirs.items() if k not in ("curve", "config", "evaluations", "identity", "items")}
  record.update(id=run.id, method=run.method, phase=run.phase, study=study.name, final=final,
                borrowed_from=source_id, borrowed_seconds=theirs["seconds"], train_seconds=0.0,
                eval_seconds=0.0, seconds=0.0)
  record.pop("test_seconds", None)
  if "identity" in theirs:                 # their config equals ours (checked above); a record from before
    record.update(identity_fields(study, run))   # identities stays one, checked on what it stored
  write_items(out_dir, run, record, their_items)
  return record


# A test phase on a machine without the sweep's params retrains the run; before the test sets are scored it must
# reproduce the validation metrics selection read, each within an absolute tolerance: the first glob over
# '<entry>/<metric>' that matches, the study's `reproduce_tolerance` before these defaults. On the machine that
# trained it a retrain is bit-identical (the sweep's params are kept there anyway); another platform's arithmetic
# may flip a greedy decode or two: ~1 of 58 validation countries (0.017), ~1 chrF/BLEU point on 150 pairs.
REPRODUCE_TOLERANCE = {"*/num_examples": 0.0, "*/num_tokens": 0.0, "*/chrf": 1.0, "*/bleu": 1.0, "*": 0.02}


class ReproductionError(GrowJaxError, RuntimeError):
  """A retrained run that does not reproduce its recorded validation metrics within the study's tolerance."""


def tolerance(study: Study, metric: str) -> float:
  """The absolute tolerance a retrained run's `metric` ('<entry>/<metric>') is held to."""
  for pattern, tol in [*study.spec.reproduce_tolerance.items(), *REPRODUCE_TOLERANCE.items()]:
    if fnmatch.fnmatchcase(metric, pattern):
      return float(tol)
  return 0.0


def check_reproduced(study: Study, run: Run, record: Mapping[str, Any], reproduced: Mapping[str, float]) -> None:
  """Raises ReproductionError (one line: each metric, recorded and reproduced values, tolerance) unless every
  validation metric of the retrained `run` is within tolerance of its `record`."""
  misses = []
  for metric, value in sorted(reproduced.items()):
    if metric not in record["final"]:
      continue
    recorded, tol = record["final"][metric], tolerance(study, metric)
    if not abs(value - recorded) <= tol and not (math.isnan(value) and math.isnan(recorded)):
      misses.append(f"{metric} recorded {recorded:.6g}, reproduced {value:.6g} (tolerance {tol:g})")
  if misses:
    raise ReproductionError(f"study {study.name}: {run.id} retrained for its test phase does not reproduce its "
                            f"recorded validation: {'; '.join(misses)}; its test sets are not scored (another "
                            "platform? the study's reproduce_tolerance states what may differ)")


STOPPED_SECONDS = "study_stopped_seconds.json"   # in a run's workdir: the wall time of its earlier attempts
ATTEMPT_SECONDS = "study_attempt_seconds.json"   # in a run's workdir: the running attempt's wall time so far
HEARTBEAT_SECONDS = 60.0                         # how often the running attempt's time is written


def _stopped_seconds(workdir: str) -> float:
  """The wall time of the run's earlier attempts (0 for a first attempt): those a signal stopped, and one that
  failed or was killed (SIGKILL, the machine going away), counted to its last heartbeat: at most
  HEARTBEAT_SECONDS short."""
  total = 0.0
  for name in (STOPPED_SECONDS, ATTEMPT_SECONDS):
    marker = files.as_path(os.path.join(workdir, name))
    if marker.exists():
      total += json.loads(marker.read_text())["seconds"]
  return total


def _train(run: Run, config, workdir: str, earlier: float) -> None:
  """The run's training; a run stopped by SIGTERM or Ctrl-C (the trainer saves and returns) stops the study with
  nothing recorded: its checkpoint stays in `workdir`, and the same study command resumes it. Every attempt's
  wall time is kept in `workdir` (STOPPED_SECONDS; the running attempt's, every HEARTBEAT_SECONDS, in
  ATTEMPT_SECONDS, so that even a killed attempt counts), and a resumed run's record counts all of them.
  `earlier`: `_stopped_seconds(workdir)`, which the caller has read."""
  from grow_jax.train import loop
  t0 = time.time()
  attempt, ledger = os.path.join(workdir, ATTEMPT_SECONDS), os.path.join(workdir, STOPPED_SECONDS)
  if earlier:                                  # a killed attempt's heartbeat joins the earlier attempts
    files.write_text(ledger, json.dumps({"seconds": earlier}))
    files.remove_file(attempt)

  def beat():                                  # a failed write (full disk, workdir gone) stops nothing
    try:
      files.write_text(attempt, json.dumps({"seconds": time.time() - t0}))
    except OSError as e:
      _log.warning("run %s: its attempt time was not written to %s: %s", run.id, attempt, e)

  stop = threading.Event()

  def heartbeat():
    while not stop.wait(HEARTBEAT_SECONDS):
      beat()

  thread = threading.Thread(target=heartbeat, name=f"heartbeat {run.id}", daemon=True)
  thread.start()
  try:
    last = loop.train_and_evaluate(config, workdir) or {}
  except BaseException:
    stop.set()
    thread.join()
    beat()                                     # a failed attempt's time counts when the run is tried again
    raise
  stop.set()
  thread.join()
  files.remove_file(attempt)
  if last.get("preempted"):
    files.write_text(ledger, json.dumps({"seconds": earlier + time.time() - t0}))
    raise StudyInterrupted(f"run {run.id} was stopped by a signal at step {last.get('step')} of "
                           f"{config.total_steps}: nothing recorded; its checkpoint in {workdir} resumes it when "
                           "the same study command runs again")


def execute(study: Study, run: Run, out_dir: str, workdir_root: str, *, keep_workdir: bool = False,
            keep_params: bool = False) -> dict:
  """Trains (unless 'base' or 'test') and evaluates one run; writes and returns its record. `keep_params`: also
  leaves the trained params at params_path(..., folder='kept')."""
  import jax
  from grow_jax import formats
  from grow_jax.formats import params_file
  from grow_jax.model.tokenizer import load_tokenizer
  from grow_jax.train.checkpointing import load_trained_params
  borrowed = borrowed_record(study, run, out_dir)
  if borrowed is not None:
    write_record(out_dir, run, borrowed)
    if run.phase == "test" and run.seed == study.spec.seeds[0]:
      write_selection(study, out_dir, run)
    return borrowed
  config, workdir = run_config(study, run, workdir_root)
  parent = parent_run(study, run)
  if parent is not None and run.phase != "test":
    stage_params = params_path(workdir_root, study, parent, "stages")
    if not files.as_path(stage_params).exists():
      raise ConfigError(f"run {run.id} continues {parent.id}, whose trained params are not at {stage_params} "
                        f"(trained with another --workdir_root or on another machine): delete "
                        f"{os.path.join(out_dir, 'runs', parent.file_name)} to train that run again")
  tokenizer = load_tokenizer(config.data.tokenizer or config.init.source)
  reference = reference_config(study, run, workdir_root)      # KL against the untrained model, at every stage
  t0 = time.time()
  if run.phase == "test":
    record = load_records(out_dir)[run.id]
    stored = params_path(workdir_root, study, run)
    earlier = 0.0                                               # a stopped or killed retrain's earlier attempts
    if not files.as_path(stored).exists():                      # another machine: train the sweep run again, which
      earlier = _stopped_seconds(workdir)                       # must reproduce what selection read before any test
      _train(run, config, workdir, earlier)
      model_config, params, _ = load_trained_params(workdir)
      files.remove_tree(workdir)
      validation = [tuple(e) for e in study.spec.validation_eval[run.task]]
      reproduced = evaluate(validation, config, model_config, params, tokenizer, reference=reference)
      check_reproduced(study, run, record, reproduced)
      params_file.save_params_file(stored, model_config, params)
      record["test_retrained"] = reproduced
    model_config, params = params_file.load_params_file(stored)
    scored = evaluate(scored_entries(study, run), config, model_config, params, tokenizer, reference=reference)
    record["final"].update(scored)
    write_items(out_dir, run, record, getattr(scored, "per_item", {}))
    record["test_seconds"] = time.time() - t0 + earlier
    record["seconds"] += record["test_seconds"]
    record["test_source"] = source_state(exclude=out_dir)
    if "identity" in record:                 # a record from before identities stays one (checked on what it stored)
      record.update(identity_fields(study, run, tested=True))
    write_record(out_dir, run, record)
    if run.seed == study.spec.seeds[0]:      # the selection is the first seed's run; another sweep seed's test
      write_selection(study, out_dir, run)   # at the same point only scores it
      _drop_unselected_params(study, run, workdir_root, out_dir)
    else:
      files.remove_file(stored)
    return record
  record = {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
            "seed": run.seed, "phase": run.phase, "study": study.name, "study_arg": study.arg,
            **source_state(exclude=out_dir), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "steps": 0 if run.method == "base" else config.total_steps,
            "batch_size": config.batch_size, "seq_len": config.data.seq_len, "mode": config.train.mode,
            "device": f"{jax.devices()[0].platform} x{jax.device_count()}", **identity_fields(study, run)}
  if run.method == "base":
    model_config, params = formats.load_checkpoint(config.init.source, seed=config.seed,
                                                   **config_lib.model_overrides(config))
    record["train_seconds"] = 0.0
  else:
    stopped = _stopped_seconds(workdir)      # the attempts before this one (stopped, failed or killed)
    try:
      _train(run, config, workdir, stopped)
    except TrainingDivergedError as e:       # a record all the same: a resumed study must not retry it forever
      record.update(diverged=str(e), final={}, train_seconds=time.time() - t0 + stopped, eval_seconds=0.0,
                    seconds=time.time() - t0 + stopped)
      write_record(out_dir, run, record)
      if not keep_workdir:                   # --keep_workdirs: the last good checkpoint the error names stays
        files.remove_tree(workdir)
      return record
    record["train_seconds"] = time.time() - t0 + stopped
    if stopped:
      record["stopped_seconds"] = stopped     # the part of train_seconds before the last resume
    record["curve"] = read_curve(workdir)
    model_config, params, _ = load_trained_params(workdir)
  t1 = time.time()
  scored = evaluate(scored_entries(study, run), config, model_config, params, tokenizer, reference=reference)
  record["final"] = dict(scored)
  write_items(out_dir, run, record, getattr(scored, "per_item", {}))
  record["eval_seconds"] = time.time() - t1
  record["seconds"] = time.time() - t0 + record.get("stopped_seconds", 0.0)
  if run.phase == "sweep":
    params_file.save_params_file(params_path(workdir_root, study, run), model_config, params)
  if keep_params and run.method != "base":
    params_file.save_params_file(params_path(workdir_root, study, run, "kept"), model_config, params)
  if is_parent_task(study, run.task) and run.method != "base":   # the next stage starts from these
    params_file.save_params_file(params_path(workdir_root, study, run, "stages"), model_config, params)
  write_record(out_dir, run, record)
  if not keep_workdir:
    files.remove_tree(workdir)
  return record


def _drop_unselected_params(study: Study, tested: Run, workdir_root: str, out_dir: str) -> None:
  """Once a method's selected run is tested, the other grid points' params files are not needed (the other sweep
  seeds' runs at the selected point keep theirs for their own test)."""
  for run in expand(study, selections(study, load_records(out_dir))):
    kept = run.hparams == tested.hparams     # the other sweep seeds' runs at the point: their own test comes
    if (run.task, run.method, run.phase) == (tested.task, tested.method, "sweep") and run.id != tested.id and not kept:
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
class Records(dict):
  """Run id -> record (`load_records`); `.frozen` (task, method) -> the method's selection file (`write_selection`)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.frozen: dict[tuple[str, str], dict] = {}


def load_records(out_dir: str, study: Study | None = None) -> Records:
  """Every finished run's record, by run id, and the frozen selections. With `study`: refuses records whose
  identity differs from what the study file now asks for (`check_records`)."""
  root = files.as_path(out_dir)
  records = Records()
  for folder in ("runs", "selections"):
    if not (root / folder).is_dir():
      continue
    for path in sorted((root / folder).iterdir(), key=lambda p: p.name):
      if path.name.endswith(".json"):
        record = json.loads(path.read_text())
        if folder == "runs":
          records[record["id"]] = record
        else:
          records.frozen[(record["task"], record["method"])] = record
  if study is not None:
    check_records(study, records, out_dir)
  return records


def _selection_path(out_dir: str, task: str, method: str) -> str:
  return os.path.join(out_dir, "selections", f"{task}__{method}.json")


def frozen_point(records: Mapping[str, dict], key: tuple[str, str]) -> set[str]:
  """The run ids a method's selection is frozen at (empty: not frozen): its selection file's run once its test is
  scored (None after an override, until the next test); without a file, the sweep records whose test phase ran
  (records from before selection files)."""
  chosen = getattr(records, "frozen", {}).get(key)
  if chosen is not None:
    return {chosen["run"]} if chosen.get("run") else set()
  return {r["id"] for r in records.values() if (r.get("task"), r.get("method")) == key
          and r.get("phase") == "sweep" and "test_seconds" in r}


def _frozen_error(key: tuple[str, str], frozen: set[str], would: str) -> ConfigError:
  task, method = key
  return ConfigError(f"{task}/{method}: the selection is frozen at {', '.join(sorted(frozen))} (its test is scored), "
                     f"but the grid and validation records now {would}; re-select only with "
                     f"--override_selection='{task}/{method}=<who, when, why>'")


def write_selection(study: Study, out_dir: str, run: Run) -> dict:
  """Freezes a method's selection as its test phase is scored: `<out>/selections/<task>__<method>.json` with the
  point chosen on validation, the grid and the candidates it was chosen among, when and from what code; the
  overrides recorded before are kept."""
  records = load_records(out_dir)
  key = (run.task, run.method)
  selected = selections(study, records, freeze=False)
  candidates = [r.id for r in expand(study, selected) if (r.task, r.method, r.phase) == (*key, "sweep")]
  previous = records.frozen.get(key, {})
  selection = {"task": run.task, "method": run.method, "run": run.id, "hparams": [list(kv) for kv in run.hparams],
               "grid": method_grid(study, selected, *key), "candidates": candidates,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "source": source_state(exclude=out_dir),
               "overrides": previous.get("overrides", [])}
  files.write_text(_selection_path(out_dir, *key), json.dumps(selection, indent=1, sort_keys=True) + "\n")
  return selection


def override_selection(study: Study, out_dir: str, target: str, reason: str) -> str:
  """--override_selection '<task>/<method>=<reason>': unfreezes a frozen selection that the grid or validation
  records would now change, recording who/when/why (`reason`) in its selection file; the method is then selected
  anew and its new pick tested. Returns a line saying what was done."""
  task, _, method = target.partition("/")
  if task not in study.spec.tasks or method not in study.methods(task):
    raise ConfigError(f"--override_selection={target}={reason}: expected <task>/<method> of study {study.name} "
                      f"(tasks {sorted(study.spec.tasks)})")
  if not reason.strip():
    raise ConfigError(f"--override_selection={target}=: give a reason (who, when, why); it is recorded")
  key = (task, method)
  records = load_records(out_dir, study)
  frozen = frozen_point(records, key)
  if not frozen:
    return f"{target}: its selection is not frozen; nothing to override"
  would = selections(study, records, freeze=False).get(key)
  if would is not None and would["id"] in frozen:
    return f"{target}: the records still select {would['id']}; nothing to override"
  previous = records.frozen.get(key, {})
  entry = {"from": sorted(frozen), "to": would["id"] if would else "a grid with untrained points", "reason": reason,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "source": source_state(exclude=out_dir)}
  selection = {**previous, "task": task, "method": method, "run": None,
               "overrides": previous.get("overrides", []) + [entry]}
  files.write_text(_selection_path(out_dir, *key), json.dumps(selection, indent=1, sort_keys=True) + "\n")
  return f"{target}: selection frozen at {', '.join(sorted(frozen))} unfrozen ({reason}); it now selects {entry['to']}"


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


def selections(study: Study, records: Mapping[str, dict], *, freeze: bool = True) -> Selected:
  """(task, method) -> the selected sweep record, for every method whose sweep is complete. With the study's
  `extend_edges`, a selection on the edge of its grid extends the grid (`extend_at_edges`) instead, and the
  method is selected once the new points are done. A selection frozen by its test (`frozen_point`) that the grid
  or the validation records would now change raises ConfigError naming both points (`freeze`=False: the pick
  the records make, frozen or not)."""
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
      frozen = frozen_point(records, key) if freeze else set()
      if sweep and len(done) == len(sweep) and finite and base is not None:
        reference = {"base": base, **{m: rec for (t, m), rec in out.items() if t == run.task}}
        pick = study.select(run.task, run.method, finite, reference)
        if study.spec.sweep_seeds > 1:     # several sweep seeds: the point's first-seed run is the selection
          pick = next((r for r in finite if r["hparams"] == pick["hparams"] and r["seed"] == study.spec.seeds[0]),
                      pick)
        grown = extend_at_edges(study.spec.grids.get(run.method, {}), method_grid(study, out, *key),
                                dict(pick["hparams"]), study.spec.extend_edges)
        if grown is None:
          if frozen and pick["id"] not in frozen:
            raise _frozen_error(key, frozen, f"select {pick['id']}")
          out[key] = pick
        else:
          out.grids[key] = grown
        changed = True
      elif frozen and len(done) < len(sweep):
        raise _frozen_error(key, frozen, "name grid points never trained: " + ", ".join(
            r.id for r in sweep if r.id not in records))
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


def release_memory() -> None:
  """Between runs: unreachable arrays and every compiled program dropped, so that a study's one process does not
  grow run after run (each run compiles its own programs; a 270M sequential study was killed for memory at its
  ninth run in one process)."""
  import gc
  import jax
  gc.collect()
  jax.clear_caches()


def run_all(study: Study, out_dir: str, workdir_root: str, *, only: str | None = None, max_runs: int | None = None,
            keep_workdirs: bool = False, keep_params: bool = False,
            on_record: Callable[[dict], None] | None = None) -> int:
  """Executes pending runs until none is left (selections unlock further runs); returns how many ran. Records whose
  identity differs from the study file, or a frozen selection the records would change, stop it first."""
  done = 0
  while max_runs is None or done < max_runs:
    todo = pending(study, load_records(out_dir, study), only)
    if not todo:
      break
    run = todo[0]
    _log.info("study %s: %s run %s (%d pending)", study.name, run.phase, run.id, len(todo))
    record = execute(study, run, out_dir, workdir_root, keep_workdir=keep_workdirs, keep_params=keep_params)
    release_memory()
    done += 1
    if on_record is not None:
      on_record(record)
  return done
