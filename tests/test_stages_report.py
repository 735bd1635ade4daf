"""The sequential-stages section of a study report (grow_jax/study/stages.py) on hand-built records: each method's
first-task score after each stage, the forgetting paired per seed, the second task and the probes after each
stage, the untrained model's row; the figure is written, deterministically."""

import hashlib

from grow_jax.study import stages

A, B = "gettext:test/chrf", "arith:test/acc"
SPEC = {"first": ["A chrF", A], "second": ["B acc", B], "probes": [["capitals", "cap:test/em"]]}


def _rec(task, method, seed, a, b, cap):
  return {"task": task, "method": method, "seed": seed, "final": {A: a, B: b, "cap:test/em": cap}}


def _grouped():
  # sft forgets 10 and 20 chrF of A (seeds 0, 1); g_freeze forgets none; g_freeze seed 1 never ran stage 2
  return {("a", "base"): [_rec("a", "base", 0, 20.0, 0.1, 0.5)],
          ("a", "sft"): [_rec("a", "sft", 0, 60.0, 0.1, 0.4), _rec("a", "sft", 1, 62.0, 0.2, 0.3)],
          ("b", "sft"): [_rec("b", "sft", 0, 50.0, 0.9, 0.2), _rec("b", "sft", 1, 42.0, 0.8, 0.1)],
          ("a", "g_freeze"): [_rec("a", "g_freeze", 0, 61.0, 0.1, 0.5), _rec("a", "g_freeze", 1, 61.0, 0.1, 0.5)],
          ("b", "g_freeze"): [_rec("b", "g_freeze", 0, 61.0, 0.7, 0.5)]}


def test_each_method_row_pairs_its_stages_per_seed():
  text = stages.table("a", "b", SPEC, _grouped(), ["sft", "g_freeze", "lora"])
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()[2:]}
  assert list(rows) == ["base (untrained)", "sft", "g_freeze"]          # lora ran nothing: no row
  assert rows["sft"] == ["2", "61 [60..62]", "46 [42..50]", "15 [10..20]", "0.15 [0.1..0.2]", "0.85 [0.8..0.9]",
                         "0.35 [0.3..0.4]", "0.15 [0.1..0.2]"]
  assert rows["g_freeze"] == ["1", "61", "61", "0", "0.1", "0.7", "0.5", "0.5"]   # only the seed with both stages
  assert rows["base (untrained)"] == ["–", "20", "", "", "0.1", "", "0.5", ""]
  assert "forgetting of a (paired)" in text.splitlines()[0]


def test_the_section_writes_its_figure_the_same_bytes_twice(tmp_path):
  lines = stages.report_lines("b", "a", SPEC, _grouped(), ["sft", "g_freeze"], str(tmp_path))
  assert "![a then b](b_stages.png)" in lines
  first = hashlib.sha256((tmp_path / "b_stages.png").read_bytes()).hexdigest()
  stages.report_lines("b", "a", SPEC, _grouped(), ["sft", "g_freeze"], str(tmp_path))
  assert hashlib.sha256((tmp_path / "b_stages.png").read_bytes()).hexdigest() == first


def test_no_second_stage_yet_means_no_section(tmp_path):
  grouped = {k: v for k, v in _grouped().items() if k[0] == "a"}
  assert stages.report_lines("b", "a", SPEC, grouped, ["sft"], str(tmp_path)) == []
  assert not (tmp_path / "b_stages.png").exists()
