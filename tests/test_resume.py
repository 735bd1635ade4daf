"""Exact resume after SIGKILL, clean stop on SIGTERM, NaN stop keeping the last good checkpoint.

The subprocess runs share a persistent XLA compilation cache, so only the first one compiles.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time


import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from grow_jax import tree_paths
from grow_jax.train import checkpointing
from grow_jax.train import loop as train
from grow_jax.errors import TrainingDivergedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
ARGS = [f"--config=configs/tiny.py:steps={STEPS},layers_n=1,seq_len=16", "--config.checkpoint.every_steps=5",
        "--config.log_every_steps=1", "--config.checkpoint.keep=2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ)
  e.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
           JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return e


def _cmd(workdir, extra=()):
  return [sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={workdir}", *extra]


def _run(workdir, env, extra=()):
  proc = subprocess.run(_cmd(workdir, extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _last_logged_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(l)["step"] for l in f if l.strip().endswith("}")]
  return max(steps, default=0)


def _final_state(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  assert step in manager.all_steps(), manager.all_steps()
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  return {p: np.asarray(x) for p, x in tree_paths.flatten_items(state)}


def _complete_steps(workdir):
  """Checkpoint steps whose (asynchronous) save has finished."""
  if not (workdir / "checkpoints").is_dir():
    return []
  return checkpointing.Checkpointer(str(workdir / "checkpoints"), read_only=True).all_steps()


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path, env):
  ref_dir = tmp_path / "reference"
  proc = _run(ref_dir, env)
  reference = _final_state(ref_dir, STEPS)
  # The run trained, evaluated, logged and checkpointed: config.json, TensorBoard events, metrics.jsonl.
  assert json.loads((ref_dir / "config.json").read_text())["total_steps"] == STEPS
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(ref_dir / "tensorboard"))
  with open(ref_dir / "metrics.jsonl") as f:
    records = [json.loads(l) for l in f]
  assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
  assert all({"lr", "grad_norm"} <= set(r) for r in records if "loss" in r)
  evals = [r for r in records if "eval/heldout_loss/loss" in r]
  assert [r["step"] for r in evals] == list(range(10, STEPS + 1, 10))
  assert "tokens_per_sec" in records[-2] or any("tokens_per_sec" in r for r in records)
  assert "sft" in proc.stderr and "optimizer state" in proc.stderr     # the accounting table

  workdir = tmp_path / "killed"
  seed = random.randrange(1 << 30)
  kill_after = random.Random(seed).randint(7, STEPS - 15)      # after the step-5 checkpoint
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  try:
    deadline = time.time() + 240
    while _last_logged_step(workdir) < kill_after or not _complete_steps(workdir):
      assert proc.poll() is None, f"run ended before the kill (seed {seed}): {proc.stderr.read()[-2000:]}"
      assert time.time() < deadline, "run too slow"
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = _last_logged_step(workdir)
  saved = checkpointing.Checkpointer(str(workdir / "checkpoints"), read_only=True).all_steps()
  assert saved and max(saved) < STEPS, (saved, killed_at, seed)

  resumed = _run(workdir, env)
  assert "resume order -> workdir" in resumed.stderr
  final = _final_state(workdir, STEPS)
  assert final.keys() == reference.keys()
  for path, a in reference.items():
    np.testing.assert_array_equal(final[path], a, err_msg=f"{path} (killed at step {killed_at}, seed {seed})")
  # metrics.jsonl holds each training step once, up to the end.
  with open(workdir / "metrics.jsonl") as f:
    steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
  assert steps == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, env):
  workdir = tmp_path / "term"
  proc = subprocess.Popen(_cmd(workdir, ["--config.total_steps=100000"]), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while _last_logged_step(workdir) < 8:
      assert proc.poll() is None, proc.stderr.read()[-2000:]
      assert time.time() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-2000:]
  assert "stopped by signal" in err
  stopped = _last_logged_step(workdir)
  assert checkpointing.Checkpointer(str(workdir / "checkpoints"), read_only=True).latest_step() == stopped


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_config):
  config = tiny_config("steps=10,layers_n=1,seq_len=16,lr=1e30")
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  config.checkpoint.every_steps = 1
  config.log_every_steps = 1
  with pytest.raises(TrainingDivergedError, match=r"not finite.*last good checkpoint \(step (\d+)\)") as e:
    train.train_and_evaluate(config, str(tmp_path))
  good = int(e.value.args[0].split("(step ")[1].split(")")[0])
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  assert ckpt.latest_step() == good
  state = ckpt.manager.restore(good, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state["params"]))
