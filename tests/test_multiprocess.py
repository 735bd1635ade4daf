"""Two JAX processes on localhost (2 CPU devices each, gloo collectives) train like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/tiny.py:steps=6,layers_n=1,seq_len=16,accum=2", "--config.log_every_steps=1",
        "--config.checkpoint.every_steps=3", "--config.mesh.fsdp=2"]


def _env(devices):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return env


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  train = [r["loss"] for r in records if "loss" in r]
  evals = [r["eval/heldout_loss/loss"] for r in records if "eval/heldout_loss/loss" in r]
  return train, evals


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  port = _free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen([sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={multi}",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=ROOT, env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  single = subprocess.run([sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={tmp_path / 'single'}"],
                          cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
  errs = []
  for p in procs:
    try:
      errs.append(p.communicate(timeout=300)[1])
    finally:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]

  train_multi, eval_multi = _losses(multi)
  train_single, eval_single = _losses(tmp_path / "single")
  assert len(train_multi) == 6 and eval_multi
  np.testing.assert_allclose(train_multi, train_single, rtol=1e-5)
  np.testing.assert_allclose(eval_multi, eval_single, rtol=1e-5)
  # Process 0 alone writes the logs; the checkpoint is complete.
  assert "resume order" in errs[0] and "resume order" not in errs[1]
  assert sorted(os.listdir(multi / "checkpoints")) == ["3", "6"]
