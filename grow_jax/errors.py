"""The errors grow_jax reports to people: one base class, so a command line catches them by type.

Every error raised for bad input (a config value, a checkpoint, data, a mesh) or for a run that cannot go on
(a diverged loss) derives from `GrowJaxError`; its message is one line naming the field or path, what was
found and what was expected. `python -m grow_jax.main` (and the other CLIs) print such an error as
`<cli>: error: <Type>: <message>` and exit non-zero; anything else is a bug and keeps its traceback.

The classes also derive from the builtin they refine (ValueError for bad input, RuntimeError for a diverged
run), so `except ValueError` keeps working for callers that expect it.
"""

from __future__ import annotations

import logging
import sys


class GrowJaxError(Exception):
  """Base of every error grow_jax reports as one line."""


class ConfigError(GrowJaxError, ValueError):
  """A configuration value that cannot be used; the message names the field."""


class CheckpointError(ConfigError):
  """A model checkpoint that cannot be read or written; the message names the path, what was found and expected."""


class CheckpointMismatchError(GrowJaxError, ValueError):
  """A training checkpoint whose tree (paths, shapes, dtypes) differs from the restore target, or that is
  unreadable."""


class ShardingError(ConfigError):
  """A mesh or sharding that cannot work; the message names the leaf / field and the sizes."""


class DataError(ConfigError):
  """Training or evaluation data that cannot produce batches; the message names the field."""


class TaskError(GrowJaxError, ValueError):
  """A task that cannot be used as asked: a task, split or option that does not exist (the message lists what
  does), or a malformed record."""


class CacheError(GrowJaxError, ValueError):
  """An offline dataset that cannot be built or read from the cache (the message says which and why)."""


class WorkdirError(GrowJaxError, RuntimeError):
  """A workdir (or an output directory) that cannot be used: held by another live run, not writable, or on object
  storage that cannot be reached (no such endpoint, credentials refused, the gcs extra not installed)."""


class StudyInterrupted(GrowJaxError, RuntimeError):
  """A study's run was stopped by a signal (SIGTERM, Ctrl-C) before its last step: nothing is recorded for it."""


class TrainingDivergedError(GrowJaxError, RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def print_error(program: str, error: GrowJaxError) -> None:
  """What every command line does with a GrowJaxError: one line `<program>: error: <Type>: <message>` on stderr
  (the traceback only in debug logging)."""
  logging.debug("error details", exc_info=error)
  print(f"{program}: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
  """An exception as one line for a message: its type and its text, whitespace collapsed, at most 300
  characters (the repr when the text is empty)."""
  text = " ".join(str(e).split()) or repr(e)
  return f"{type(e).__name__}: {text[:300]}"
