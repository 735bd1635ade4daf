"""Counts, per run of a study, the generations of one set that are of one kind: a bare number (an arithmetic-style
answer) or one of fictional_facts' invented cities (the new task's answers leaking into a retention probe).

  python experiments/answer_kinds.py --runs=experiments/results/sequential_270m/runs --entry=gettext_en_fr:test \
      --prefix=arithmetic_after__ --kind=number > experiments/results/sequential_270m/numeric_answers.md
  python experiments/answer_kinds.py --runs=experiments/results/frontier_270m/runs \
      --entry=capitals_gen:validation --prefix=facts__ --kind=fictional_city \
      > experiments/results/frontier_270m/fictional_city_answers.md

Reads the per-item records (runs/<id>.items.jsonl.gz) the study runner writes; prints a markdown table.
"""

import argparse
import glob
import gzip
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's grow_jax
from grow_jax.data.fictional_facts import CITIES  # noqa: E402

KINDS = {"number": ("a bare number",
                    lambda text, reference: re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", text) is not None),
         # fictional_facts' cities are real cities (a few are capitals: Tallinn, Vilnius): a right answer never counts
         "fictional_city": ("a wrong city that is one of fictional_facts' cities",
                            lambda text, reference: text.strip() in CITIES and text.strip() != reference.strip())}


def count(path: str, entry: str, kind: str) -> tuple[int, int]:
  """(items of `entry`, of them answered with a generation of `kind`) in one items file."""
  items = matched = 0
  is_kind = KINDS[kind][1]
  with gzip.open(path, "rt") as f:
    for line in f:
      record = json.loads(line)
      if record.get("entry") == entry:
        items += 1
        matched += is_kind(record.get("prediction", ""), record.get("reference", ""))
  return items, matched


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True, help="a study's runs/ folder")
  parser.add_argument("--entry", required=True, help="the scored set, e.g. gettext_en_fr:test")
  parser.add_argument("--prefix", default="", help="only the runs whose id starts with this")
  parser.add_argument("--kind", default="number", choices=sorted(KINDS), help="what to count")
  args = parser.parse_args()
  paths = sorted(glob.glob(os.path.join(args.runs, f"{args.prefix}*.items.jsonl.gz")))
  if not paths:
    parser.error(f"--runs/--prefix: no {args.prefix}*.items.jsonl.gz under {args.runs}")
  print(f"`python experiments/answer_kinds.py {' '.join(sys.argv[1:])}`\n")
  print(f"| run | {args.entry} items | answered with {KINDS[args.kind][0]} |")
  print("|---|---|---|")
  for path in paths:
    items, matched = count(path, args.entry, args.kind)
    if items:
      print(f"| {os.path.basename(path).split('.items')[0]} | {items} | {matched} ({matched / items:.0%}) |")


if __name__ == "__main__":
  main()
