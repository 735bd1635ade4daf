"""Runs that meet a damaged workdir, a second run, a kill mid-save, a full disk: each says what happened in one
line, keeps what can be kept, and resumes from the newest checkpoint that is whole."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import orbax.checkpoint as ocp
import pytest

from config_files import ROOT
from grow_jax.errors import WorkdirError
from grow_jax.train import checkpointing, loop
from grow_jax.train.workdir import WorkdirLock

ARG = "layers_n=1,seq_len=16,batch=8"


def _config(tiny_config, steps, every=2):
  config = tiny_config(f"steps={steps},{ARG}")
  config.checkpoint.every_steps = every
  config.checkpoint.keep = 10
  config.eval_every_steps = 0
  config.eval.tasks = ()
  return config


def _steps(workdir):
  return checkpointing.Checkpointer(str(workdir / "checkpoints"), read_only=True).all_steps()


def _damage_latest(workdir, how):
  latest = max(_steps(workdir))
  step_dir = workdir / "checkpoints" / str(latest)
  if how == "truncated array file":
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest = files[-1]
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
  else:                                                  # "missing meta"
    for p in sorted((step_dir / "meta").rglob("*"), reverse=True):
      p.unlink() if p.is_file() else p.rmdir()
    (step_dir / "meta").rmdir()
  return latest


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated array file", "missing meta"])
def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
    tmp_path, tiny_config, how, capfd):
  workdir = tmp_path / "wd"
  loop.train_and_evaluate(_config(tiny_config, 6), str(workdir))
  assert _steps(workdir) == [2, 4, 6]
  bad = _damage_latest(workdir, how)
  capfd.readouterr()
  out = loop.train_and_evaluate(_config(tiny_config, 8), str(workdir))
  err = capfd.readouterr().err
  assert out["step"] == 8
  assert "resume order -> workdir checkpoint" in err and "/checkpoints/4" in err, err[-3000:]
  moved = [p for p in os.listdir(workdir / "checkpoints") if p.startswith(f"{bad}.unreadable-")]
  assert len(moved) == 1 and "moved aside" in err                   # kept for inspection, never deleted
  assert _steps(workdir) == [2, 4, 6, 8]                             # step 6 trained again and saved


@pytest.mark.slow
def test_a_workdir_held_by_a_live_run_is_refused_and_a_killed_run_leaves_no_stuck_lock(tmp_path, tiny_config):
  workdir = tmp_path / "wd"
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      sys.argv = ["grow_jax.main", "--workdir={workdir}"]
      from grow_jax.train.workdir import WorkdirLock
      WorkdirLock("{workdir}").acquire()
      print("held", flush=True)
      time.sleep(600)
  """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirError, match=rf"workdir {workdir} is in use by another live run \(pid {holder.pid} "):
      loop.train_and_evaluate(_config(tiny_config, 2), str(workdir))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    out = loop.train_and_evaluate(_config(tiny_config, 2), str(workdir))   # the kernel released the lock
    assert out["step"] == 2
  finally:
    if holder.poll() is None:
      holder.kill()
  with WorkdirLock(str(workdir)):                    # released at the end of the run
    pass


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_step_as_latest(tmp_path, tiny_config):
  workdir = tmp_path / "wd"
  loop.train_and_evaluate(_config(tiny_config, 4), str(workdir))
  # What a run SIGKILLed during an asynchronous save leaves: orbax's temporary directory for step 6.
  partial = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "partial_array").write_bytes(b"\x00" * 100)
  assert _steps(workdir) == [2, 4]
  out = loop.train_and_evaluate(_config(tiny_config, 6), str(workdir))
  assert out["step"] == 6 and _steps(workdir) == [2, 4, 6]


@pytest.mark.slow
def test_a_real_sigkill_during_a_save_resumes_from_the_last_complete_step(tmp_path):
  """A run checkpointing every step is SIGKILLed repeatedly at once after a save starts; every restart
  resumes from a complete checkpoint and the run finishes."""
  workdir = tmp_path / "wd"
  cmd = [sys.executable, "-m", "grow_jax.main", f"--config=configs/tiny.py:steps=12,{ARG}",
         "--config.checkpoint.every_steps=1", "--config.eval_every_steps=0", "--config.eval.tasks=()",
         f"--workdir={workdir}"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  for _ in range(2):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if any(".orbax-checkpoint-tmp" in p for p in os.listdir(workdir / "checkpoints")) if (
          workdir / "checkpoints").is_dir() else False:
        proc.send_signal(signal.SIGKILL)                 # mid-save
        break
      time.sleep(0.005)
    proc.wait(timeout=60)
  final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert final.returncode == 0, final.stderr[-3000:]
  assert max(_steps(workdir)) == 12


def test_an_unwritable_workdir_is_one_line(tmp_path, tiny_config):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(WorkdirError, match="a_file/wd is not writable") as e:
    loop.train_and_evaluate(_config(tiny_config, 2), str(blocker / "wd"))
  assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config,
                                                                                monkeypatch):
  save = ocp.CheckpointManager.save

  def full_disk_at_step_4(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk_at_step_4)
  workdir = tmp_path / "wd"
  with pytest.raises(WorkdirError, match=r"checkpoint step 4 could not be written .*No space left on device.*"
                                         r"last good checkpoint \(step 2\)") as e:
    loop.train_and_evaluate(_config(tiny_config, 6), str(workdir))
  assert "\n" not in str(e.value)
  assert _steps(workdir) == [2]
