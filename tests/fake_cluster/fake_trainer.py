"""Stands in for `python -m grow_jax.main ...` on fake TPU workers and fake SLURM nodes.

Prints one line, "FAKE_TRAINER " + JSON, and appends it to $HOME/trainer.jsonl: its arguments, directory, home,
pid, the launcher-set variables, and the plan grow_jax.distributed makes here (grow_jax/distributed.py of the
code in the current directory, loaded by path without starting JAX). $FAKE_TRAINER_INIT=1: also really calls
grow_jax.distributed.initialize and adds process index/count, device counts and an all-gather of the process
indices. Then sleeps $FAKE_SLEEP seconds and exits with $FAKE_EXIT.
"""

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

VARS = ("GROW_JAX_DISTRIBUTED", "JAX_PLATFORMS", "FAKE_LAUNCHED_JAX_PLATFORMS", "SLURM_PROCID", "SLURM_LOCALID",
        "SLURM_NODEID", "CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION")

record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "home": os.environ.get("HOME"), "pid": os.getpid(),
          "env": {k: os.environ[k] for k in VARS if k in os.environ}}
source = Path("grow_jax/distributed.py")
if source.exists():
  spec = importlib.util.spec_from_file_location("fake_trainer_distributed", source)
  distributed = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = distributed  # dataclasses look their module up there
  spec.loader.exec_module(distributed)
  if os.environ.get("FAKE_TRAINER_INIT") == "1":
    plan = distributed.initialize()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    record.update(process_index=jax.process_index(), process_count=jax.process_count(),
                  local_device_count=jax.local_device_count(), device_count=jax.device_count(),
                  allgather=np.asarray(multihost_utils.process_allgather(np.array([jax.process_index()])))
                  .reshape(-1).tolist())
  else:
    plan = distributed.plan(None, os.environ)
  record["plan"] = {"mode": plan.mode, "kwargs": plan.kwargs}
line = "FAKE_TRAINER " + json.dumps(record, sort_keys=True)
with open(Path(os.environ["HOME"]) / "trainer.jsonl", "a") as f:
  f.write(line[len("FAKE_TRAINER "):] + "\n")
sys.stdout.write(line + "\n")  # one write: tasks sharing a log cannot split a report
sys.stdout.flush()
time.sleep(float(os.environ.get("FAKE_SLEEP") or 0))
sys.exit(int(os.environ.get("FAKE_EXIT") or 0))
