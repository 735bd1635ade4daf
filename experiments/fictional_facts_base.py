r"""The base model on the offline `fictional_facts` task (issue 27: a new task no method solves in 100 steps), and
the task's sizes in the model's tokens.

  python experiments/fictional_facts_base.py --limit=200 --unseen_limit=100 \
      --out=experiments/results/fictional_facts_base.json

(`--checkpoint=random:tiny --tokenizer=bytes --limit=5 --unseen_limit=5` runs the same path in a minute.)

Reports, without loading the model: Gemma 3 tokens per training statement / training question / held-out
question / name (the numbers behind the steps-per-epoch arithmetic in grow_jax/data/fictional_facts.py), and the
exact match of the best constant guess per attribute (the most frequent trained value: what a model that learned
the answer format and the value distribution but no fact would score). Then, with the model, exactly as the trainer
and `python -m grow_jax.evaluate` score the two evaluations (grow_jax.evaluation's Evaluator on the tasks'
EvalTasks, max_len 64 as in the 270M study): `fictional_facts` (greedy, first line, exact match) and
`fictional_facts_mc` (4-way log-likelihood, chance 0.25), overall and per attribute, on the first `--limit`
validation questions (an equal share of each attribute: records are ordered person by person) and the first
`--unseen_limit` test_unseen questions; and a few greedy answers as samples.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # this checkout's grow_jax

import numpy as np

from grow_jax.data import fictional_facts as ff
from grow_jax.evaluation import evaluator, generative
from grow_jax.evaluation import tasks as task_eval


def token_stats(tok, num_entities: int) -> dict:
  """Gemma 3 tokens of each kind of text ([BOS] + prompt + " " + answer + [EOS], as the trainer packs them)."""
  records = ff.build_records(num_entities)

  def length(r):
    return len(tok.encode(r["prompt"], add_bos=True)) + len(tok.encode(" " + r["answer"])) + 1

  kinds = collections.defaultdict(list)
  for r in records["train"]:
    kinds["train statement" if r["kind"] == "s" else "train question"].append(length(r))
  kinds["held-out question"] = [length(r) for s in ("validation", "test", "test_unseen") for r in records[s]]
  out = {k: {"n": len(v), "mean": round(float(np.mean(v)), 2), "max": int(max(v)), "total": int(sum(v))}
         for k, v in kinds.items()}
  names = [p["name"] for p in ff.generate_people(num_entities)]
  pieces = [len(tok.encode(" " + n)) for n in names]
  out["name (with its leading space)"] = {"n": len(names), "mean": round(float(np.mean(pieces)), 2),
                                          "min": int(min(pieces)), "max": int(max(pieces))}
  train_tokens = out["train statement"]["total"] + out["train question"]["total"]
  out["train tokens"] = train_tokens
  out["steps per epoch at 8 x 64 packed"] = round(train_tokens / 512, 1)
  return out


def constant_guess(split: str) -> dict:
  """Exact match of answering every question of `split` with the attribute's most frequent value among the
  trained facts of the other people (so the scored facts do not pick their own guess)."""
  records = ff.build_records()
  scored = {r["person"] for r in records[split]}
  counts = collections.defaultdict(collections.Counter)
  for r in records["train"]:
    if r["template"].endswith("/s0") and r["person"] not in scored:     # one count per trained fact
      counts[r["attribute"]][r["answer"]] += 1
  best = {a: c.most_common(1)[0][0] for a, c in counts.items()}
  rows = records[split]
  return {"exact_match": round(float(np.mean([r["answer"] == best[r["attribute"]] for r in rows])), 4),
          "guesses": best}


def by_attribute(task) -> list[evaluator.EvalTask]:
  """The EvalTask split into one task per attribute (same kind and options)."""
  groups = collections.defaultdict(list)
  for e in task.examples:
    groups[e.id.split("-")[1]].append(e)
  return [evaluator.EvalTask(f"{task.name}/{a}", task.kind, groups[a], task.options) for a in ff.ATTRIBUTES
          if groups[a]]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--checkpoint", default="gemma3-270m")
  parser.add_argument("--tokenizer", default=None, help="default: --checkpoint; 'bytes' for a random:<preset> smoke")
  parser.add_argument("--limit", type=int, default=200, help="validation questions scored")
  parser.add_argument("--unseen_limit", type=int, default=100, help="test_unseen questions scored (0: none)")
  parser.add_argument("--max_len", type=int, default=64, help="the trainer's evaluation window (data.seq_len)")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  from grow_jax.evaluate import load_tokenizer_for_eval
  tok = load_tokenizer_for_eval(args.tokenizer or args.checkpoint)
  out = {"checkpoint": args.checkpoint, "max_len": args.max_len, "data_version": ff.VERSION,
         "tokens": {n: token_stats(tok, n) for n in (ff.DEFAULT_NUM_ENTITIES, 800)},
         "constant_guess": {s: constant_guess(s) for s in ("validation", "test_unseen")}}
  print(json.dumps(out, indent=1), flush=True)

  from grow_jax.formats import load_checkpoint
  start = time.time()
  config, params = load_checkpoint(args.checkpoint)
  out["load_seconds"] = round(time.time() - start, 1)
  for split, limit in (("validation", args.limit), ("test_unseen", args.unseen_limit)):
    if not limit:
      continue
    results = out[split] = {}
    for name in (ff.NAME, ff.NAME_MC):
      [task] = task_eval.eval_tasks(name, split=split, limit=limit)
      parts = by_attribute(task)
      ev = evaluator.Evaluator(tok, parts, batch_size=args.batch_size, max_len=args.max_len)
      start = time.time()
      scores = ev(config, params)
      seconds = time.time() - start
      metrics = [m for m in next(iter(scores.values())) if m != "num_examples"]
      n = sum(scores[p.name]["num_examples"] for p in parts)
      overall = {m: round(sum(scores[p.name][m] * scores[p.name]["num_examples"] for p in parts) / n, 4)
                 for m in metrics}
      results[name] = {**overall, "num_examples": int(n), "seconds": round(seconds, 1),
                       "per_attribute": {p.name.split("/")[1]: {m: round(scores[p.name][m], 3) for m in metrics}
                                         for p in parts}}
      print(split, name, json.dumps(results[name]), flush=True)
    [task] = task_eval.eval_tasks(ff.NAME, split=split, limit=10)
    texts = generative.generate_texts(config, params, tok, [e.prompt for e in task.examples],
                                      max_new_tokens=ff.GEN_MAX_NEW_TOKENS, batch_size=args.batch_size,
                                      max_len=args.max_len)
    results["samples"] = [[e.prompt.removeprefix("Q: ").removesuffix("\nA:"), e.target, t]
                          for e, t in zip(task.examples, texts)]
    print(split, "samples", json.dumps(results["samples"]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
