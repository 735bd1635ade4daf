"""The on-disk cache of the offline datasets: where it lives, hash splits, atomic JSONL datasets with a manifest.

Layout: `<data_dir>/<name>-<version>[-<params digest>]/{<split>.jsonl, manifest.json}`. A dataset directory is
built in a temporary sibling and renamed into place in one step, so a reader sees either nothing or a complete
dataset (concurrent builders on a shared filesystem: the first rename wins, the others discard their copy).
The same format holds staged datasets (`grow_jax.data.stage`), which may also live on object storage (gs://):
there every file is one object upload and the manifest is written last, so a dataset is complete once its
manifest exists; `read_manifest` / `read_split` read either kind of path.

`data_dir` resolution: explicit argument > `$GROW_JAX_DATA_DIR` > `$GROW_JAX_CACHE/data` (the model cache's
root, so one variable moves every cache) > `~/.cache/grow_jax/data`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import platform
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from grow_jax.errors import CacheError

ENV_DATA_DIR = "GROW_JAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/grow_jax/data"
MANIFEST = "manifest.json"
# train / validation / test shares (percent) of `hash_split`.
DEFAULT_SPLIT_PERCENT = (("train", 90), ("validation", 5), ("test", 5))


def data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache root: `path`, else `$GROW_JAX_DATA_DIR`, else `$GROW_JAX_CACHE/data`, else
  `~/.cache/grow_jax/data` (not created here)."""
  if path is not None:
    chosen = path
  elif os.environ.get(ENV_DATA_DIR):
    chosen = os.environ[ENV_DATA_DIR]
  elif os.environ.get("GROW_JAX_CACHE"):
    chosen = os.path.join(os.environ["GROW_JAX_CACHE"], "data")
  else:
    chosen = DEFAULT_DATA_DIR
  return pathlib.Path(chosen).expanduser()


def hash_split(text: str, shares: Sequence[tuple[str, int]] = DEFAULT_SPLIT_PERCENT) -> str:
  """The split of `text`, fixed by sha1(text) mod 100 (stable across machines, runs and dataset growth)."""
  if sum(p for _, p in shares) != 100:
    raise ValueError(f"split shares must sum to 100 percent, got {list(shares)}")
  bucket = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") % 100
  for name, percent in shares:
    if bucket < percent:
      return name
    bucket -= percent
  raise AssertionError("unreachable")


def params_digest(params: Mapping[str, Any]) -> str:
  """A short stable digest of JSON-able build parameters (part of the dataset directory name)."""
  blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode("utf-8")
  return hashlib.sha1(blob).hexdigest()[:10]


def dataset_path(root: pathlib.Path, name: str, version: str, params: Mapping[str, Any] | None = None
                 ) -> pathlib.Path:
  suffix = f"-{params_digest(params)}" if params else ""
  return root / f"{name}-{version}{suffix}"


