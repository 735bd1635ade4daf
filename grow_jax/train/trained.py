"""A trained model and the weights it started from, for the tools that compare the two (growth plans rank layers
by how far a pilot moved; the dial moves a trained model back toward its base).

The trained model is a workdir (its newest or a given checkpoint step) or a grow_jax params file (`*.safetensors`,
e.g. a study's `--keep_params` run). Its starting weights are `base` (a checkpoint source or a params file) or,
for a workdir, the init source its config.json names, drawn with the run's seed and model overrides as the
trainer drew them. A params file does not name its starting weights, so it needs `base`.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from grow_jax import files
from grow_jax.errors import ConfigError


class TrainedWithBase(NamedTuple):
  config: Any                  # the trained model's ModelConfig (grown, when the run grew)
  params: Any                  # what model.forward takes (a method's adapters merged)
  base_config: Any
  base_params: Any
  base: str                    # where the starting weights came from
  run: dict[str, Any]          # the workdir's config.json ({} for a params file)
  step: int | None             # the checkpoint step (None for a params file)
  method: str | None           # the method that trained it, from the checkpoint (None for a params file)


def run_config(workdir: str) -> dict[str, Any]:
  """A workdir's config.json (what the trainer wrote), or {} when it has none."""
  path = files.as_path(os.path.join(os.fspath(workdir), "config.json"))
  return json.loads(path.read_text()) if path.exists() else {}


def is_params_file(path: str) -> bool:
  return os.fspath(path).endswith(".safetensors")


def load_with_base(path: str, *, base: str | None = None, step: int | None = None,
                   flag: str = "--workdir") -> TrainedWithBase:
  """The trained model at `path` and its starting weights (see the module docstring). `flag` names the
  command-line flag that gave `path`, for the one-line errors."""
  from grow_jax import formats
  from grow_jax.formats import params_file
  from grow_jax.train.checkpointing import load_trained_params
  path = os.fspath(path)
  if is_params_file(path):
    if not base:
      raise ConfigError(f"{flag}={path!r} is a params file, which does not name its starting weights: pass --base")
    if step is not None:
      raise ConfigError(f"--step={step}: a params file holds one step; --step is for workdirs")
    run, (config, params), found_step, method = {}, params_file.load_params_file(path), None, None
  else:
    run = run_config(path)
    base = base or run.get("init", {}).get("source")
    if not base:
      raise ConfigError(f"{flag}={path!r} has no config.json naming its init source: pass --base")
    config, params, meta = load_trained_params(path, step=step)
    found_step, method = int(meta["step"]), meta["method"]["name"]
  if is_params_file(base) or base.startswith("params:"):
    base_config, base_params = formats.load_checkpoint(base)
  else:
    overrides = {k: v for k, v in run.get("model", {}).items() if v is not None}
    base_config, base_params = formats.load_checkpoint(base, seed=int(run.get("seed", 0)), **overrides)
  return TrainedWithBase(config, params, base_config, base_params, base, run, found_step, method)


def is_workdir(src: str) -> bool:
  """A trainer workdir (a directory that is not an 'hf:' source)."""
  return not src.startswith(("hf:", "gguf:", "random:", "params:")) and files.as_path(src).is_dir()


def load_model(src: str, *, deltas=(), active_tasks: str | None = None, cache: str | None = None):
  """(config, params) as the command lines load a model (`grow_jax.evaluate --checkpoint`, `grow_jax.convert
  --src`): a trainer workdir's newest readable checkpoint (as the forward sees it: LoRA merged), a grow_jax params
  file or a model source (formats.load_checkpoint), then `deltas` (delta files) applied in order and only
  `active_tasks` on (growth.tasks.parse_active's forms; None: every task as trained)."""
  from absl import logging
  from grow_jax.formats import delta as delta_lib
  from grow_jax.growth import tasks as task_lib
  active = task_lib.parse_active(active_tasks)
  if is_workdir(src):
    from grow_jax.train.checkpointing import load_trained_params
    config, params, meta = load_trained_params(src)
    logging.info("restored %s at step %s (method %s)", src, meta.get("step"), meta["method"]["name"])
  else:
    config, params = delta_lib.load_with_deltas(src, [], **({"cache": cache} if cache else {}))
  for delta in deltas:
    config, params = delta_lib.apply_delta(config, params, delta)
  return task_lib.select_tasks(config, params, active)
