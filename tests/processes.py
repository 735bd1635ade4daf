"""Helpers for tests that start several processes: a free port for their coordinator, waiting for all of them
(none left running, whatever happens), and a tagged result line among the lines other libraries print."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any, Sequence


def free_port(host: str = "localhost") -> int:
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


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
