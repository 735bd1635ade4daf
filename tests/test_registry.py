"""One registry rule for methods, tasks and evaluations (grow_jax/registry.py): a duplicate name is an error
unless replaced explicitly, an unknown name is one line listing the known ones, built-ins are discovered by
importing the package's modules on the first lookup."""

import subprocess
import sys

import pytest

from grow_jax import methods
from grow_jax.data import tasks
from grow_jax.errors import ConfigError, TaskError
from grow_jax.evaluation import registry as evaluations
from grow_jax.registry import Registry, RegistryError


def _pkg(tmp_path, monkeypatch, name="plugins"):
  """A package `name` with two modules that register entries in a registry that lives in `name`/__init__."""
  pkg = tmp_path / name
  pkg.mkdir()
  (pkg / "__init__.py").write_text("from grow_jax.registry import Registry\n"
                                   f"THINGS = Registry('thing', package={name!r})\n")
  (pkg / "one.py").write_text(f"from {name} import THINGS\n\n\ndef one():\n  return 1\n\n\nTHINGS.add('one', one)\n")
  (pkg / "two.py").write_text(f"from {name} import THINGS\n\n\ndef two():\n  return 2\n\n\nTHINGS.add('two', two)\n")
  (pkg / "_private.py").write_text("raise RuntimeError('a module starting with _ is not discovered')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  import importlib
  return importlib.import_module(name)


def test_built_ins_are_discovered_on_the_first_lookup_and_unknown_names_list_them(tmp_path, monkeypatch):
  pkg = _pkg(tmp_path, monkeypatch)
  assert "plugins.one" not in sys.modules              # nothing imported until someone looks
  assert pkg.THINGS.get("two")() == 2 and pkg.THINGS.names() == ["one", "two"]
  with pytest.raises(RegistryError, match=r"^unknown thing 'three'; known things: \['one', 'two'\]$"):
    pkg.THINGS.get("three")


def test_a_duplicate_is_an_error_unless_replaced_and_an_outside_entry_sees_the_built_ins(tmp_path, monkeypatch):
  pkg = _pkg(tmp_path, monkeypatch, "plugins2")
  mine = lambda: 10                                    # defined outside the package: the built-ins come first
  with pytest.raises(RegistryError, match=r"thing 'one' is already registered \(by plugins2.one.one\); pass "
                     "replace=True"):
    pkg.THINGS.add("one", mine)
  assert pkg.THINGS.add("one", mine, replace=True) is mine and pkg.THINGS.get("one")() == 10
  pkg.THINGS.add("one", mine)                          # the same object again: not a duplicate
  pkg.THINGS.remove("one")
  assert pkg.THINGS.names() == ["two"]


def test_methods_tasks_and_evaluations_share_the_rule():
  for registry, error in ((methods.base.METHODS, ConfigError), (tasks.TASKS, TaskError),
                          (evaluations.EVALUATIONS, ConfigError)):
    assert isinstance(registry, Registry) and registry.error is error
  with pytest.raises(ConfigError, match="training mode 'sft' is already registered"):
    methods.register(type("Other", (methods.Method,), {"name": "sft"}))
  with pytest.raises(TaskError, match="task 'sciq' is already registered"):
    tasks.register_task("sciq")(lambda: None)
  with pytest.raises(ConfigError, match="evaluation 'smoke_ppl' is already registered"):   # was a silent overwrite
    evaluations.register("smoke_ppl")(lambda ctx, split: None)
  with pytest.raises(ConfigError, match=r"^unknown evaluation 'nope'; known evaluations: \[.*'smoke_ppl'"):
    evaluations.EVALUATIONS.get("nope")


def test_the_task_registry_finds_every_built_in_task_without_a_list_of_modules():
  code = ("import sys; from grow_jax.data import registry; names = registry.list_tasks(); "
          "assert {'synthetic', 'sciq', 'capitals', 'stdlib_text', 'fictional_facts'} <= set(names), names; "
          "print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == "ok", out.stderr[-2000:]
