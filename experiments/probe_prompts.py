r"""Choose the few-shot count of the generative capital probes with the BASE model, on their validation split.

  python experiments/probe_prompts.py --split=validation --shots=0,3,5 \
      --out=experiments/results/probe_prompts_validation.json

For each probe (capitals_gen, capitals_lettered) and shot count: greedy f32 generation through
grow_jax.generative.generate_texts with the task's own decoding options (as grow_jax.evaluation.tasks scores it), the
task's metrics, prompt token counts, wall time, and every prediction (to read the failures).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # this checkout's grow_jax

from grow_jax.evaluation import generative, tasks as task_eval, text_metrics as metrics_text


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--split", default="validation")
  parser.add_argument("--shots", default="0,3,5")
  parser.add_argument("--probes", default="capitals_gen,capitals_lettered")
  parser.add_argument("--checkpoint", default="gemma3-270m")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--max_len", type=int, default=512, help="the trainer evaluates with max_len=seq_len")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  from grow_jax.formats import load_checkpoint
  from grow_jax.model.tokenizer import load_tokenizer
  start = time.time()
  config, params = load_checkpoint(args.checkpoint)
  tok = load_tokenizer(args.checkpoint)
  print(f"loaded {args.checkpoint} in {time.time() - start:.1f} s")

  results = []
  for probe in args.probes.split(","):
    for shots in map(int, args.shots.split(",")):
      [task] = task_eval.eval_tasks(probe, split=args.split, task_options={"shots": shots})
      opts = dict(task.options)
      metrics = opts.pop("metrics")
      lengths = [len(tok.encode(e.prompt, add_bos=True)) for e in task.examples]
      start = time.time()
      predictions = generative.generate_texts(config, params, tok, [e.prompt for e in task.examples],
                                              batch_size=args.batch_size, max_len=args.max_len, **opts)
      seconds = time.time() - start
      references = [e.references for e in task.examples]
      scores = {m: metrics_text.TEXT_METRICS[m](predictions, references) for m in metrics}
      first_words = collections.Counter(p.split(" ")[0] if p else "<empty>" for p in predictions)
      row = {"probe": probe, "shots": shots, "split": args.split, "max_len": args.max_len, "n": len(predictions),
             **scores, "seconds": round(seconds, 1), "prompt_tokens_max": max(lengths),
             "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
             "top_first_words": first_words.most_common(5),
             "predictions": {e.id: [p, list(e.references)] for e, p in zip(task.examples, predictions)}}
      results.append(row)
      print(json.dumps({k: v for k, v in row.items() if k != "predictions"}), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
  main()
