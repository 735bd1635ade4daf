"""Files grow_jax writes: one path type for local disks and object storage, and atomic writes.

Paths are `etils.epath.Path` (what orbax uses), so a workdir may be local or `gs://bucket/dir`. Writes are
atomic: a reader sees the old content or the new, never half a file. Locally the content goes to a temporary
file in the same directory that is renamed into place (rename is atomic on POSIX); on object storage an
object upload is atomic by itself. Directories (caches, exports) are built in a temporary sibling and
renamed into place, replacing an old one only after the new one is complete.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Callable

from etils import epath

PathLike = str | os.PathLike

_REMOTE_PREFIXES = ("gs://", "s3://")


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
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(tmp.read_bytes())
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
