r"""Evaluation speed, side by side in one run: the quickstart's evaluations of the grown Gemma 3 270M, scored
as before the performance work and as now, on the same examples; the scores must be identical.

  python experiments/bench_eval.py --limit=40 --out=experiments/results/bench_eval.md

"Before" switches off, in this process, the two changes to generation (the only evaluation code they touch):
the attention weights are read in the model's layout inside the decode loop (XLA copies them on every step,
generation.DECODE_PERMUTATIONS = {}), and decoding runs to max_new_tokens (no text stops; the answer is cut
at the first newline afterwards, as before), and the stdlib corpus is read twice — perplexity in a pass of its
own, then KL(base ‖ model) — where now one pass gives both (the perplexities of the two ways must agree to
1e-5 relative). Log-likelihood scoring is unchanged code.
Each setting runs the quickstart's evaluation twice — the "before training" pass (compiles, the KL base
reference) and the "after" pass (compiled programs reused) — like the quickstart does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from grow_jax import formats, tables  # noqa: E402
from grow_jax.evaluation import evaluator, generative, registry  # noqa: E402
from grow_jax.evaluation import tasks as eval_tasks  # noqa: E402
from grow_jax.growth import operators as growth  # noqa: E402
from grow_jax.model import generation  # noqa: E402
from grow_jax.model.tokenizer import load_tokenizer  # noqa: E402

TASKS = ("gettext_en_fr:test", "capitals_gen:test", "capitals:test", "stdlib_text:test")


def evaluate(config, params, base, tokenizer, limit: int, separate_perplexity: bool) -> tuple[dict, float]:
  ctx = registry.EvalContext(config, tokenizer=tokenizer, limit=limit, batch_size=8, max_len=256, max_new_tokens=40,
                             base_model=lambda: base, base_id="gemma3-270m")
  t = time.time()
  results = {name: fn(params) for name, fn in registry.build_all(TASKS, ctx).items()}
  if separate_perplexity:                                  # the pass the fused one replaced
    texts = eval_tasks.eval_tasks("stdlib_text", split="test", limit=limit, with_kl=False)
    separate = evaluator.evaluate_all(config, params, tokenizer, texts, batch_size=8, max_len=256)["stdlib_text"]
    fused = results["stdlib_text"]["perplexity"]
    if abs(separate["perplexity"] - fused) > 1e-5 * fused:
      raise SystemExit(f"perplexity: separate pass {separate['perplexity']} vs fused {fused}")
  return results, time.time() - t


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--limit", type=int, default=40)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  base = formats.load_checkpoint("gemma3-270m")
  config, params = growth.grow_mlp(*base, factor=2)
  params = jax.device_put(params)
  tokenizer = load_tokenizer("gemma3-270m")
  timings, scores = {}, {}
  for setting in ("before", "now"):
    saved = generation.DECODE_PERMUTATIONS, generative.text_stops
    if setting == "before":
      generation.DECODE_PERMUTATIONS = {}
      generative.text_stops = lambda *a: None
    try:
      jax.clear_caches()                                   # each setting compiles its own programs
      first, t1 = evaluate(config, params, base, tokenizer, args.limit, setting == "before")
      second, t2 = evaluate(config, params, base, tokenizer, args.limit, setting == "before")
    finally:
      generation.DECODE_PERMUTATIONS, generative.text_stops = saved
    assert first == second
    timings[setting], scores[setting] = (t1, t2), first
    print(setting, f"{t1:.1f} s + {t2:.1f} s", flush=True)
  same = scores["before"] == scores["now"]
  rows = [(s, f"{timings[s][0]:.1f}", f"{timings[s][1]:.1f}", f"{sum(timings[s]):.1f}") for s in timings]
  ratio = sum(timings["now"]) / sum(timings["before"])
  table = tables.markdown(("setting", "first evaluation s", "second evaluation s", "both s"), rows)
  metrics = tables.markdown(("evaluation", "metric", "before", "now"),
                            [(t, m, f"{v:.6g}", f"{scores['now'][t][m]:.6g}") for t, ms in scores["before"].items()
                             for m, v in ms.items()])
  text = (f"Quickstart evaluations ({', '.join(TASKS)}; {args.limit} examples each, batch 8), Gemma 3 270M grown "
          f"x2, f32, {jax.devices()[0].platform} x{jax.device_count()} (`python experiments/bench_eval.py "
          f"{' '.join(argv or sys.argv[1:])}`)\n\n{table}\n\nnow / before: {ratio:.3f}; scores identical: {same}\n\n"
          f"{metrics}\n")
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  if not same:
    raise SystemExit("scores differ between the settings")


if __name__ == "__main__":
  main()
