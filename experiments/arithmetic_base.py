r"""The base model on the offline `arithmetic` task (claim C3's "demanding task" candidate), and the task's
answer-free shortcuts.

  python experiments/arithmetic_base.py --split=validation --out=experiments/results/arithmetic_base.json

Reports, per style ("lettered": options listed, choices "A".."E"; "cloze": choices the numbers) the
log-likelihood multiple-choice acc / acc_norm (grow_jax.evaluation's scoring, as task_eval runs it), overall and
per template; generative exact match on the cloze answer (greedy, first line; and the first integer in it);
and the accuracy of rules that never read the question (e.g. "the option with the most near neighbours"), which
a fine-tuned model could learn instead of arithmetic.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # this checkout's grow_jax

import numpy as np

from grow_jax import data
from grow_jax.evaluation import generative, scoring


def shortcut_rules() -> dict:
  """Rules that pick an option from the option values alone (index into the 5 options)."""
  def values(r):
    return [int(o) for o in r["options"]]

  def densest(r):   # most other options within max(3, v // 10): the near misses cluster around the answer
    v = values(r)
    return max(range(5), key=lambda i: (sum(abs(v[i] - v[j]) <= max(3, v[i] // 10) for j in range(5)), -i))

  def tightest(r):  # smallest summed distance to its two nearest other options
    v = values(r)
    return min(range(5), key=lambda i: sum(sorted(abs(v[i] - v[j]) for j in range(5) if j != i)[:2]))

  return {"median": lambda r: sorted(range(5), key=lambda i: values(r)[i])[2], "densest": densest,
          "tightest": tightest}


def letter_logprobs(config, params, tok, prompts, letters="ABCDE", batch_size=8, bucket=32):
  """log p(" <letter>" | [BOS] + prompt) for each prompt and letter, (N, len(letters)): one forward per prompt
  (the lettered choices are single tokens, so their log-likelihoods all come from the last position)."""
  import jax
  import jax.numpy as jnp
  from grow_jax.model.generation import round_up
  from grow_jax.model import forward, unembed
  ids = []
  for letter in letters:
    [i] = tok.encode(" " + letter, add_bos=False)
    ids.append(i)
  ids = jnp.asarray(ids)

  @jax.jit
  def last_logprobs(params, tokens, mask, last):
    hidden = forward(config, params, tokens, input_mask=mask, return_hidden=True)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
    logits = unembed(params["embedder"]["input_embedding"], h, config.final_logit_softcap)[:, 0]
    return jax.nn.log_softmax(logits, axis=-1)[:, ids]

  rows = [[int(tok.bos_id)] + [int(t) for t in tok.encode(p, add_bos=False)] for p in prompts]
  out = np.zeros((len(rows), len(letters)))
  for start in range(0, len(rows), batch_size):
    batch = rows[start:start + batch_size]
    T = round_up(max(map(len, batch)), bucket)
    tokens = np.zeros((batch_size, T), np.int32)
    mask = np.zeros((batch_size, T), bool)
    last = np.zeros((batch_size,), np.int32)
    for b, row in enumerate(batch):
      tokens[b, :len(row)], mask[b, :len(row)], last[b] = row, True, len(row) - 1
    for b in range(len(batch), batch_size):
      tokens[b, 0], mask[b, 0] = int(tok.bos_id), True
    out[start:start + len(batch)] = np.asarray(last_logprobs(params, tokens, mask, last))[:len(batch)]
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--split", default="validation")
  parser.add_argument("--limit", type=int, default=None)
  parser.add_argument("--checkpoint", default="gemma3-270m")
  parser.add_argument("--max_new_tokens", type=int, default=8)
  parser.add_argument("--skip_generation", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  records = list(data.get_task("arithmetic").records(args.split, limit=args.limit))
  templates = [r["template"] for r in records]
  out = {"split": args.split, "n": len(records), "chance": 0.2,
         "shortcuts": {name: float(np.mean([rule(r) == r["gold"] for r in records]))
                       for name, rule in shortcut_rules().items()}}
  print(json.dumps(out), flush=True)

  from grow_jax.formats import load_checkpoint
  from grow_jax.model.tokenizer import load_tokenizer
  config, params = load_checkpoint(args.checkpoint)
  tok = load_tokenizer(args.checkpoint)

  def per_template(correct):
    by = collections.defaultdict(list)
    for t, c in zip(templates, correct):
      by[t].append(c)
    return {t: round(float(np.mean(v)), 3) for t, v in sorted(by.items())}

  for style in ("lettered", "cloze"):
    examples = data.get_task("arithmetic", style=style).examples(args.split, limit=args.limit)
    start = time.time()
    if style == "lettered":   # one forward per question; checked against the evaluator's path on 8 questions
      scores = letter_logprobs(config, params, tok, [e.prompt for e in examples])
      check = scoring.loglikelihood(config, params, tok, scoring.multiple_choice_requests(examples[:8]),
                                       batch_size=8, max_len=512)
      np.testing.assert_allclose(scores[:8].ravel(), [ll.logprob for ll in check], rtol=1e-4, atol=1e-4)
    else:
      lls = scoring.loglikelihood(config, params, tok, scoring.multiple_choice_requests(examples),
                                     batch_size=8, max_len=512)
      scores = np.asarray([ll.logprob for ll in lls]).reshape(len(examples), -1)
    seconds = time.time() - start
    lengths = np.asarray([[len(c) for c in e.choices] for e in examples], np.float64)
    golds = np.asarray([e.gold for e in examples])
    acc, acc_norm = scores.argmax(1) == golds, (scores / lengths).argmax(1) == golds
    picked = collections.Counter("ABCDE"[i] for i in scores.argmax(1))
    out[f"ll_{style}"] = {"acc": float(acc.mean()), "acc_norm": float(acc_norm.mean()), "seconds": round(seconds, 1),
                          "per_template_acc": per_template(acc), "picked_position": dict(sorted(picked.items()))}
    print(style, json.dumps(out[f"ll_{style}"]), flush=True)

  if not args.skip_generation:
    examples = data.get_task("arithmetic", style="cloze").examples(args.split, limit=args.limit)
    start = time.time()
    texts = generative.generate_texts(config, params, tok, [e.prompt for e in examples],
                                      max_new_tokens=args.max_new_tokens, batch_size=8, max_len=512)
    seconds = time.time() - start
    exact = [t == e.target for t, e in zip(texts, examples)]
    first_int = [(m.group(0) if (m := re.search(r"\d+", t.replace(",", ""))) else None) == e.target
                 for t, e in zip(texts, examples)]
    out["gen_cloze"] = {"exact_match": float(np.mean(exact)), "first_integer_match": float(np.mean(first_int)),
                        "seconds": round(seconds, 1), "per_template_first_integer": per_template(first_int),
                        "samples": [[e.target, t] for e, t in zip(examples[:12], texts[:12])]}
    print("gen", json.dumps(out["gen_cloze"]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
