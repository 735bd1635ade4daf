"""One live run per workdir, on file systems that lock and on those that cannot: a lock held by another process
refuses the run in one line; a file system without flock (Lustre without -o flock, NFS without lockd) is
warned about once, the guard is off, and the run goes on."""

import errno
import fcntl
import logging
import os

import pytest

from grow_jax.errors import WorkdirError
from grow_jax.train import workdir as workdir_lib
from grow_jax.train.workdir import WorkdirLock


def _flock_failing_with(code):
  real = fcntl.flock

  def flock(fd, operation):
    if operation & fcntl.LOCK_UN:
      return real(fd, operation)
    raise OSError(code, os.strerror(code))
  return flock


@pytest.mark.parametrize("code", sorted({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}), ids=errno.errorcode.get)
def test_a_lock_held_by_another_process_refuses_the_run(tmp_path, monkeypatch, code):
  monkeypatch.setattr(fcntl, "flock", _flock_failing_with(code))
  with pytest.raises(WorkdirError, match="is in use by another live run"):
    WorkdirLock(str(tmp_path)).acquire()


@pytest.mark.parametrize("code", sorted({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}),
                         ids=errno.errorcode.get)
def test_a_file_system_without_flock_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog, code):
  monkeypatch.setattr(fcntl, "flock", _flock_failing_with(code))
  monkeypatch.setattr(workdir_lib, "_WARNED_FILE_SYSTEMS", set())
  caplog.set_level(logging.WARNING, logger=workdir_lib.__name__)
  for name in ("run1", "run2"):                        # two runs on the same file system, e.g. a study's
    lock = WorkdirLock(str(tmp_path / name)).acquire()
    assert '"pid": %d' % os.getpid() in (tmp_path / name / ".lock").read_text()   # the holder is still recorded
    lock.release()
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1, warnings
  assert "does not support flock" in warnings[0] and errno.errorcode[code] in warnings[0]
  assert "one-run-per-workdir guard is off" in warnings[0] and str(tmp_path / "run1") in warnings[0]


def test_another_lock_failure_is_one_line_naming_it(tmp_path, monkeypatch):
  monkeypatch.setattr(fcntl, "flock", _flock_failing_with(errno.EIO))
  with pytest.raises(WorkdirError, match=r"cannot lock workdir .*: Input/output error \(EIO\)") as error:
    WorkdirLock(str(tmp_path)).acquire()
  assert "\n" not in str(error.value)


def test_a_real_lock_still_refuses_a_second_holder(tmp_path):
  with WorkdirLock(str(tmp_path)):
    fd = os.open(tmp_path / ".lock", os.O_RDWR)         # another open file description: flock treats it as
    try:                                                # another holder, as it would another process
      with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
      os.close(fd)
  with WorkdirLock(str(tmp_path)):                      # released: the next run takes it
    pass
