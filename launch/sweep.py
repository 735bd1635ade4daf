"""Expands a config file's sweep() into runs and launches them one after another.

  python launch/sweep.py CONFIG_FILE --workdir=BASE [--mode=local|tpu|slurm] [--dry-run] [--keep-going]
                         [-- LAUNCHER_FLAGS...]

sweep() returns a list of dicts mapping dotted config keys to values, e.g.
[{'train.mode': 'g_freeze', 'seed': 0}, {'train.mode': 'sft', 'seed': 0}]; the special key 'config_arg' is the
get_config argument of that entry (CONFIG_FILE:config_arg). Each entry becomes one run of grow_jax.main with
--config.KEY=VALUE overrides and the workdir BASE/<config file stem>/<run name>, where the run name joins the
config_arg and last_key=value of each override: {'train.mode': 'sft', 'seed': 0} -> run name "mode=sft,seed=0".

Modes (the commands run from the repository root, one after another; the first failure stops the sweep
unless --keep-going):
  local  python -m grow_jax.main ... in this environment.
  tpu    launch/tpu_run.sh LAUNCHER_FLAGS --wait ... on the TPU VM set up by launch/tpu_setup.sh;
         LAUNCHER_FLAGS: --name=... --zone=... --project=... [--env=KEY=VALUE ...].
  slurm  sbatch LAUNCHER_FLAGS launch/slurm.sbatch ...: submits every run; LAUNCHER_FLAGS are sbatch options,
         e.g. --nodes=2 --gpus-per-node=8 --partition=gpu.
--dry-run prints the commands, one per line, and runs none of them.

The config file is imported by path, without importing jax, so a sweep expands in milliseconds anywhere.
"""

import argparse
import dataclasses
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG_ARG = "config_arg"


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str  # FILE or FILE:ARG, as grow_jax.main's --config takes it
  workdir: str
  overrides: tuple[str, ...]  # --config.KEY=VALUE


def load_sweep(config_file: Path) -> list[dict]:
  """Imports the config file by path and returns its sweep() entries, checked.

  The repository root goes on sys.path first, as for `python -m grow_jax.main` run there, so a config file may
  import its siblings or grow_jax; keeping jax out of sweep() is the config file's part.
  """
  if not config_file.is_file():
    raise SystemExit(f"sweep.py: no config file at {config_file}")
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  spec = importlib.util.spec_from_file_location(f"_sweep_{config_file.stem}", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "sweep", None)):
    raise SystemExit(f"sweep.py: {config_file} has no sweep() function")
  entries = list(module.sweep())
  if not entries:
    raise SystemExit(f"sweep.py: {config_file}: sweep() returned no entries")
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or not all(isinstance(k, str) and k for k in entry):
      raise SystemExit(f"sweep.py: {config_file}: sweep() entry {i} must be a dict with dotted-key strings, "
                       f"got {entry!r}")
  return entries


def run_name(entry: dict) -> str:
  parts = [str(entry[CONFIG_ARG])] if CONFIG_ARG in entry else []
  parts += [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in entry.items() if key != CONFIG_ARG]
  return (",".join(parts) or "default").replace("/", "_").replace(" ", "_")


def expand(config_file: Path, base_workdir: str) -> list[Run]:
  """One Run per sweep() entry, in order; the config path is relative to the repository root when inside it."""
  entries = load_sweep(config_file)
  path = config_file.resolve()
  path = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
  runs, seen = [], {}
  for i, entry in enumerate(entries):
    name = run_name(entry)
    if name in seen:
      raise SystemExit(f"sweep.py: {config_file}: sweep() entries {seen[name]} and {i} both make the run name "
                       f"{name!r}; their overrides must differ")
    seen[name] = i
    config = f"{path}:{entry[CONFIG_ARG]}" if CONFIG_ARG in entry else path
    overrides = tuple(f"--config.{key}={value}" for key, value in entry.items() if key != CONFIG_ARG)
    runs.append(Run(name, config, f"{base_workdir.rstrip('/')}/{config_file.stem}/{name}", overrides))
  return runs


def command(run: Run, mode: str, launcher_flags: list[str], sweep_name: str) -> list[str]:
  """The command line that launches one run in the given mode, run from the repository root."""
  flags = [f"--config={run.config}", f"--workdir={run.workdir}"]
  if mode == "local":
    return [sys.executable, "-m", "grow_jax.main", *flags, *run.overrides]
  if mode == "tpu":
    return ["launch/tpu_run.sh", *launcher_flags, "--wait", *flags, "--", *run.overrides]
  if mode == "slurm":
    return ["sbatch", f"--job-name={sweep_name}:{run.name}", *launcher_flags, "launch/slurm.sbatch", *flags, "--",
            *run.overrides]
  raise ValueError(mode)


def execute(commands: list[list[str]], names: list[str], keep_going: bool) -> list[str]:
  """Runs the commands one after another from the repository root; returns the names of those that failed."""
  failed = []
  for i, (cmd, name) in enumerate(zip(commands, names)):
    print(f"sweep.py: [{i + 1}/{len(commands)}] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    status = subprocess.run(cmd, cwd=REPO, check=False).returncode
    if status:
      print(f"sweep.py: {name} failed with exit status {status}", file=sys.stderr, flush=True)
      failed.append(name)
      if not keep_going and i + 1 < len(commands):
        print(f"sweep.py: stopping; {len(commands) - i - 1} runs not launched (--keep-going launches them)",
              file=sys.stderr)
        break
  return failed


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  own, launcher_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(
      prog="launch/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config_file", type=Path, help="config file with a sweep() function")
  parser.add_argument("--workdir", required=True, help="base workdir; each run gets BASE/<stem>/<run name>")
  parser.add_argument("--mode", choices=("local", "tpu", "slurm"), default="local")
  parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
  parser.add_argument("--keep-going", action="store_true", help="launch the remaining runs after a failure")
  args = parser.parse_args(own)
  if args.mode == "local" and launcher_flags:
    parser.error(f"--mode=local takes no launcher flags after --, got {shlex.join(launcher_flags)}")
  return args, launcher_flags


def main(argv: list[str]) -> int:
  args, launcher_flags = parse_args(argv)
  if args.mode == "tpu" and not args.config_file.resolve().is_relative_to(REPO):
    raise SystemExit(f"sweep.py: --mode=tpu needs a config file inside the repository (tpu_setup.sh copies the "
                     f"repository to the workers), not {args.config_file}")
  runs = expand(args.config_file, args.workdir)
  commands = [command(run, args.mode, launcher_flags, args.config_file.stem) for run in runs]
  if args.dry_run:
    print("\n".join(shlex.join(cmd) for cmd in commands))
    return 0
  failed = execute(commands, [run.name for run in runs], args.keep_going)
  if failed:
    print(f"sweep.py: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
