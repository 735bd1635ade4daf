r"""Convert a checkpoint to a Hugging Face directory, optionally growing its MLPs first.

  python -m grow_jax.convert --src=gemma3-270m --dst=hf:/tmp/gemma3-270m-hf
  python -m grow_jax.convert --src=hf:/path/in --dst=hf:/path/out --grow_factor=2 --grow_layers=0,3,5

--src takes any `formats.load_checkpoint` source; --dst must be 'hf:<dir>'. The tokenizer of the source is
saved alongside (--notokenizer to skip; a source without tokenizer files converts the weights and says so). A grown model is exported as a standard Gemma 3 whose MLPs are wider
(the branches merged: the same function), so any Gemma 3 runtime can load it.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags, logging

from grow_jax import errors, formats
from grow_jax.growth import operators as growth
from grow_jax.model.config import count_params, parse_layers
from grow_jax.errors import CheckpointError, ConfigError, GrowJaxError

_SRC = flags.DEFINE_string("src", None, "Checkpoint source: 'hf:<dir>', 'gguf:<file>' or 'gemma3-270m'.")
_DST = flags.DEFINE_string("dst", None, "Destination: 'hf:<dir>'.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty destination directory.")
_TOKENIZER = flags.DEFINE_bool("tokenizer", True, "Save the source's tokenizer alongside the weights.")
_GROW_FACTOR = flags.DEFINE_integer("grow_factor", 1, "MLP growth factor k (1 = no growth; the paper uses 2).")
_GROW_LAYERS = flags.DEFINE_string("grow_layers", "all", "Layers to grow: 'all' or comma-separated indices.")
_CACHE = flags.DEFINE_string("cache_dir", None, "Cache directory (default $GROW_JAX_CACHE or ~/.cache/grow_jax).")


def convert(src: str, dst: str, *, overwrite: bool = False, tokenizer: bool = True, grow_factor: int = 1,
            grow_layers: str | None = "all", cache: str | None = None):
  """The command's work as a function: load `src`, optionally grow, save to `dst` ('hf:<dir>')."""
  kind, sep, out_dir = dst.partition(":")
  if not sep or kind != "hf" or not out_dir:
    raise CheckpointError(f"--dst={dst!r}: expected 'hf:<dir>'")
  if grow_factor < 1:
    raise ConfigError(f"--grow_factor={grow_factor}: expected an integer >= 1")
  start = time.time()
  config, params = formats.load_checkpoint(src, cache=cache)
  logging.info("loaded %s: %d layers, %.1fM params in %.1f s", src, config.num_layers,
               count_params(config) / 1e6, time.time() - start)
  if grow_factor > 1:
    layers = parse_layers(grow_layers, config.num_layers, field="--grow_layers")
    config, params = growth.grow_mlp(config, params, factor=grow_factor, layers=layers)
    logging.info("grew MLPs by %d in layers %s: %.1fM params", grow_factor, "all" if layers is None else layers,
                 count_params(config) / 1e6)
  tok = None
  if tokenizer:
    from grow_jax.model.tokenizer import load_tokenizer
    try:
      tok = load_tokenizer(src, cache=cache)
    except CheckpointError as e:
      logging.warning("tokenizer skipped (the weights are converted without it): %s", e)
      print(f"grow_jax.convert: tokenizer skipped: {e}", file=sys.stderr, flush=True)
  path = formats.save_hf(config, params, out_dir, tokenizer=tok, overwrite=overwrite)
  logging.info("wrote %s in %.1f s total", path, time.time() - start)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    path = convert(_SRC.value, _DST.value, overwrite=_OVERWRITE.value, tokenizer=_TOKENIZER.value,
                   grow_factor=_GROW_FACTOR.value, grow_layers=_GROW_LAYERS.value, cache=_CACHE.value)
  except GrowJaxError as e:
    errors.print_error("grow_jax.convert", e)
    sys.exit(1)
  print(path)


if __name__ == "__main__":
  flags.mark_flags_as_required(["src", "dst"])
  app.run(main)
