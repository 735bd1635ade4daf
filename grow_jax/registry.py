"""One registry helper for the three extension points: methods, data tasks and evaluations.

    METHODS = Registry("method", package="grow_jax.methods", error=ConfigError)
    METHODS.add("lora", LoRA)                  # a duplicate name is an error ...
    METHODS.add("lora", MyLoRA, replace=True)  # ... unless replaced explicitly
    METHODS.get("lora")                        # an unknown name: one line listing the known names
    METHODS.names()                            # in registration order

The rule is the same for all three:
  * A duplicate name is an error naming the module that registered it first, unless the new entry says
    `replace=True`. Registering the same definition again (same module and qualified name, e.g. a module
    imported twice) is not a duplicate.
  * Built-in entries are discovered, not listed: on the first lookup every module of the registry's package is
    imported (`pkgutil`), and each registers what it defines. No list of modules to keep, and no import of them
    from the registry's own module, so a package never imports itself in a circle.
  * An entry registered from outside the package (a notebook, a test, a plug-in module) sees the built-ins
    first: the registry discovers them before adding it, so a clash with a built-in name is caught at once.

This module imports nothing from grow_jax but errors.py, and no third-party library.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from grow_jax.errors import GrowJaxError

T = TypeVar("T")


class RegistryError(GrowJaxError, ValueError):
  """A duplicate registration or an unknown name (when a registry names no error type of its own)."""


class Registry(Generic[T]):
  """Named entries of one kind (see the module docstring).

  Args:
    kind: what an entry is, for messages ('method', 'task', 'evaluation').
    package: the package whose modules define the built-in entries (imported on first lookup).
    error: the exception type raised for a duplicate or an unknown name (a GrowJaxError subclass).
    origin: entry -> the object whose module and qualified name say where the entry was defined (default: the
      entry itself; e.g. the factory of an entry that wraps one).
  """

  def __init__(self, kind: str, package: str, *, error: type[Exception] = RegistryError,
               origin: Callable[[T], object] = lambda entry: entry):
    self.kind = kind
    self.package = package
    self.error = error
    self.origin = origin
    self._entries: dict[str, T] = {}
    self._discovered = False
    self._discovering = False

  # ---- registering ------------------------------------------------------------------------------------------
  def add(self, name: str, entry: T, *, replace: bool = False) -> T:
    """Registers `entry` under `name` and returns it (see the module docstring for the duplicate rule)."""
    if not isinstance(name, str) or not name:
      raise self.error(f"{self.kind} name {name!r}: expected a non-empty string")
    if not _defined_in(self.origin(entry), self.package):
      self.discover()
    old = self._entries.get(name)
    if old is not None and not replace and not _same_definition(self.origin(old), self.origin(entry)):
      raise self.error(f"{self.kind} {name!r} is already registered (by {_origin(self.origin(old))}); pass "
                       "replace=True to replace it")
    self._entries[name] = entry
    return entry

  def decorator(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
    """`@registry.decorator("name")`: `add(name, entry)` as a decorator."""
    return lambda entry: self.add(name, entry, replace=replace)

  def remove(self, name: str) -> None:
    """Forgets `name` (tests that register an entry of their own); an unknown name is no error."""
    self._entries.pop(name, None)

  # ---- looking up ---------------------------------------------------------------------------------------
  def get(self, name: str) -> T:
    """The entry `name`; an unknown name raises `error` in one line listing the known names."""
    self.discover()
    if name not in self._entries:
      raise self.error(f"unknown {self.kind} {name!r}; known {self.kind}s: {self.names()}")
    return self._entries[name]

  def names(self) -> list[str]:
    """The registered names, in registration order (the built-ins in their modules' order)."""
    self.discover()
    return list(self._entries)

  def items(self) -> list[tuple[str, T]]:
    """(name, entry) pairs, in registration order."""
    return [(name, self._entries[name]) for name in self.names()]

  def __contains__(self, name: object) -> bool:
    self.discover()
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def discover(self) -> None:
    """Imports every module of the package once (each registers its built-in entries)."""
    if self._discovered or self._discovering:
      return
    self._discovering = True
    try:
      package = importlib.import_module(self.package)
      for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
          importlib.import_module(f"{self.package}.{module.name}")
      self._discovered = True
    finally:
      self._discovering = False


def _module_of(entry: object) -> str:
  return getattr(entry, "__module__", None) or type(entry).__module__


def _defined_in(entry: object, package: str) -> bool:
  module = _module_of(entry)
  return module == package or module.startswith(package + ".")


def _same_definition(a: object, b: object) -> bool:
  """The same object, or the same definition made again (a module imported twice: same module and name)."""
  if a is b:
    return True
  qualname = getattr(a, "__qualname__", None)
  return (qualname is not None and "<lambda>" not in qualname and qualname == getattr(b, "__qualname__", None)
          and _module_of(a) == _module_of(b))


def _origin(entry: object) -> str:
  name = getattr(entry, "__qualname__", None) or type(entry).__name__
  return f"{_module_of(entry)}.{name}"
