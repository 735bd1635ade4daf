"""Preemption: a signal (SIGTERM, what a TPU/GPU scheduler sends before taking the machine) is recorded
instead of killing the run; the loop saves a checkpoint after the current step and exits cleanly."""

from __future__ import annotations

import logging
import signal

import jax
import numpy as np

_log = logging.getLogger(__name__)


class SignalFlag:
  """Records a signal (SIGTERM: preemption) instead of dying; the loop saves and exits at the next step.
  Multi-host: the processes agree at log/checkpoint steps (an all-gather), so they stop at the same step."""

  def __init__(self, signum: int):
    self.signum: int | None = None
    self._previous = None
    try:
      self._previous = signal.signal(signum, self._handle)
      self._installed = signum
    except ValueError:        # not the main thread (e.g. a notebook worker): no preemption handling
      self._installed = None

  def _handle(self, signum, frame) -> None:
    self.signum = signum
    _log.warning("signal %d: saving a checkpoint after this step and exiting", signum)

  def raised(self, *, sync: bool) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if not sync:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.signum is not None))
    return bool(np.any(flags))

  def restore(self) -> None:
    if self._installed is not None and self._previous is not None:
      signal.signal(self._installed, self._previous)
