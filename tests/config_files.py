"""The repository's config files as tests load them: `load_config("tiny", "mode=g_freeze")` is what
`--config=configs/tiny.py:mode=g_freeze` gives the trainer."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = ""):
  """`configs/<name>.py`'s get_config(arg)."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
