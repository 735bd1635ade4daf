"""Every config file builds, has the base keys, a command line in its docstring, a working sweep()."""

import glob
import importlib.util
import os

import pytest

from grow_jax.train import config as config_utils
from grow_jax import methods
from grow_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _keys(c, prefix=""):
  out = set()
  for k, v in c.items():
    out.add(prefix + k)
    if hasattr(v, "items"):
      out |= _keys(v, f"{prefix}{k}.")
  return out


def test_expected_config_files_exist():
  names = {os.path.basename(f) for f in FILES}
  assert {"tiny.py", "gemma3_270m.py", "paper_1b.py", "paper_4b.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_config_builds_with_all_keys_and_sweep(path):
  module = _load(path)
  rel = os.path.relpath(path, ROOT)
  assert f"python -m grow_jax.main --config={rel}" in module.__doc__
  base = _keys(config_utils.base_config())
  config = module.get_config()
  assert _keys(config) == base, _keys(config) ^ base
  assert config.train.mode in methods.names()
  config_utils.check(config)
  entries = module.sweep()
  assert entries
  for c in config_utils.expand_sweep(module):
    assert _keys(c) == base
  with pytest.raises(ConfigError, match="unknown config arg 'nonsense'"):
    module.get_config("nonsense=1")


def test_parse_arg_types_and_errors():
  arg = config_utils.parse_arg("steps=5,lr=0.5,flag,name=x", steps=1, lr=0.1, flag=False, name="a", other=3)
  assert (arg.steps, arg.lr, arg.flag, arg.name, arg.other) == (5, 0.5, True, "x", 3)
  with pytest.raises(ConfigError, match=r"config arg steps='x': expected int"):
    config_utils.parse_arg("steps=x", steps=1)
  with pytest.raises(ConfigError, match="unknown config arg 'step'.*known args: steps"):
    config_utils.parse_arg("step=1", steps=1)
  with pytest.raises(ConfigError, match="unknown config key 'optimizer.lr'"):
    config_utils.apply_overrides(config_utils.base_config(), {"optimizer.lr": 1.0})


def test_paper_variants():
  m = _load(os.path.join(ROOT, "configs", "paper_1b.py"))
  c = m.get_config("mode=g_freeze,plan=/tmp/plan.json,task=scitail")
  assert config_utils.growth_factor(c) == 2 and c.growth.plan == "/tmp/plan.json" and c.growth.layers == "all"
  assert c.data.task == "scitail"
  with pytest.raises(ConfigError, match="layers='targeted'.*plan=<plan.json>"):
    m.get_config("layers=targeted")
  with pytest.raises(ConfigError, match="config.growth.layers='3'.*'all' when growth.plan"):
    config_utils.check(m.get_config("layers=3,plan=/tmp/plan.json"))
  assert c.model.dtype == "bfloat16" and c.mesh.fsdp == -1
  assert config_utils.growth_factor(m.get_config("mode=sft")) == 1
  assert m.get_config("mode=lora").train.mode == "lora"
  c4 = _load(os.path.join(ROOT, "configs", "paper_4b.py")).get_config("tensor=2")
  assert c4.mesh.tensor == 2
