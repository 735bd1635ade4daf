"""The task registry: task names -> factories `(**options) -> Task`, and the options a factory takes.

    @register_task("my_task")                     # in a task module (grow_jax/data/*.py) or anywhere outside
    def my_task(limit: int | None = None) -> Task: ...
    build_task("my_task", limit=10)               # the task reading its own source
    list_tasks(); task_options("my_task"); full_options("my_task", {})

One `grow_jax.registry.Registry` with its rule: a duplicate name is a `TaskError` unless `replace=True`; the
built-in tasks are discovered (every module of grow_jax.data is imported on the first lookup, and registers its
tasks); an unknown name is one line listing the known ones. `tasks.get_task` (what the rest of grow_jax calls)
adds the run's data view and staged copies on top of `build_task`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from grow_jax.errors import ConfigError, TaskError
from grow_jax.registry import Registry

TaskFactory = Callable[..., Any]   # (**options) -> tasks.Task
TASKS: Registry[TaskFactory] = Registry("task", package="grow_jax.data", error=TaskError)


def register_task(name: str, *, replace: bool = False) -> Callable[[TaskFactory], TaskFactory]:
  """Decorator: registers `factory(**options) -> Task` under `name` (a duplicate name is a `TaskError` unless
  `replace=True`)."""
  return TASKS.decorator(name, replace=replace)


def list_tasks() -> list[str]:
  """Names of all registered tasks, sorted."""
  return sorted(TASKS.names())


def task_options(name: str) -> list[str]:
  """The keyword options `get_task(name, ...)` accepts."""
  return list(inspect.signature(TASKS.get(name)).parameters)


# The task options a training config can set (`config.data.options`, grow_jax/train/config.py) and their types:
# every keyword option of the built-in tasks. A config hands its task only the options that are set (not None).
CONFIG_OPTIONS: dict[str, type] = {
    "dataset": str, "config": str, "style": str, "with_support": bool, "shots": int,     # which data / format
    "limit": int, "revision": str, "data_files": object, "streaming": bool,              # hub tasks' loading
    "cache_dir": str, "data_dir": str,                                                   # where caches live
    "num_problems": int, "seed": int, "packages": object, "heldout_packages": object,    # offline tasks' builds
    "num_entities": int,
}


def check_options(name: str, options: Mapping[str, Any], *, field: str | None = None) -> None:
  """Raises for an option task `name` does not take: one line naming the option, the task and its options
  (`TaskError`; `ConfigError` naming `field`.<option> when `field` is given, e.g. 'config.data.options')."""
  known = task_options(name)
  unknown = [k for k in options if k not in known]
  if not unknown:
    return
  key = unknown[0]
  if field is not None and not known:
    raise ConfigError(f"{field}.{key}={options[key]!r}: task {name!r} takes no options")
  if field is not None:
    raise ConfigError(f"{field}.{key}={options[key]!r}: task {name!r} does not take option {key!r}; "
                      f"its options: {known}")
  raise TaskError(f"task {name!r} does not take options {unknown}; its options: {known}")


def full_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """Every option of task `name`: `options` with the task's defaults filled in (an unknown one: `TaskError`)."""
  check_options(name, options)
  bound = inspect.signature(TASKS.get(name)).bind(**options)
  bound.apply_defaults()
  return dict(bound.arguments)


def build_task(name: str, **options: Any) -> Any:
  """The registered task `name` with `options`, reading its own source (never a staged copy).

  Raises:
    TaskError: unknown task (the message lists the known ones) or an option the task does not take.
  """
  factory = TASKS.get(name)
  check_options(name, options)
  return factory(**options)
