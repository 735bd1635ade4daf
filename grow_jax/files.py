"""Files grow_jax writes: one path type for local disks and object storage, and atomic writes.

Paths are `etils.epath.Path` (what orbax uses), so a workdir may be local or `gs://bucket/dir` (epath reaches
gs:// through gcsfs: the `gcs` extra). Writes are atomic: a reader sees the old content or the new, never half a
file. Locally the content goes to a temporary file in the same directory that is renamed into place (rename is
atomic on POSIX); on object storage an object upload is atomic by itself. Directories (caches, exports) are
built in a temporary sibling and renamed into place, replacing an old one only after the new one is complete.

Object storage has no directories and no appends: `mkdir` is never needed there (and gcsfs's makedirs would
create a missing *bucket*, so it is never called on gs://), and `AppendFile` rewrites the object instead.
`check_reachable` / `check_writable` probe a path before any work, with one line naming it if that fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping

from etils import epath

from grow_jax.errors import WorkdirError, one_line

PathLike = str | os.PathLike

_REMOTE_PREFIXES = ("gs://", "s3://")


def _fresh_listings() -> None:
  """gcsfs caches directory listings for the life of a process, so it would never see an object written by
  another client (tensorstore's arrays, tensorboardX's events, another process): listings are always fresh
  here (FSSPEC_GCS_USE_LISTINGS_CACHE=true in the environment restores the cache)."""
  import fsspec.config
  fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


_fresh_listings()


def is_remote(path: PathLike) -> bool:
  """True for object-storage paths (gs://, s3://)."""
  return os.fspath(path).startswith(_REMOTE_PREFIXES)


def as_path(path: PathLike) -> epath.Path:
  """An epath.Path; local paths are made absolute and '~' is expanded."""
  if is_remote(path):
    return epath.Path(os.fspath(path))
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_with(path: PathLike, write: Callable[[pathlib.Path], None]) -> None:
  """Atomically create `path` with `write(tmp)`, which writes a local file (e.g. safetensors, np.savez)."""
  target = as_path(path)
  if is_remote(target):
    with tempfile.TemporaryDirectory() as tmp_dir:
      tmp = pathlib.Path(tmp_dir) / target.name
      write(tmp)
      target.write_bytes(tmp.read_bytes())       # one object upload; no parent directory to make
    return
  local = pathlib.Path(os.fspath(target))
  local.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f".{local.name}.tmp-", dir=local.parent)
  os.close(fd)
  tmp = pathlib.Path(tmp_name)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; give the file the permissions open() would
    os.replace(tmp, local)
  finally:
    tmp.unlink(missing_ok=True)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Atomically write `data` to `path`."""
  write_with(path, lambda tmp: tmp.write_bytes(data))


def json_ready(value: Any) -> Any:
  """A copy of `value` that json.dumps takes: mappings with str keys, lists and tuples as lists, numpy scalars and
  0-d arrays as Python numbers, NaN / inf as strings (JSON has neither; kept readable)."""
  if isinstance(value, Mapping):
    return {str(k): json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  if getattr(value, "shape", None) == () and hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def write_text(path: PathLike, text: str) -> None:
  """Atomically write `text` (UTF-8) to `path`."""
  write_bytes(path, text.encode("utf-8"))


def write_dir(path: PathLike, write: Callable[[pathlib.Path], None]) -> None:
  """`write(tmp_dir)` builds a directory that then replaces `path` (local paths only): an existing directory is
  swapped out only after the new one is complete, and put back if the swap fails."""
  if is_remote(path):
    raise ValueError(f"{os.fspath(path)!r}: directories are built on local disk only")
  path = pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  old = None
  try:
    write(tmp)
    # mkdtemp makes 0700 and some writers (safetensors) 0600: give what open()/mkdir would have given.
    os.chmod(tmp, 0o777 & ~_umask())
    for child in tmp.rglob("*"):
      os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~_umask())
    if path.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.replace(path, old / "dir")
    try:
      os.replace(tmp, path)
    except OSError:
      if old is not None:
        os.replace(old / "dir", path)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)


def remove_file(path: PathLike) -> None:
  """Removes one file (local or an object), if it is there."""
  target = as_path(path)
  try:
    target.unlink()
  except FileNotFoundError:
    pass


@contextlib.contextmanager
def local_copy(path: PathLike):
  """Yields a local path with the file's bytes: the path itself locally, a temporary copy of an object."""
  target = as_path(path)
  if not is_remote(target):
    yield pathlib.Path(os.fspath(target))
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = pathlib.Path(tmp) / target.name
    local.write_bytes(target.read_bytes())
    yield local


