"""A run's workdir: one live run at a time (the writability check before any work is files.check_writable).

`WorkdirLock` holds an exclusive `fcntl.flock` on `<workdir>/.lock` for the life of the run. The kernel
releases a flock when its process dies, however it dies, so a SIGKILLed run never leaves the workdir stuck;
a second run started on a held workdir is refused with one line naming the holder (pid, host, start time,
command, read from the lock file). Object-storage workdirs (gs://) cannot be flocked: there the launcher's
one-run-per-workdir guard is the protection. Neither can some shared file systems (Lustre mounted without
`-o flock`, NFS without a lock daemon): flock fails there with ENOLCK, EOPNOTSUPP, ENOSYS or EINVAL rather than
EWOULDBLOCK, and the run goes on with one warning per file system that the guard is off.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time

from grow_jax import files
from grow_jax.errors import WorkdirError

LOCK_NAME = ".lock"

# flock's answers: another process holds the lock; this file system cannot lock at all.
_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_WARNED_FILE_SYSTEMS: set[int] = set()     # st_dev of file systems already warned about (one warning each)

_log = logging.getLogger(__name__)


class WorkdirLock:
  """Exclusive lock of a workdir (a no-op for object-storage workdirs). Use as a context manager."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._fd: int | None = None
    self._locked = False

  def acquire(self) -> "WorkdirLock":
    if files.is_remote(self.workdir):
      return self
    path = os.path.join(self.workdir, LOCK_NAME)
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"workdir {self.workdir} is not writable: {e.strerror or e}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      self._locked = True
    except OSError as e:
      if e.errno in _UNSUPPORTED:
        _warn_unsupported(self.workdir, fd, e)
      else:
        holder = _read_holder(fd) if e.errno in _HELD else None
        os.close(fd)
        if holder is not None:
          raise WorkdirError(f"workdir {self.workdir} is in use by another live run ({holder}); wait for it to end, "
                             "stop it, or use another --workdir") from None
        raise WorkdirError(f"cannot lock workdir {self.workdir} ({path}): {e.strerror} "
                           f"({errno.errorcode.get(e.errno, e.errno)})") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      if self._locked:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd, self._locked = None, False

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}: "
            f"{info.get('command', '?')}")
  except (OSError, ValueError):
    return "holder unknown"



def _warn_unsupported(workdir: str, fd: int, error: OSError) -> None:
  device = os.fstat(fd).st_dev
  if device in _WARNED_FILE_SYSTEMS:
    return
  _WARNED_FILE_SYSTEMS.add(device)
  _log.warning("the file system of workdir %s does not support flock (%s: %s): the one-run-per-workdir guard is "
               "off there; make sure no other run uses the same workdir", workdir,
               errno.errorcode.get(error.errno, error.errno), error.strerror)
