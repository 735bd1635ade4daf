"""Two JAX processes on localhost (2 CPU devices each, gloo collectives) train like one process with 4 devices, and
agree on a damaged checkpoint: process 0 alone moves it aside, both go on from the same older step."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import processes

pytestmark = pytest.mark.slow   # every test here: two trainer processes with gloo, against one

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/tiny.py:steps=6,layers_n=1,seq_len=16,accum=2", "--config.log_every_steps=1",
        "--config.checkpoint.every_steps=3", "--config.mesh.fsdp=2"]


def test_two_processes_match_one(tmp_path):
  port = processes.free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen([sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={multi}",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=ROOT, env=processes.cpu_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
           for i in range(2)]
  single = subprocess.run([sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={tmp_path / 'single'}"],
                          cwd=ROOT, env=processes.cpu_env(4), capture_output=True, text=True, timeout=300)
  errs = [err for _, err in processes.finish(procs)]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]

  train_multi, eval_multi = processes.losses(multi)
  train_single, eval_single = processes.losses(tmp_path / "single")
  assert len(train_multi) == 6 and eval_multi
  np.testing.assert_allclose(train_multi, train_single, rtol=1e-5)
  np.testing.assert_allclose(eval_multi, eval_single, rtol=1e-5)
  # Process 0 alone writes the logs; the checkpoint is complete.
  assert "resume order" in errs[0] and "resume order" not in errs[1]
  assert sorted(os.listdir(multi / "checkpoints")) == ["3", "6"]


def _train_two_processes(workdir, *extra):
  """Both processes' (returncode, stderr) for one two-process run of ARGS (+ extra flags)."""
  port = processes.free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "grow_jax.main", *ARGS, *extra, f"--workdir={workdir}",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=ROOT, env=processes.cpu_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
           for i in range(2)]
  errs = [err for _, err in processes.finish(procs)]
  return [(p.returncode, err) for p, err in zip(procs, errs)]


def _damage(step_dir, how):
  if how == "truncated array file":          # read by whichever processes need those shards
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    files[-1].write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 3])
  else:                                      # "missing meta": found unreadable before anything is restored
    shutil.rmtree(step_dir / "meta")


@pytest.mark.parametrize("how", ["truncated array file", "missing meta"])
def test_two_processes_set_a_damaged_checkpoint_aside_once_and_go_on_from_the_same_step(tmp_path, how):
  workdir = tmp_path / "wd"
  for returncode, err in _train_two_processes(workdir):
    assert returncode == 0, err[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  _damage(workdir / "checkpoints" / "6", how)

  runs = _train_two_processes(workdir, "--config.total_steps=9")
  for returncode, err in runs:
    assert returncode == 0, err[-3000:]
  assert "resume order -> workdir checkpoint" in runs[0][1] and "/checkpoints/3;" in runs[0][1], runs[0][1][-3000:]
  names = sorted(os.listdir(workdir / "checkpoints"))
  moved = [n for n in names if n.startswith("6.unreadable-")]
  assert len(moved) == 1, names                                # moved once, by process 0, kept
  assert [n for n in names if n.isdigit()] == ["3", "6", "9"]  # both processes trained steps 4-9 again and saved
  train, _ = processes.losses(workdir)
  assert len(train) == 9                                       # steps 1-3 kept, 4-9 trained again
