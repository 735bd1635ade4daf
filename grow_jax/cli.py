"""absl flags for the command lines that are also called as functions, `main(argv) -> exit code` (growth plans,
heat-maps, accounting): each call parses into its own `FlagValues`, so a test can call `main` twice.

    def main(argv=None) -> int:
      fv = flags.FlagValues()
      flags.DEFINE_string("out", None, "where to write", flag_values=fv)
      args = cli.parse("python -m grow_jax.x", fv, argv)
      if isinstance(args, int):
        return args                        # --help printed (0), or a bad flag reported (2)
      ... fv.out, args (the positional arguments) ...

The CLIs run by `app.run` (main.py, evaluate.py, convert.py, study) define their flags on absl's global FLAGS;
both print `<cli>: error: ...` for a bad flag.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags


def parse(prog: str, fv: flags.FlagValues, argv: Sequence[str] | None = None, *,
          positional: bool = True) -> list[str] | int:
  """Parses `argv` (without the program name; None: `sys.argv[1:]`) into `fv`; returns the positional
  arguments, or an exit code: 0 after printing the flags' help for --help / -h, 2 after one line naming a bad or
  missing flag (or, with positional=False, any positional argument) on stderr."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--help" in argv or "-h" in argv or "--helpfull" in argv:
    print(f"usage: {prog} [flags]\n\n{fv.get_help()}")
    return 0
  try:
    rest = fv([prog, *argv])[1:]
    if rest and not positional:
      raise flags.Error(f"unexpected arguments {rest}")
  except flags.Error as e:
    print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
    return 2
  return rest
