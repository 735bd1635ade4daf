r"""grow_jax against Hugging Face transformers (PyTorch eager, CPU) on the same Gemma 3 270M weights.

  python experiments/bench_vs_torch.py --out=experiments/results/bench_vs_torch.md
  python experiments/bench_vs_torch.py --quick            # tiny random model, small sizes: a smoke run

One process, one framework after the other (transformers first, its model freed before JAX starts):
  * the weights: grow_jax's Gemma 3 270M (`load_checkpoint('gemma3-270m')`, f32), written as a Hugging Face
    directory with `save_hf` and loaded by `AutoModelForCausalLM.from_pretrained` (f32);
  * SFT step: the same batch (--batch x --seq_len tokens of real English text: Python standard-library
    docstrings), the same loss (mean next-token cross-entropy over every position), the same AdamW (lr,
    betas, eps, weight decay 0.01 except on norm scales and the embedding, global-norm clipping at 1.0).
    transformers: `model(input_ids, labels=input_ids).loss.backward()`, `clip_grad_norm_`,
    `torch.optim.AdamW.step()`; grow_jax: the trainer's jitted step (train.setup.build +
    jit_train_step, mode sft). Median of --steps steps after one warm-up step; compile time apart. The
    first-step losses of both are printed side by side (same weights and batch: they agree to ~1e-5).
  * greedy generation at batch 1 and --gen_batch: the same prompts (--prompt_len tokens each, no padding),
    --new_tokens new tokens, no stop token; `model.generate(do_sample=False)` against
    `grow_jax.generate(temperature=0)`. tokens/s = rows x new tokens / wall time (prefill included), median
    of --gen_repeats calls after a warm-up call. The generated tokens are compared row by row: f32 rounding
    differs between the frameworks, so a near-tie can flip a token late in a row and everything after it;
    the table reports how many rows are identical and where the first difference is.
Threads: torch.set_num_threads(--threads), default the CPUs this process may run on, which is also what
XLA:CPU uses (run under `taskset -c 0-3` to give both the same 4 cores).
Timings depend on the machine and its load: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

LR, B1, B2, EPS, WEIGHT_DECAY, CLIP = 1e-5, 0.9, 0.999, 1e-8, 0.01, 1.0


# ---- data ----------------------------------------------------------------------------------------------
def english_text(min_chars: int) -> str:
  """Prose paragraphs from Python standard-library docstrings (offline, deterministic)."""
  from grow_jax.data import stdlib_text
  parts, size = [], 0
  for _, doc in stdlib_text.docstrings():
    for paragraph in stdlib_text.prose_paragraphs(doc):
      parts.append(paragraph)
      size += len(paragraph) + 1
      if size >= min_chars:
        return "\n".join(parts)
  return "\n".join(parts)


def token_rows(config, rows: int, length: int, tokenizer=None, offset: int = 0) -> np.ndarray:
  """(rows, length) int32: BOS + consecutive text tokens per row (with a tokenizer), else text bytes mod
  vocab (the tiny model of --quick)."""
  need = rows * (length - 1) + offset
  text = english_text(need * 6)
  ids = tokenizer.encode(text) if tokenizer is not None else [b % config.vocab_size for b in text.encode()]
  ids = np.asarray(ids[offset:offset + rows * (length - 1)], np.int32)
  if ids.size < rows * (length - 1):
    raise RuntimeError(f"not enough text for {rows} x {length} tokens")
  body = ids.reshape(rows, length - 1)
  return np.concatenate([np.full((rows, 1), config.bos_token_id, np.int32), body], axis=1)


# ---- transformers --------------------------------------------------------------------------------------
def torch_model(hf_dir: str, attn: str):
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation=attn)
  model.generation_config.eos_token_id = None           # no stop token: exactly --new_tokens tokens
  return model


def torch_generate(model, prompts: np.ndarray, new_tokens: int, repeats: int, pad_id: int):
  import torch
  ids = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(ids)
  run = lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=pad_id)[:, prompts.shape[1]:].numpy()
  model.eval()
  with torch.no_grad():
    out = run()                                              # warm-up
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      out = run()
      times.append(time.perf_counter() - t)
  return out, statistics.median(times)


def torch_train(model, tokens: np.ndarray, steps: int):
  import torch
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if "norm" in name or "embed_tokens" in name else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=LR, betas=(B1, B2), eps=EPS)
  ids = torch.tensor(tokens, dtype=torch.long)
  model.train()
  losses, times = [], []
  for _ in range(steps + 1):
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    times.append(time.perf_counter() - t)
    losses.append(float(loss.detach()))
  return losses, statistics.median(times[1:])


# ---- grow_jax ------------------------------------------------------------------------------------------
def jax_generate(config, params, prompts: np.ndarray, new_tokens: int, repeats: int):
  from grow_jax.model.generation import generate
  rows = [list(map(int, r)) for r in prompts]
  run = lambda: generate(config, params, rows, max_new_tokens=new_tokens, eos_id=-1,
                         prompt_bucket=prompts.shape[1]).tokens
  t = time.perf_counter()
  out = run()                                                # compile + first run
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t)
  return out, statistics.median(times), first


def jax_train(config, params, tokens: np.ndarray, steps: int):
  from grow_jax.train import config as config_utils
  from grow_jax.train import setup as setup_lib
  from grow_jax.train import sharding
  c = config_utils.base_config()
  c.batch_size = tokens.shape[0]
  c.data.seq_len = tokens.shape[1]
  c.total_steps = steps + 1
  c.train.mode = "sft"
  c.optimizer.update(dict(learning_rate=LR, warmup_steps=0, schedule="constant", weight_decay=WEIGHT_DECAY,
                          grad_clip_norm=CLIP, b1=B1, b2=B2, eps=EPS))
  c.mesh.data = -1
  mesh = sharding.make_mesh(c.mesh)
  setup, state = setup_lib.build(c, config, params, mesh)
  fn = setup_lib.jit_train_step(c, setup, mesh, target_capacity=0)     # every position is a target here
  B, T = tokens.shape
  local = {"tokens": tokens, "loss_mask": np.ones((B, T), np.float32), "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
           "segment_ids": np.ones((B, T), np.int32), "input_mask": np.ones((B, T), bool)}
  batch = sharding.global_batch(local, mesh, 1)
  t = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  losses, times = [], []
  for _ in range(steps + 1):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    loss = float(jax.device_get(metrics["loss"]))
    times.append(time.perf_counter() - t)
    losses.append(loss)
  return losses, statistics.median(times[1:]), compile_s


# ---- comparison ----------------------------------------------------------------------------------------
def compare_rows(a: np.ndarray, b: np.ndarray) -> tuple[int, list[int]]:
  """(rows identical, first differing position of each other row)."""
  same = (a == b).all(axis=1)
  first = [int(np.argmax(a[i] != b[i])) for i in range(len(a)) if not same[i]]
  return int(same.sum()), first


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny random model (2 layers), tiny sizes (a smoke run)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="timed train steps after one warm-up step")
  p.add_argument("--gen_batch", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--gen_repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="transformers attention kernel")
  p.add_argument("--skip", default="", help="comma list of parts to skip: train,generate")
  p.add_argument("--decode_baseline", action="store_true",
                 help="also time grow_jax generation without the pre-transposed decode weights (attention "
                      "weights copied on every decode step, as before generation.DECODE_PERMUTATIONS)")
  p.add_argument("--out", default=None, help="also write the markdown table to this file")
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.seq_len, args.steps, args.gen_batch = 2, 16, 2, 2
    args.prompt_len, args.new_tokens, args.gen_repeats = 8, 4, 1
  skip = set(filter(None, args.skip.split(",")))

  import torch
  import transformers
  torch.set_num_threads(args.threads)
  from grow_jax.formats import save_hf

  if args.quick:
    from grow_jax.model.config import get_preset
    from grow_jax.model.transformer import init_params
    config = get_preset("tiny", num_layers=2)
    params = jax.device_get(init_params(config, jax.random.key(0)))
    tokenizer, name = None, "tiny, 2 layers (random weights)"
  else:
    from grow_jax.formats import load_checkpoint
    from grow_jax.model.tokenizer import load_tokenizer
    config, params = load_checkpoint("gemma3-270m")
    tokenizer, name = load_tokenizer("gemma3-270m"), "Gemma 3 270M (gemma3-270m)"
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  config = config.replace(param_dtype="float32", dtype="float32")
  train_tokens = token_rows(config, args.batch, args.seq_len, tokenizer)
  prompts = token_rows(config, args.gen_batch, args.prompt_len, tokenizer, offset=args.batch * args.seq_len)
  gen_batches = sorted({1, args.gen_batch})

  results: dict = {}
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = str(save_hf(config, params, os.path.join(tmp, "hf")))
    model = torch_model(hf_dir, args.attn)
    attn = model.config._attn_implementation
    if "generate" not in skip:
      for b in gen_batches:
        results[("torch", "gen", b)] = torch_generate(model, prompts[:b], args.new_tokens, args.gen_repeats,
                                                      config.pad_token_id)
        print(f"transformers generate B={b}: {results[('torch', 'gen', b)][1]:.3f} s", flush=True)
    if "train" not in skip:
      results[("torch", "train")] = torch_train(model, train_tokens, args.steps)
      print(f"transformers train step: {results[('torch', 'train')][1]:.3f} s, losses "
            f"{results[('torch', 'train')][0]}", flush=True)
    del model
    gc.collect()

  if "generate" not in skip:
    for b in gen_batches:
      results[("jax", "gen", b)] = jax_generate(config, params, prompts[:b], args.new_tokens, args.gen_repeats)
      print(f"grow_jax generate B={b}: {results[('jax', 'gen', b)][1]:.3f} s", flush=True)
    if args.decode_baseline:
      from grow_jax.model import generation
      saved, generation.DECODE_PERMUTATIONS = generation.DECODE_PERMUTATIONS, {}
      try:
        for b in gen_batches:
          results[("jax-baseline", "gen", b)] = jax_generate(config, params, prompts[:b], args.new_tokens,
                                                             args.gen_repeats)
          print(f"grow_jax generate B={b}, weights as stored: {results[('jax-baseline', 'gen', b)][1]:.3f} s",
                flush=True)
      finally:
        generation.DECODE_PERMUTATIONS = saved
  if "train" not in skip:
    results[("jax", "train")] = jax_train(config, params, train_tokens, args.steps)
    print(f"grow_jax train step: {results[('jax', 'train')][1]:.3f} s, losses {results[('jax', 'train')][0]}",
          flush=True)

  header = ("", "transformers (PyTorch eager)", "grow_jax (XLA)", "grow_jax speed-up")
  rows = []
  if "train" not in skip:
    (tl, ts), (jl, js, jc) = results[("torch", "train")], results[("jax", "train")]
    tokens = args.batch * args.seq_len
    rows += [(f"SFT step s (median of {args.steps})", f"{ts:.3f}", f"{js:.3f}", f"{ts / js:.2f}x"),
             ("SFT tokens/s", f"{tokens / ts:,.0f}", f"{tokens / js:,.0f}", ""),
             ("loss at step 1 / step %d" % (args.steps + 1), f"{tl[0]:.5f} / {tl[-1]:.5f}",
              f"{jl[0]:.5f} / {jl[-1]:.5f}", f"Δ {abs(tl[0] - jl[0]):.1e} / {abs(tl[-1] - jl[-1]):.1e}"),
             ("compile s", "-", f"{jc:.1f}", "")]
  if "generate" not in skip:
    for b in gen_batches:
      (tt, ts), (jt, js, jfirst) = results[("torch", "gen", b)], results[("jax", "gen", b)]
      same, first = compare_rows(tt, jt)
      n = b * args.new_tokens
      rows += [(f"greedy generate B={b}: tokens/s", f"{n / ts:,.1f}", f"{n / js:,.1f}", f"{ts / js:.2f}x"),
               (f"greedy generate B={b}: identical rows", f"{same}/{b}",
                ("other rows differ from new token " + ", ".join(map(str, first))) if first else "all identical",
                f"(first call incl. compile {jfirst:.1f} s)")]
      if ("jax-baseline", "gen", b) in results:
        bt, bs, _ = results[("jax-baseline", "gen", b)]
        rows.append((f"greedy generate B={b}: tokens/s, grow_jax with attention weights copied every step", "",
                     f"{n / bs:,.1f} (tokens {'identical' if (bt == jt).all() else 'DIFFERENT'})",
                     f"{bs / js:.2f}x from the pre-transposed weights"))
  text = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                   + ["| " + " | ".join(r) + " |" for r in rows])
  note = (f"{name}, f32, CPU, {args.threads} threads (torch.set_num_threads; XLA uses the process's CPUs), "
          f"train batch {args.batch} x {args.seq_len} tokens, AdamW lr {LR} wd {WEIGHT_DECAY} clip {CLIP}; generation "
          f"{args.prompt_len}-token prompts + {args.new_tokens} new tokens; transformers {transformers.__version__} "
          f"(attn {attn}), torch {torch.__version__}, jax {jax.__version__}")
  print(f"\n{note}\n\n{text}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(f"{note} (`python experiments/bench_vs_torch.py {' '.join(argv if argv is not None else sys.argv[1:])}`)"
              f"\n\n{text}\n")
  return results


if __name__ == "__main__":
  main()
