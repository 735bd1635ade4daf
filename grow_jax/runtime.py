"""Process setup shared by the command lines: JAX's persistent compilation cache.

A 270M run compiles its train step, generation for each prompt bucket, and the scoring programs: about a
minute on 2 CPU cores, paid again by every process. With the cache on disk a later process with the same
programs loads them instead (a study's runs share almost all of theirs). The cache lives in
`$GROW_JAX_COMPILATION_CACHE`, else `<grow_jax cache>/xla` (`$GROW_JAX_CACHE`, default ~/.cache/grow_jax);
`GROW_JAX_COMPILATION_CACHE=off` disables it.
"""

from __future__ import annotations

import logging
import os

_log = logging.getLogger(__name__)


def enable_compilation_cache() -> str | None:
  """Points JAX's persistent compilation cache at the grow_jax cache; returns the directory (None: off)."""
  path = os.environ.get("GROW_JAX_COMPILATION_CACHE")
  if path == "off":
    return None
  if not path:
    root = os.environ.get("GROW_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "grow_jax")
    path = os.path.join(root, "xla")
  import jax
  try:
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except OSError as e:              # an unwritable cache is no reason to stop a run
    _log.warning("no persistent compilation cache (%s): %s", path, e)
    return None
  return path
