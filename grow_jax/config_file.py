"""Config files as command lines name them: 'path/to/file.py[:arg]' (the file's `get_config(arg)`, big_vision's
convention) and dotted 'a.b=value' overrides, each value parsed as the type of the key it replaces. The one
loader behind `python -m grow_jax.growth.plan --pilot_config=... --pilot_set=...` and the study files
(`study/runs.py`); the trainer's `--config` is ml_collections' config_flags, with the same syntax.

    config = load_config("configs/tiny.py:steps=4", ["train.mode=g_freeze"], flag="--pilot_config")
    module, arg = load_module("experiments/studies/forgetting_270m.py", flag="--study", what="study")
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

from grow_jax.errors import ConfigError


def load_module(text: str, *, flag: str, what: str = "config", name: str | None = None) -> tuple[Any, str | None]:
  """'path.py[:arg]' -> (the executed module, arg or None); a missing file is a one-line ConfigError naming
  `flag`. `name`: the module's name (default '<what>_<file stem>')."""
  path, _, arg = text.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"{flag}={text!r}: no {what} file at {path!r}")
  stem = os.path.basename(path)[:-3] if path.endswith(".py") else os.path.basename(path)
  spec = importlib.util.spec_from_file_location(name or f"{what}_{stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, arg or None


def override(config, item: str, *, flag: str):
  """`config` with one 'a.b=value' override: the value parsed as the type of the key's current value (as
  `--config.a.b=value` does); a key the config lacks is a ConfigError naming `flag`."""
  from grow_jax.train import config as config_lib
  key, sep, text = item.partition("=")
  node = config
  for part in key.split(".")[:-1]:
    node = node[part] if part in node else None
    if node is None:
      break
  leaf = key.split(".")[-1]
  if not sep or node is None or leaf not in node:
    raise ConfigError(f"{flag}={item!r}: expected key=value with a key of the config")
  value = config_lib.parse_arg(f"v={text}", v=node[leaf]).v
  return config_lib.apply_overrides(config, {key: value})


def load_config(text: str, overrides: Sequence[str] = (), *, flag: str = "--config", override_flag: str | None = None):
  """The config of 'path.py[:arg]' (its `get_config(arg)`) with 'a.b=value' `overrides` applied in order."""
  module, arg = load_module(text, flag=flag)
  config = module.get_config(arg)
  for item in overrides:
    config = override(config, item, flag=override_flag or f"{flag} override")
  return config
