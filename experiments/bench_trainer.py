r"""The trainer's overhead, side by side in one run: the trainer's time per step (train_and_evaluate on the
quickstart's batches, evaluation off) against the same jitted step timed alone on the same batches.

  python experiments/bench_trainer.py --modes=g_freeze,sft --steps=24 --out=experiments/results/bench_trainer.md

The step alone: `setup.jit_train_step` on batches built before the clock starts, median of `--steps` after a
warm-up. The trainer: `python -m grow_jax.main`'s loop (data pipeline with prefetch, metrics kept on device and
fetched every `log_every_steps`, clone divergence every `diagnostics_every_steps`, a checkpoint at the end),
its seconds per step from metrics.jsonl (compile and the final save excluded). Goal: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from grow_jax import tables  # noqa: E402
from grow_jax.data import pipeline  # noqa: E402
from grow_jax.model.tokenizer import load_tokenizer  # noqa: E402
from grow_jax.train import loop, setup as setup_lib, sharding, step as step_lib  # noqa: E402
from tests.config_files import load_config  # noqa: E402


def quickstart(mode: str, steps: int):
  config = load_config("quickstart", f"mode={mode},steps={steps}")
  config.eval.at_start = False
  config.eval.tasks = ()
  config.log_every_steps = 4                      # the quickstart's logging cadence
  return config


def step_alone(config, steps: int) -> tuple[float, int]:
  """Median seconds of the jitted step on pre-built batches, and the target capacity it used."""
  mesh = sharding.make_mesh(config.mesh)
  mc, base = setup_lib.init_params(config, mesh)
  train_setup, state = setup_lib.build(config, mc, base, mesh)
  del base
  tokenizer = load_tokenizer(config.init.source)
  it = pipeline.batch_iterator(config, "train", batch_size=config.batch_size, model_config=mc, tokenizer=tokenizer)
  host = [next(it) for _ in range(steps + 1)]
  capacity = step_lib.target_capacity_for(host[:4])
  fn = setup_lib.jit_train_step(config, train_setup, mesh, capacity)
  batches = [sharding.global_batch(b, mesh, 1) for b in host]
  times = []
  for b in batches:
    t = time.perf_counter()
    state, metrics = fn(state, b)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return statistics.median(times[1:]), capacity


def trainer(config) -> float:
  """Seconds per training step as the trainer logs them (steps/s between log points, after the first)."""
  with tempfile.TemporaryDirectory() as workdir:
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rates = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r]
  return 1.0 / statistics.median(rates[1:] if len(rates) > 2 else rates)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--modes", default="g_freeze,sft")
  p.add_argument("--steps", type=int, default=24)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  rows = []
  for mode in args.modes.split(","):
    config = quickstart(mode, args.steps)
    alone, capacity = step_alone(config, args.steps)
    looped = trainer(config)
    rows.append((mode, f"{alone:.3f}", f"{looped:.3f}", f"{looped / alone:.3f}", capacity))
    print(rows[-1], flush=True)
  text = tables.markdown(("mode", "step alone s", "trainer s/step", "ratio", "target capacity / row"), rows)
  header = (f"Trainer vs step alone, quickstart batches (8 x 64 packed gettext_en_fr), {args.steps} steps, f32, "
            f"{jax.devices()[0].platform} x{jax.device_count()} (`python experiments/bench_trainer.py "
            f"{' '.join(argv or sys.argv[1:])}`)")
  print(f"\n{header}\n\n{text}")
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"{header}\n\n{text}\n")


if __name__ == "__main__":
  main()
