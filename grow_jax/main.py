"""Command line: `python -m grow_jax.main --config=configs/tiny.py[:key=value,...] --workdir=DIR [--config.a.b=x]`.

Multi-host: every process runs the same command; `--distributed` (default $GROW_JAX_DISTRIBUTED, else auto)
says how they find each other (grow_jax/distributed.py: explicit coordinator flags, a TPU VM slice, a SLURM
step). Then hands off to `train.loop.train_and_evaluate`. Bad input (config, mesh, data, checkpoints, a held
workdir) ends with a one-line error on stderr (any `grow_jax.errors.GrowJaxError`) and exit status 1; a bad
flag or config file with exit status 2.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py:mode=g_freeze.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", None, ["auto", "off", "explicit", "tpu", "slurm"],
                                 "How to start jax.distributed; default $GROW_JAX_DISTRIBUTED, else auto.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  """Starts jax.distributed as --distributed says (grow_jax/distributed.py), before anything touches a device."""
  from grow_jax import distributed
  try:
    distributed.initialize(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                           num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  except distributed.DistributedConfigError as e:
    print(f"grow_jax.main: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config errors (unknown key, bad value) reported as one line, exit status 2."""
  from grow_jax.errors import GrowJaxError
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error, or what ml_collections raises for an unknown --config.a.b
    cause, seen, innermost = e, set(), None
    while cause is not None and id(cause) not in seen:     # ml_collections re-wraps the config's own error
      seen.add(id(cause))
      innermost = cause if isinstance(cause, GrowJaxError) else innermost
      cause = cause.__cause__ or cause.__context__
    if innermost is not None:
      message = str(innermost)
    elif isinstance(e, (AttributeError, KeyError)):
      name = str(e).strip("\"'")
      culprits = [a.split("=", 1)[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")
                  and name in a.split("=", 1)[0][len("--config."):].split(".")]
      message = f"unknown config key {culprits[0] if culprits else name!r}" + (
          f" (from --config.{culprits[0]}); see the config's keys in grow_jax/train/config.py" if culprits else "")
    elif isinstance(e, (flags.Error, OSError)):
      # ml_collections puts the config file's traceback into the message: keep its last line.
      lines = [l.strip() for l in str(e).splitlines() if l.strip()]
      message = lines[-1] if lines else repr(e)
      if "Traceback" in str(e) and ": " in message:
        kind, _, text = message.partition(": ")
        message = text if kind.endswith("Error") else message
    else:
      raise
    print(f"grow_jax.main: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  # orbax logs every save step by step at INFO through absl's logger: keep its warnings only.
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  _initialize_distributed()
  from grow_jax import errors, runtime
  runtime.enable_compilation_cache()
  from grow_jax.errors import GrowJaxError
  from grow_jax.train import loop
  try:
    config = _CONFIG.value
    config.get("seed")       # a config file that failed to load raises here (ml_collections defers it)
  except OSError as e:       # the config file could not be loaded (ml_collections loads it lazily)
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    print(f"grow_jax.main: error: --config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: "
          f"{lines[-1] if lines else e}", file=sys.stderr, flush=True)
    sys.exit(2)
  try:
    loop.train_and_evaluate(config, _WORKDIR.value)
  except GrowJaxError as e:
    errors.print_error("grow_jax.main", e)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
