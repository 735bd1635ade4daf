"""Helpers for tests that start several processes: a free port for their coordinator, the environment of a trainer
process with N CPU devices, waiting for all of them (none left running, whatever happens), a tagged result line
among the lines other libraries print, and the losses a run's metrics.jsonl recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "localhost") -> int:
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
  """This environment for a child trainer process on `devices` CPU devices, importing this checkout's grow_jax."""
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return env


def losses(workdir) -> tuple[list[float], list[float]]:
  """(training losses, held-out losses) in the order a run's metrics.jsonl recorded them."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return ([r["loss"] for r in records if "loss" in r],
          [r["eval/heldout_loss/loss"] for r in records if "eval/heldout_loss/loss" in r])


def finish(procs: Sequence[subprocess.Popen], timeout: float = 300) -> list[tuple[Any, Any]]:
  """Each process's (stdout, stderr) once it has exited; one that is still running after `timeout` seconds (or
  when waiting fails) is killed, and the error raised."""
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=timeout))
    finally:
      if p.poll() is None:
        p.kill()
  return outs


def tagged(stdout: str, tag: str) -> Any:
  """The JSON after `tag ` on the first stdout line that starts with it: gloo prints its own "[Gloo] ..." lines to
  stdout, before or after a child's result."""
  return json.loads(next(line for line in stdout.splitlines() if line.startswith(tag + " "))[len(tag) + 1:])
