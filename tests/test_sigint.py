"""Ctrl-C stops a run the way preemption (SIGTERM) does: the step in flight finishes, a checkpoint is saved at the
step reached, the process exits 0 with a line saying so, and the next run resumes from there. A second Ctrl-C
while that stop is pending aborts at once (KeyboardInterrupt), for a user who wants out now."""

import os
import signal
import subprocess
import sys
import time

import pytest

from grow_jax.train import checkpointing, preemption

pytestmark = pytest.mark.slow   # every test here: a trainer subprocess interrupted and restarted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/tiny.py:steps=100000,layers_n=1,seq_len=16", "--config.checkpoint.every_steps=5",
        "--config.log_every_steps=1", "--config.checkpoint.keep=2", "--config.eval_every_steps=0"]


def _last_logged_step(workdir):
  import json
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max((json.loads(l)["step"] for l in f if l.strip().endswith("}")), default=0)


def _latest_checkpoint(workdir):
  return checkpointing.Checkpointer(str(workdir / "checkpoints"), read_only=True).latest_step()


def test_ctrl_c_saves_at_the_step_reached_exits_0_and_the_next_run_resumes_there(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={workdir}"]
  proc = subprocess.Popen([*cmd, "--config.eval.at_start=True"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while _last_logged_step(workdir) < 8:                # training, not setting up: past the first checkpoint
      assert proc.poll() is None, proc.stderr.read()[-2000:]
      assert time.time() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-2000:]
  assert "KeyboardInterrupt" not in err and "Traceback" not in err, err[-2000:]
  assert "SIGINT: saving a checkpoint after this step and exiting" in err
  stopped = _last_logged_step(workdir)
  assert f"stopped by signal SIGINT at step {stopped}; checkpoint saved" in err
  assert _latest_checkpoint(workdir) == stopped             # the steps since the last periodic save are kept
  assert not (workdir / "summary.md").exists()    # no before/after table whose "after" is the "before"

  resumed = subprocess.run([*cmd, f"--config.total_steps={stopped + 3}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"/checkpoints/{stopped}; model ready at step {stopped}" in resumed.stderr, resumed.stderr[-2000:]
  assert _latest_checkpoint(workdir) == _last_logged_step(workdir) == stopped + 3


@pytest.fixture
def flag():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  stop = preemption.SignalFlag(signal.SIGTERM, signal.SIGINT)
  yield stop
  stop.restore()
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before   # handlers given back


def test_the_first_ctrl_c_is_recorded_and_a_second_aborts_at_once(flag, caplog):
  signal.raise_signal(signal.SIGINT)
  assert flag.raised(sync=False) and flag.name == "SIGINT"
  assert "Ctrl-C again stops at once without saving" in caplog.text
  with pytest.raises(KeyboardInterrupt):
    signal.raise_signal(signal.SIGINT)


def test_sigterm_is_recorded_and_repeated_sigterms_do_not_abort(flag):
  signal.raise_signal(signal.SIGTERM)
  signal.raise_signal(signal.SIGTERM)                 # schedulers may repeat it before their SIGKILL
  assert flag.raised(sync=False) and flag.name == "SIGTERM"
  with pytest.raises(KeyboardInterrupt):              # Ctrl-C after a pending preemption stop: out now
    signal.raise_signal(signal.SIGINT)
