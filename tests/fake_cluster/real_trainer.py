"""The real trainer on a fake TPU worker or SLURM node: what `python -m grow_jax.main ARGS` runs (the module as
__main__, imported from the current directory, the worker's code/), used by venv_python and bin/python when
$FAKE_REAL_TRAINER=1. One test hook, for a kill at a known step:

  $FAKE_STALL_AT_STEP=N   the run is held before its Nth train step of this process (a fresh run: step N), after
                          writing $HOME/fake_stall.json ({"pid", "step"}), until a stop signal is recorded
                          (SIGTERM from tpu_run.sh --kill, scancel; Ctrl-C); then it goes on, and stops as the
                          trainer does (the step, a checkpoint, exit 0). SIGKILL ends it where it is held.
"""

import json
import os
import runpy
import sys
import time
from pathlib import Path


def _hold_before(n):
  from grow_jax.train import preemption, setup

  signalled = []
  record = preemption.SignalFlag._handle

  def handle(self, signum, frame):
    record(self, signum, frame)
    signalled.append(signum)

  preemption.SignalFlag._handle = handle
  jit_train_step = setup.jit_train_step

  def held_jit_train_step(*args, **kwargs):
    step_fn, calls = jit_train_step(*args, **kwargs), [0]

    def step(state, batch):
      calls[0] += 1
      if calls[0] == n:
        (Path(os.environ["HOME"]) / "fake_stall.json").write_text(json.dumps({"pid": os.getpid(), "step": n}))
        print(f"FAKE_STALL: held before step {n} until a stop signal", file=sys.stderr, flush=True)
        while not signalled:
          time.sleep(0.1)
      return step_fn(state, batch)

    return step

  setup.jit_train_step = held_jit_train_step


sys.path[0] = os.getcwd()               # as `python -m`: the current directory first
if os.environ.get("FAKE_STALL_AT_STEP"):
  _hold_before(int(os.environ["FAKE_STALL_AT_STEP"]))
runpy.run_module("grow_jax.main", run_name="__main__", alter_sys=True)
