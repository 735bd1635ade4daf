r"""Train-step time and memory per training mode, side by side: the tiny model and Gemma 3 270M (its shapes;
random weights unless --real), SFT vs G-Freeze (and any other modes).

  python experiments/bench_step.py                                  # tiny + 270M, sft vs g_freeze
  python experiments/bench_step.py --models=tiny --modes=sft,g_freeze,g_train,lora,l2sp
  python experiments/bench_step.py --models=270m --modes=sft,g_freeze,g_train,lora --out=experiments/results/bench_step_270m.md

For each (model, mode, loss_chunk): compile time, median step time over --steps steps (after the compile),
tokens/s (batch x seq_len per step), trainable parameters, optimizer-state bytes measured on the real state
(Adam moments + regularizer copies), and XLA's temp-buffer estimate for the step (the activations, incl. the
(B, T, V) logits unless loss_chunk > 0). Numbers depend on the machine and its load: they are printed, never
asserted.

Two step variants side by side (--unembed=dense,targets): the output head at every position, and only at
target positions (train.target_capacity measured on the batches: each row's targets gathered into a static
block). The 270M trains on packed gettext_en_fr batches (--task), where ~30% of positions are targets.

Utilisation: the machine's matmul peak is measured through XLA (an f32 2048 x 2048 matmul, best of 6; or
give --peak_gflops), the model FLOPs of each step come from experiments/flops.py (matmuls only: forward,
activation-gradient and weight-gradient parts, each computed only where the mode needs it), and
  MFU        = model FLOPs / step time / peak, the unembedding counted where the step computes it (every
               position; or batch x capacity positions for the target-only step),
  useful-MFU = the same with the unembedding counted only at target positions (the work the loss needs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from grow_jax import tree_paths
from grow_jax.train import config as config_utils
from grow_jax.train import optim
from grow_jax.train import setup as setup_lib, sharding, step as step_lib
from grow_jax.data import pipeline
from grow_jax import tables  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops as flops_lib  # noqa: E402  (experiments/flops.py)

MODELS = {
    # name: (init source, growth layers, seq_len)
    "tiny": ("random:tiny", "all"),
    "270m": ("random:gemma3_270m", "all"),
}


def bench_config(model: str, mode: str, *, batch: int, seq_len: int, chunk: int, real: bool, task: str = "synthetic"):
  c = config_utils.base_config()
  source, layers = MODELS[model]
  c.init.source = "gemma3-270m" if (real and model == "270m") else source
  c.total_steps = 1000
  c.batch_size = batch
  c.data.task = task if model == "270m" else "synthetic"     # the tiny model's vocabulary fits synthetic ids only
  c.data.packing = True
  c.data.tokenizer = "gemma3-270m"
  c.data.seq_len = seq_len
  c.train.mode = mode
  c.train.loss_chunk = chunk
  c.growth.factor = 0                      # the method's default
  c.growth.layers = layers
  c.optimizer.learning_rate = 1e-4
  c.mesh.data = -1
  return c


def run_one(model: str, mode: str, *, batch: int, seq_len: int, chunk: int, steps: int, real: bool,
            peak: float, unembed: str = "dense", task: str = "synthetic") -> dict:
  config = bench_config(model, mode, batch=batch, seq_len=seq_len, chunk=chunk, real=real, task=task)
  mesh = sharding.make_mesh(config.mesh)
  mc, base = setup_lib.init_params(config, mesh)
  setup, state = setup_lib.build(config, mc, base, mesh)
  del base
  tokenizer = None
  if config.data.task != "synthetic":
    from grow_jax.model.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(config.data.tokenizer)
  it = pipeline.batch_iterator(config, "train", batch_size=batch, model_config=mc, tokenizer=tokenizer)
  host = [next(it) for _ in range(steps + 1)]
  capacity = step_lib.target_capacity_for(host) if unembed == "targets" else 0
  fn = setup_lib.jit_train_step(config, setup, mesh, capacity)
  batches = [sharding.global_batch(b, mesh, 1) for b in host]
  t = time.perf_counter()
  compiled = fn.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  times = [float("nan")]
  for b in batches[:steps + 1 if steps else 0]:
    t = time.perf_counter()
    state, metrics = compiled(state, b)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times[2:]) if len(times) > 2 else times[-1]   # times[1] includes warm-up
  flat_labels = tree_paths.flatten(setup.method.labels)
  trainable = sum(x.size for p, x in tree_paths.flatten(state["params"]).items() if flat_labels[p] == "trainable")
  total = sum(x.size for x in jax.tree.leaves(state["params"]))
  opt_bytes = optim.state_bytes(state["opt_state"])
  # Model FLOPs: this mode's trainable leaves; target positions averaged over the batches used.
  shapes = {p: tuple(x.shape) for p, x in tree_paths.flatten(state["params"]).items()}
  trainable_paths, lora = flops_lib.from_labels(mc, step_lib.trainable_map(setup.method.labels), shapes)
  targets = statistics.mean(float(jax.device_get(step_lib.target_weights(
      jax.tree.map(lambda x: x[0], b)).sum())) for b in batches)
  count = lambda positions: flops_lib.train_step_flops(mc, trainable_paths, batch=batch, seq_len=seq_len,
                                                       unembed_positions=positions, lora=lora)
  model_flops = count(capacity if capacity else None)      # what the step computes (one group: one device)
  useful_flops = count(round(targets))
  return {"model": model, "mode": mode, "loss_chunk": chunk, "compile_s": compile_s, "step_s": step_s,
          "batch": batch, "seq_len": seq_len,
          "tokens_per_s": batch * seq_len / step_s, "params": total, "trainable": trainable,
          "opt_state_bytes": opt_bytes["total"], "adam_bytes": opt_bytes["adam_moments"],
          "reg_bytes": opt_bytes["other"], "temp_bytes": temp, "unembed": unembed, "capacity": capacity,
          "flops": model_flops, "useful_flops": useful_flops, "target_fraction": targets / (batch * seq_len),
          "mfu": model_flops.total / step_s / peak, "useful_mfu": useful_flops.total / step_s / peak}


def batch_positions(r) -> int:
  return r["batch"] * (r["seq_len"] - 1)


def _num(x, fmt):
  return "-" if x != x else format(x, fmt)     # nan (compile only) -> '-'


def _pct(x):
  return "-" if x != x else f"{100 * x:.1f}"


def _mib(n):
  return "-" if n is None else f"{n / 2**20:,.1f}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="tiny,270m")
  p.add_argument("--modes", default="sft,g_freeze")
  p.add_argument("--chunks", default="0", help="loss_chunk values (0 = whole-sequence logits)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (0: compile only)")
  p.add_argument("--real", action="store_true", help="load the real Gemma 3 270M weights (same shapes)")
  p.add_argument("--out", default=None, help="also write the table (markdown) to this file")
  p.add_argument("--task", default="gettext_en_fr", help="the 270M's training data (packed); tiny: synthetic")
  p.add_argument("--unembed", default="dense,targets",
                 help="step variants, side by side: dense (the output head at every position) and/or targets "
                      "(only at target positions: train.target_capacity measured on the batches)")
  p.add_argument("--peak_gflops", type=float, default=None,
                 help="matmul peak in GFLOP/s (default: measured, f32 2048x2048 matmul, best of 6)")
  args = p.parse_args(argv)
  peak = args.peak_gflops * 1e9 if args.peak_gflops else flops_lib.matmul_peak("float32")
  print(f"matmul peak {peak / 1e9:.1f} GFLOP/s ({'given' if args.peak_gflops else 'measured: f32 2048^2, best of 6'})",
        flush=True)
  rows = []
  for model in args.models.split(","):
    for chunk in (int(c) for c in args.chunks.split(",")):
      for mode, unembed in ((m, u) for m in args.modes.split(",") for u in args.unembed.split(",")):
        r = run_one(model, mode, batch=args.batch, seq_len=args.seq_len, chunk=chunk, steps=args.steps,
                    real=args.real, peak=peak, unembed=unembed, task=args.task)
        rows.append(r)
        print(f"{model:5s} {mode:9s} chunk={chunk:<4d} compile {r['compile_s']:6.1f} s  step {r['step_s']:7.3f} s  "
              f"{r['tokens_per_s']:9.1f} tok/s  opt state {_mib(r['opt_state_bytes'])} MiB  "
              f"temp {_mib(r['temp_bytes'])} MiB  {r['flops'].per_token / 1e9:.3f} GFLOP/token  "
              f"MFU {_pct(r['mfu'])}  useful-MFU {_pct(r['useful_mfu'])}", flush=True)
  header = ("model", "mode", "unembed", "loss_chunk", "params", "trainable", "opt state MiB", "Adam MiB", "reg MiB",
            "step temp MiB", "compile s", "step s", "tokens/s", "GFLOP/token fwd", "act grad", "wgt grad",
            "MFU %", "useful-MFU %")
  table = [(r["model"], r["mode"], r["unembed"] + (f" ({r['capacity']} of {batch_positions(r)})" if r["capacity"] else ""), r["loss_chunk"], f"{r['params'] / 1e6:.2f}M", f"{r['trainable'] / 1e6:.2f}M",
            _mib(r["opt_state_bytes"]), _mib(r["adam_bytes"]), _mib(r["reg_bytes"]), _mib(r["temp_bytes"]),
            f"{r['compile_s']:.1f}", _num(r["step_s"], ".3f"), _num(r["tokens_per_s"], ".0f"),
            *(f"{getattr(r['flops'], part) / r['flops'].tokens / 1e9:.3g}" for part in ("forward", "act_grad", "weight_grad")),
            _pct(r["mfu"]), _pct(r["useful_mfu"])) for r in rows]
  text = tables.text(header, table)
  device = f"{jax.devices()[0].platform} x{jax.device_count()}"
  fractions = sorted({f"{r['target_fraction']:.0%}" for r in rows})
  note = (f"matmul peak {peak / 1e9:.1f} GFLOP/s; MFU: the unembedding where the step computes it; useful-MFU: at target "
          f"positions ({', '.join(fractions)} of tokens)")
  print(f"\nbatch {args.batch} x {args.seq_len} tokens, f32, {device}; {note}\n{text}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    with open(args.out, "w") as f:
      f.write(f"Train step, batch {args.batch} x {args.seq_len} tokens, f32, {device}; {note} "
              f"(`python experiments/bench_step.py {' '.join(argv or sys.argv[1:])}`)\n\n" + "\n".join(md) + "\n")


if __name__ == "__main__":
  main()
