r"""Host memory of checkpoint saves on a CPU host, side by side in one run: the peak resident memory of the same
short training run with no periodic checkpoints, with asynchronous saves (the default) and with synchronous ones,
each with glibc's default allocator settings and with MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=4194304.

  python experiments/bench_checkpoint_memory.py --out=experiments/results/bench_checkpoint_memory.md

Why: on this 2-core, 24 GiB machine a 270M EWC run (train state ~5 GiB: params, Adam's two moments, EWC's
anchor and Fisher) peaks at 21-24 GB resident, with jumps at its checkpoint saves, and was killed for memory at
a save (docs/studies.md). An asynchronous save keeps the state it writes alive while the next steps make new
state; on a CPU host both live in the same (host) memory. This script measures how much each setting costs on
a model small enough to run beside other work: the Gemma 3 270M architecture, random weights, fewer layers and
a smaller vocabulary (default 2 layers, 65,536 tokens: 53M parameters, ~1 GB of EWC train state).

Each setting is its own process (`python -m grow_jax.main`, configs/tiny.py's synthetic task at batch 8 x 32);
its peak is the kernel's maxrss of that process, read by a wrapper process of its own so settings do not
share a high-water mark. Peaks vary by ~0.2 GB between repeats of one setting (`--repeats`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from grow_jax import tables  # noqa: E402

MALLOC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "4194304"}
# (name, config overrides, allocator environment)
SETTINGS = (
    ("no periodic saves", {"checkpoint.every_steps": 0}, {}),
    ("async saves (default)", {}, {}),
    ("sync saves", {"checkpoint.async_save": False}, {}),
    ("no periodic saves, malloc env", {"checkpoint.every_steps": 0}, MALLOC),
    ("async saves, malloc env", {}, MALLOC),
    ("sync saves, malloc env", {"checkpoint.async_save": False}, MALLOC),
)

# Runs `argv` as a child and prints the child's peak resident memory (kB) and wall seconds.
_WRAPPER = ("import resource, subprocess, sys, time; t = time.time(); rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t, rc)")


def command(args, overrides: dict, workdir: str) -> list[str]:
  cmd = [sys.executable, "-m", "grow_jax.main", f"--config=configs/tiny.py:mode={args.mode},steps={args.steps}",
         "--config.init.source=random:gemma3_270m", f"--config.model.num_layers={args.layers}",
         f"--config.model.vocab_size={args.vocab}", f"--config.checkpoint.every_steps={args.every}",
         "--config.checkpoint.keep=1", "--config.eval_every_steps=0", "--config.diagnostics_every_steps=0",
         f"--workdir={workdir}"]
  return cmd + [f"--config.{k}={v}" for k, v in overrides.items()]


def measure(args, overrides: dict, env_extra: dict, workdir: str) -> tuple[float, float]:
  """(peak resident GB, wall seconds) of one training run in a process of its own."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env.update(env_extra)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", _WRAPPER, *command(args, overrides, workdir)], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True).stdout
  line = [l for l in out.splitlines() if l.startswith("PEAK ")][-1].split()
  if int(line[3]) != 0:
    raise SystemExit(f"a training run failed (exit {line[3]}): {' '.join(command(args, overrides, workdir))}")
  return int(line[1]) / 1e6, float(line[2])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--mode", default="ewc", help="the method (its train state size is what saves copy)")
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--vocab", type=int, default=65536)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--every", type=int, default=5, help="steps between periodic saves")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--out", default="", help="also write the table here (markdown)")
  args = p.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, overrides, env_extra in SETTINGS:
      peaks, walls = [], []
      for r in range(args.repeats):
        peak, wall = measure(args, overrides, env_extra, os.path.join(tmp, f"{len(rows)}_{r}"))
        peaks.append(peak)
        walls.append(wall)
        print(f"{name}: peak {peak:.2f} GB, {wall:.0f} s", flush=True)
      base = min(peaks) if not rows else base      # the first setting (no periodic saves) is the reference
      rows.append([name, " / ".join(f"{x:.2f}" for x in peaks), f"{min(peaks):.2f}", f"{min(peaks) - base:+.2f}",
                   " / ".join(f"{x:.0f}" for x in walls)])
  header = ["setting", "peak GB (each repeat)", "lowest peak GB", "vs no periodic saves", "wall s"]
  text = (f"Peak resident memory of `grow_jax.main` on the Gemma 3 270M architecture with random weights, "
          f"{args.layers} layers, vocabulary {args.vocab}, mode {args.mode}, {args.steps} steps at batch 8 x 32, "
          f"a save every {args.every} steps (keep 1); {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPU cores.\n\n" + tables.markdown(header, rows) + "\n\n"
          f"`python experiments/bench_checkpoint_memory.py {' '.join(sys.argv[1:])}`\n")
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
