"""Stopping cleanly: a stop signal is recorded instead of killing the run; the loop saves a checkpoint after the
current step and exits cleanly (the CLI with status 0).

SIGTERM is what a TPU/GPU scheduler sends before taking the machine (preemption); SIGINT is Ctrl-C, a user who
wants the run to stop. Both stop the same way, so no step since the last checkpoint is lost. A second Ctrl-C while
the stop is pending raises KeyboardInterrupt at once, without the save, for a user who wants out now.
"""

from __future__ import annotations

import logging
import signal

import jax
import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_log = logging.getLogger(__name__)


class SignalFlag:
  """Records stop signals (SIGTERM: preemption, SIGINT: Ctrl-C) instead of dying; the loop saves and exits at the
  next step. Multi-host: the processes agree at log/checkpoint steps (an all-gather), so they stop at the same step."""

  def __init__(self, *signums: int):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    for signum in signums or STOP_SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:      # not the main thread (e.g. a notebook worker): no stop handling
        break

  def _handle(self, signum, frame) -> None:
    if signum == signal.SIGINT and self.signum is not None:
      _log.warning("Ctrl-C again: stopping now, without saving")
      raise KeyboardInterrupt
    self.signum = signum
    again = "; Ctrl-C again stops at once without saving" if signum == signal.SIGINT else ""
    _log.warning("%s: saving a checkpoint after this step and exiting%s", signal.Signals(signum).name, again)

  @property
  def name(self) -> str | None:
    """The recorded signal's name ('SIGTERM', 'SIGINT'), None if none came."""
    return None if self.signum is None else signal.Signals(self.signum).name

  def raised(self, *, sync: bool) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if not sync:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.signum is not None))
    return bool(np.any(flags))

  def restore(self) -> None:
    for signum, previous in self._previous.items():
      if previous is not None:
        signal.signal(signum, previous)
    self._previous = {}