def remove_tree(path: PathLike) -> None:
  """Removes a directory tree (locally) or every object under a prefix (object storage), ignoring errors as
  `shutil.rmtree(..., ignore_errors=True)` does: a clean-up that must not hide the error being handled."""
  target = as_path(path)
  if not is_remote(target):
    shutil.rmtree(target, ignore_errors=True)
    return
  try:
    target.rmtree()
  except Exception:  # missing, no such bucket, unreachable: nothing more to remove from here
    pass


class AppendFile:
  """A text file that grows by appends (metrics.jsonl).

  Locally a line-buffered file opened with "a": every line is on disk once written. An object cannot be appended
  to: on object storage the text is kept in memory (starting from the object's current content) and the whole
  object rewritten, atomically, by `flush()` and by a `write` at least `upload_every` seconds after the last
  upload (GCS allows about one write per second per object).
  """

  def __init__(self, path: PathLike, *, upload_every: float = 30.0):
    self.path = as_path(path)
    self.upload_every = upload_every
    self._file = None
    self._parts: list[str] = []
    self._dirty = False
    self._uploaded = time.monotonic()
    if is_remote(self.path):
      if self.path.exists():
        self._parts.append(self.path.read_text())
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, "a", buffering=1)

  def write(self, text: str) -> None:
    if self._file is not None:
      self._file.write(text)
      return
    self._parts.append(text)
    self._dirty = True
    if time.monotonic() - self._uploaded >= self.upload_every:
      self.flush()

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    elif self._dirty:
      self._parts = ["".join(self._parts)]
      write_text(self.path, self._parts[0])
      self._dirty = False
      self._uploaded = time.monotonic()

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None


# ---- probes before any work --------------------------------------------------------------------------------
def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ImportError:
    return False


def _check_gcs_libraries(path: PathLike, what: str) -> None:
  """gs:// needs gcsfs (epath's files) and google-cloud-storage (tensorboardX's event files): the gcs extra."""
  missing = [name for name, module in (("gcsfs", "gcsfs"), ("google-cloud-storage", "google.cloud.storage"))
             if not _installed(module)]
  if missing:
    raise WorkdirError(f"{what} {os.fspath(path)}: gs:// paths need {' and '.join(missing)}; install the gcs "
                       "extra: pip install -e '.[gcs]'")


def check_reachable(path: PathLike, what: str = "workdir") -> None:
  """Object storage: reads `path` once (does it exist?), so that a bucket or endpoint that cannot be reached, or
  credentials that are refused, end in one line naming the path (WorkdirError). Local paths: nothing to do."""
  if not is_remote(path):
    return
  if os.fspath(path).startswith("gs://"):
    _check_gcs_libraries(path, what)
  try:
    as_path(path).exists()
  except Exception as e:  # gcsfs, aiohttp and google-auth raise many types; any of them means "not reachable"
    raise WorkdirError(f"{what} {os.fspath(path)} cannot be reached: {one_line(e)}") from None


def check_writable(directory: PathLike, what: str = "workdir") -> None:
  """Writes and removes a probe file in `directory` (created if local), so that a directory or bucket that cannot
  be written ends in one line naming it (WorkdirError) before any work."""
  check_reachable(directory, what)
  target = as_path(directory)
  probe = target / f".write-probe-{os.getpid()}"
  try:
    if is_remote(target):
      probe.write_bytes(b"x")
    else:
      os.makedirs(target, exist_ok=True)
      with open(probe, "wb") as f:
        f.write(b"x" * 4096)
        f.flush()
        os.fsync(f.fileno())
  except Exception as e:  # OSError locally; gcsfs's HttpError (403: no permission), FileNotFoundError, ... remotely
    if is_remote(target) and isinstance(e, FileNotFoundError):     # 404 on an upload: the bucket is missing
      reason = f"no such bucket ({one_line(e)})"
    else:
      reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
    raise WorkdirError(f"{what} {os.fspath(target)} is not writable: {reason}") from None
  finally:
    try:
      probe.unlink()
    except Exception:  # nothing was written, or it is gone already
      pass
