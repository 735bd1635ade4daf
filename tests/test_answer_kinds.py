"""experiments/answer_kinds.py counts, per run, the generations of one set that are of one kind (a bare number, an
invented city of fictional_facts)."""

import gzip
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _items(path, rows):
  with gzip.open(path, "wt") as f:
    for entry, prediction, *reference in rows:
      f.write(json.dumps({"entry": entry, "prediction": prediction, "reference": (reference or ["?"])[0]}) + "\n")


def _run(*args):
  return subprocess.run([sys.executable, "experiments/answer_kinds.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)


def test_only_bare_numbers_of_the_named_set_count(tmp_path):
  _items(tmp_path / "b__sft__seed=0.items.jsonl.gz", [("tr:test", "25"), ("tr:test", " -3.5 "), ("tr:test", "25 ans"),
                                                      ("tr:test", "Bonjour"), ("arith:test", "7")])
  _items(tmp_path / "a__sft__seed=0.items.jsonl.gz", [("tr:test", "7")])
  proc = _run(f"--runs={tmp_path}", "--entry=tr:test", "--prefix=b__")
  assert proc.returncode == 0, proc.stderr
  assert "| b__sft__seed=0 | 4 | 2 (50%) |" in proc.stdout
  assert "a__sft" not in proc.stdout


def test_fictional_cities_count_only_as_the_whole_answer_and_only_when_wrong(tmp_path):
  _items(tmp_path / "f__sft__seed=0.items.jsonl.gz", [("capitals_gen:validation", "Seville"),
                                                      ("capitals_gen:validation", " Bergen\n"),
                                                      ("capitals_gen:validation", "Seville, Spain"),
                                                      ("capitals_gen:validation", "Kabul"),
                                                      ("capitals_gen:validation", "Tallinn", "Tallinn")])
  proc = _run(f"--runs={tmp_path}", "--entry=capitals_gen:validation", "--kind=fictional_city")
  assert proc.returncode == 0, proc.stderr
  assert "| f__sft__seed=0 | 5 | 2 (40%) |" in proc.stdout


def test_no_matching_run_is_one_line_naming_the_flags(tmp_path):
  proc = _run(f"--runs={tmp_path}", "--entry=tr:test")
  assert proc.returncode != 0
  assert "--runs/--prefix: no *.items.jsonl.gz under" in proc.stderr.strip().splitlines()[-1]