def write_dataset(path: pathlib.Path | str, splits: Mapping[str, Iterable[Mapping[str, Any]]],
                  manifest: Mapping[str, Any], *, replace: bool = False) -> pathlib.Path | str:
  """Writes `splits` as `<split>.jsonl` plus `manifest.json` (counts added) atomically at `path` (a local
  directory, or a gs:// prefix: objects, the manifest last).

  If `path` already exists (another process finished first), keeps it and discards this copy; with `replace`,
  the new copy replaces it once complete (on object storage: the old manifest goes first, so no reader takes
  the half-written copy for a dataset).
  """
  from grow_jax import files
  if files.is_remote(path):
    return _write_remote(path, splits, manifest)
  path = pathlib.Path(os.path.expanduser(os.fspath(path)))
  if replace:
    files.write_dir(path, lambda tmp: _write_into(tmp, splits, manifest))
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    tmp.chmod(0o755)   # mkdtemp makes it private; the finished dataset is an ordinary shared directory
    _write_into(tmp, splits, manifest)
    try:
      os.rename(tmp, path)
    except OSError:
      if not (path / MANIFEST).exists():
        raise
      logging.info("dataset %s was built concurrently by another process; keeping that one", path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def _write_into(directory: pathlib.Path, splits: Mapping[str, Iterable[Mapping[str, Any]]],
                manifest: Mapping[str, Any]) -> None:
  counts = {}
  for split, records in splits.items():
    with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
      counts[split] = _write_records(f, records)
  (directory / MANIFEST).write_text(_manifest_text(manifest, counts, list(splits)), encoding="utf-8")


def _write_records(f, records: Iterable[Mapping[str, Any]]) -> int:
  n = 0
  for record in records:
    f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    n += 1
  return n


def _manifest_text(manifest: Mapping[str, Any], counts: Mapping[str, int], splits: list[str]) -> str:
  full = {**manifest, "counts": dict(counts), "splits": splits,
          "built_with": {"python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}}
  return json.dumps(full, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _write_remote(path: str, splits: Mapping[str, Iterable[Mapping[str, Any]]], manifest: Mapping[str, Any]) -> str:
  """Object storage: each split is spooled to a local file and uploaded as one object; the manifest, written
  last, makes the dataset complete (an old one is removed first)."""
  from grow_jax import files
  root = files.as_path(path)
  files.remove_file(root / MANIFEST)
  counts = {}
  for split, records in splits.items():
    with tempfile.NamedTemporaryFile("w+", encoding="utf-8", suffix=".jsonl") as f:
      counts[split] = _write_records(f, records)
      f.flush()
      with open(f.name, "rb") as src, (root / f"{split}.jsonl").open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
  files.write_text(root / MANIFEST, _manifest_text(manifest, counts, list(splits)))
  return path


def _as_path(path):
  """A local pathlib.Path or, for gs://, an epath.Path (read_manifest / read_split take either)."""
  from grow_jax import files
  return files.as_path(path) if files.is_remote(path) else pathlib.Path(os.path.expanduser(os.fspath(path)))


def read_manifest(path: pathlib.Path | str) -> dict[str, Any]:
  """The manifest of a dataset directory; raises `CacheError` if the directory is not a complete dataset."""
  path = _as_path(path)
  try:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise CacheError(f"no dataset at {path} (missing {MANIFEST})") from None
  except json.JSONDecodeError as e:
    raise CacheError(f"corrupt manifest {path / MANIFEST}: {e}") from None


def read_split(path: pathlib.Path | str, split: str) -> list[dict[str, Any]]:
  """The records of `<path>/<split>.jsonl`; a bad line raises `CacheError` naming file and line."""
  path = _as_path(path)
  file = path / f"{split}.jsonl"
  if not file.exists():
    raise CacheError(f"dataset {path} has no split file {file.name}")
  records = []
  with file.open("rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        records.append(json.loads(raw.decode("utf-8")))
      except UnicodeDecodeError as e:
        raise CacheError(f"{file}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start}); expected a UTF-8 "
                         "JSON record per line") from None
      except json.JSONDecodeError as e:
        raise CacheError(f"{file}:{lineno}: not a JSON record ({e})") from None
  return records


def cached_dataset(name: str, version: str, build: Callable[[], tuple[Mapping[str, Iterable[Mapping]], Mapping]],
                   *, root: str | os.PathLike | None = None, params: Mapping[str, Any] | None = None,
                   force: bool = False) -> pathlib.Path:
  """Path of the cached dataset `name`, building it with `build() -> (splits, manifest)` on first use.

  `params` (the build inputs) go into the directory name and the manifest, so different inputs never share a
  cache entry. `force=True` rebuilds (the old copy is replaced).
  """
  path = dataset_path(data_dir(root), name, version, params)
  if force and path.exists():
    shutil.rmtree(path)
  if (path / MANIFEST).exists():
    return path
  start = time.time()
  splits, manifest = build()
  write_dataset(path, splits, {"name": name, "version": version, "params": dict(params or {}), **manifest})
  logging.info("built dataset %s in %.1fs: %s", path, time.time() - start, read_manifest(path)["counts"])
  return path
