"""Helpers shared by the fake cluster commands in tests/fake_cluster (stdlib only)."""

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fail(prog, message, status=2):
  print(f"fake {prog}: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def require_env(prog, var):
  value = os.environ.get(var)
  if not value:
    fail(prog, f"${var} is not set (the test sets it)")
  return value


def expand_hostlist(hostlist):
  """A SLURM hostlist -> host names: "gpu-[07-08],cpu1" -> ["gpu-07", "gpu-08", "cpu1"] (one bracket per name)."""
  names = []
  for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)?", hostlist):
    match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
    if not match:
      names.append(item)
      continue
    prefix, ranges, suffix = match.groups()
    for part in ranges.split(","):
      lo, _, hi = part.partition("-")
      for i in range(int(lo), int(hi or lo) + 1):
        names.append(f"{prefix}{i:0{len(lo)}d}{suffix}")
  return names


def split_flags(prog, args, values=(), booleans=(), short_values=()):
  """Strict option parsing: --name=value for `values`, --name for `booleans`, "-X VALUE" for `short_values`
  (mapped to a long name: {"-N": "nodes"}); anything else starting with - is an error. Returns (flags, rest)
  where rest starts at the first positional argument."""
  flags, i = {}, 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("-"):
      break
    if arg in short_values:
      flags[short_values[arg]] = args[i + 1]
      i += 2
      continue
    name, eq, value = arg[2:].partition("=")
    if arg.startswith("--") and eq and name in values:
      flags[name] = value
    elif arg.startswith("--") and name in booleans:
      flags[name] = value if eq else True
    else:
      fail(prog, f"unexpected option {arg!r} in {args!r}")
    i += 1
  return flags, args[i:]


def child_env(**extra):
  """os.environ for a child process, with the fake commands first on PATH again (a pyenv shim running this
  fake's python3 puts its own bin directory first) and `extra` added."""
  bin_dir = str(HERE / "bin")
  rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
  return {**os.environ, "PATH": os.pathsep.join([bin_dir, *rest]), **extra}
