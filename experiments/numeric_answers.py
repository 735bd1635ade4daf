"""Counts, per run of a study, the generations of one set that are a bare number (an arithmetic-style answer).

  python experiments/numeric_answers.py --runs=experiments/results/sequential_270m/runs \
      --entry=gettext_en_fr:test --prefix=arithmetic_after__ > experiments/results/sequential_270m/numeric_answers.md

Reads the per-item records (runs/<id>.items.jsonl.gz) the study runner writes; prints a markdown table.
"""

import argparse
import glob
import gzip
import json
import os
import re
import sys

BARE_NUMBER = re.compile(r"\s*-?\d+(\.\d+)?\s*")


def count(path: str, entry: str) -> tuple[int, int]:
  """(items of `entry`, of them answered with a bare number) in one items file."""
  items = numeric = 0
  with gzip.open(path, "rt") as f:
    for line in f:
      record = json.loads(line)
      if record.get("entry") == entry:
        items += 1
        numeric += bool(BARE_NUMBER.fullmatch(record.get("prediction", "")))
  return items, numeric


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True, help="a study's runs/ folder")
  parser.add_argument("--entry", required=True, help="the scored set, e.g. gettext_en_fr:test")
  parser.add_argument("--prefix", default="", help="only the runs whose id starts with this")
  args = parser.parse_args()
  paths = sorted(glob.glob(os.path.join(args.runs, f"{args.prefix}*.items.jsonl.gz")))
  if not paths:
    parser.error(f"--runs/--prefix: no {args.prefix}*.items.jsonl.gz under {args.runs}")
  print(f"`python experiments/numeric_answers.py {' '.join(sys.argv[1:])}`\n")
  print(f"| run | {args.entry} items | answered with a bare number |")
  print("|---|---|---|")
  for path in paths:
    items, numeric = count(path, args.entry)
    if items:
      print(f"| {os.path.basename(path).split('.items')[0]} | {items} | {numeric} ({numeric / items:.0%}) |")


if __name__ == "__main__":
  main()
