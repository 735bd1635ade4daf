"""The growth-plan JSON: its format, reading it (one-line errors), writing it, and whether it fits a model.

What the trainer needs of a plan (`config.growth.plan`): train/ reads plans through this module, while making
them (criteria, budgets, pilot runs, the command line) is plan.py, which sits above the trainer.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from grow_jax import files
from grow_jax.errors import ConfigError
from grow_jax.model.config import ModelConfig

FORMAT = "grow_jax.plan/1"
SIGNATURE = ("vocab_size", "embed_dim", "hidden_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim")


def model_signature(config: ModelConfig) -> dict[str, int]:
  return {k: int(getattr(config, k)) for k in SIGNATURE}


def write_plan(plan: Mapping[str, Any], path: str) -> None:
  files.write_text(path, json.dumps(plan, indent=1, sort_keys=True) + "\n")


def read_plan(path: str, field: str = "plan") -> dict[str, Any]:
  """A growth plan from its JSON file; one-line errors naming `field`."""
  p = files.as_path(path)
  if not p.exists():
    raise ConfigError(f"{field}={path!r}: no such file (write one with python -m grow_jax.growth.plan)")
  try:
    plan = json.loads(p.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"{field}={path!r}: not valid JSON ({e})") from None
  if not isinstance(plan, dict) or plan.get("format") != FORMAT or not isinstance(plan.get("layers"), list):
    found = plan.get("format") if isinstance(plan, dict) else type(plan).__name__
    raise ConfigError(f"{field}={path!r}: not a growth plan (format {found!r}, expected {FORMAT!r} with 'layers')")
  return plan


def check_model(plan: Mapping[str, Any], config: ModelConfig, field: str = "plan") -> None:
  """Raises ConfigError when the plan was made for another (ungrown) model than `config`."""
  ours = model_signature(config)
  diff = [f"{k}={plan['model'].get(k)!r} (this model {v})" for k, v in ours.items() if plan["model"].get(k) != v]
  if diff:
    raise ConfigError(f"{field}: the plan is for another model (base {plan.get('base')!r}): {', '.join(diff)}")
