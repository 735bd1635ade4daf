"""Staged copies of data tasks, the reading side: where a task is staged, its manifest, and a task whose records
come from the staged copy (`staged_task`); checks that a copy holds what a run reads. Writing them (and the
command line) is stage.py; the layout and the rules are in its docstring.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Sequence

from grow_jax.data import cache
from grow_jax.data.registry import full_options
from grow_jax.errors import CacheError, DataError

ENV_STAGED = "GROW_JAX_STAGED_DATA"   # the staged directory every process reads when the run names none

# Options that say where a cache lives or how records are read, not which records: not compared.
LOCATION_OPTIONS = ("cache_dir", "data_dir", "streaming")
FORMAT = "grow_jax-staged-v1"


def _root(root: str | os.PathLike) -> str:
  """A staged root as a string: gs:// as given, a local path absolute with '~' expanded."""
  from grow_jax import files
  root = os.fspath(root)
  return root.rstrip("/") if files.is_remote(root) else os.path.abspath(os.path.expanduser(root))


def task_path(root: str | os.PathLike, name: str) -> str:
  """Where task `name` is staged under `root` (a directory or gs:// prefix)."""
  return f"{_root(root)}/{name}"


def staged_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """`options` as a staged copy records and compares them: every option of task `name` with its default filled
  in, less `LOCATION_OPTIONS`, as JSON values (tuples become lists)."""
  values = {k: v for k, v in full_options(name, options).items() if k not in LOCATION_OPTIONS}
  return json.loads(json.dumps(values, sort_keys=True, default=_json_value))


def _json_value(value: Any) -> Any:
  if isinstance(value, Mapping):
    return dict(value)
  if isinstance(value, (set, frozenset)):
    return sorted(value)
  raise TypeError(f"a task option of type {type(value).__name__} cannot be recorded: {value!r:.80}")


def staged_tasks(root: str | os.PathLike) -> list[str]:
  """The tasks staged under `root` (those with a manifest), sorted; [] if `root` is missing."""
  from grow_jax import files
  base = files.as_path(_root(root))
  try:
    children = list(base.iterdir())
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(c.name for c in children if (c / cache.MANIFEST).exists())


def read_manifest(root: str | os.PathLike, name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The manifest of task `name` staged under `root`; if it is not there, `DataError` naming what `root` holds
  and the command that stages it (with `options`)."""
  path = task_path(root, name)
  try:
    manifest = cache.read_manifest(path)
  except CacheError:
    held = staged_tasks(root)
    raise DataError(f"staged data {_root(root)} holds no task {name!r} ("
                    + (f"it holds {held}" if held else "it holds no staged task")
                    + f"); stage it where its source is reachable: {stage_command(root, name, options)}") from None
  if manifest.get("format") != FORMAT or manifest.get("task") != name:
    raise DataError(f"{path}: not a staged copy of task {name!r} (manifest format {manifest.get('format')!r}, "
                    f"task {manifest.get('task')!r}); expected format {FORMAT!r}")
  return manifest


def staged_task(root: str | os.PathLike, name: str, task, options: Mapping[str, Any]):
  """`task` (task `name` built with `options`) reading its records from the copy staged under `root`.

  Raises DataError (one line naming both) if the staged copy holds other options; reading a split it does not
  hold raises DataError naming the staged splits.
  """
  manifest = _matching_manifest(root, name, options)
  counts = dict(manifest.get("counts", {}))
  path = task_path(root, name)

  def source(split: str) -> Iterable[dict[str, Any]]:
    check_split(root, name, manifest, split, options)
    records = cache.read_split(path, split)
    if len(records) != counts[split]:
      raise CacheError(f"{path}/{split}.jsonl has {len(records)} records, its manifest says {counts[split]}: "
                       "stage it again (--overwrite)")
    return records

  return dataclasses.replace(task, source=source)


def _matching_manifest(root, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  manifest = read_manifest(root, name, options)
  asked = staged_options(name, options)
  if manifest.get("options") != asked:
    held, want = _diff(manifest.get("options"), asked)
    raise DataError(f"staged data {task_path(root, name)} holds task {name!r} with options {held}; this run asks "
                    f"for task {name!r} with options {want}: stage those "
                    f"({stage_command(root, name, options, manifest.get('counts'), overwrite=True)}) or point "
                    f"config.data.staged (${ENV_STAGED}) elsewhere")
  return manifest


def check_split(root, name: str, manifest: Mapping[str, Any], split: str,
                options: Mapping[str, Any] | None = None) -> None:
  """DataError naming the staged splits if `split` of task `name` (staged with `options`) is not staged."""
  counts = manifest.get("counts", {})
  if split not in counts:
    raise DataError(f"staged data {task_path(root, name)} holds splits {sorted(counts)} of task {name!r}, not "
                    f"{split!r}; stage it: {stage_command(root, name, options, [*counts, split], overwrite=True)}")


def check_reads(root: str | os.PathLike, reads: Mapping[str, tuple[Mapping[str, Any], Sequence[str]]]) -> None:
  """Checks that `root` holds every {task: (options, splits)} a run reads (reads manifests only)."""
  for name, (options, splits) in reads.items():
    manifest = _matching_manifest(root, name, options)
    for split in splits:
      check_split(root, name, manifest, split, options)


def stage_command(root, name: str, options: Mapping[str, Any] | None = None, splits: Iterable[str] | None = None,
                  *, overwrite: bool = False) -> str:
  """The command line that stages task `name` with `options` (those differing from the task's defaults) and
  `splits` under `root`."""
  import shlex
  defaults = full_options(name, {})
  parts = ["python -m grow_jax.data.stage", f"--task={name}"]
  if splits:
    parts.append(f"--splits={','.join(sorted(set(splits)))}")
  for key, value in sorted((options or {}).items()):
    if key in LOCATION_OPTIONS or value == defaults.get(key):
      continue
    if key == "limit":
      parts.append(f"--limit={value}")
    else:
      parts.append(shlex.quote(f"--option={key}={value if isinstance(value, str) else repr(value)}"))
  parts.append(shlex.quote(f"--out={_root(root)}"))
  return " ".join(parts + (["--overwrite"] if overwrite else []))


def _diff(held: Mapping[str, Any] | None, asked: Mapping[str, Any]) -> tuple[dict, dict]:
  """The options where `held` and `asked` differ, as two dicts (all of both if nothing differs)."""
  held = dict(held or {})
  keys = sorted(k for k in {*held, *asked} if held.get(k) != asked.get(k)) or sorted({*held, *asked})
  return {k: held.get(k) for k in keys}, {k: asked.get(k) for k in keys}
