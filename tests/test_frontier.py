"""The frontier analysis (grow_jax/study/frontier.py) on hand-built records with answers one can check by hand, the
runner's mechanisms the frontier study needs (every grid point at several seeds; a grid value taken from another
task's selection), and the frontier study file itself (its listing, its re-use of the forgetting study's runs, its
smoke variant end to end)."""

import hashlib
import os

import numpy as np
import pytest

from config_files import ROOT
from grow_jax.errors import ConfigError
from grow_jax.study import frontier, runs

STUDY = os.path.join(ROOT, "experiments", "studies", "frontier_270m.py")
LR = "optimizer.learning_rate"
X, Y = ("facts:validation", "exact_match_norm"), ("cap:validation", "exact_match_norm")
XK, YK = "/".join(X), "/".join(Y)


def _record(task, method, lr, seed, phase="sweep", **final):
  run = runs.Run(task, method, ((LR, lr),), seed, phase)
  return {"id": run.id, "task": task, "method": method, "hparams": [[LR, lr]], "seed": seed, "phase": phase,
          "steps": 3, "train_seconds": 1.0, "eval_seconds": 1.0, "seconds": 2.0, "final": dict(final)}


def _items(entry_ids, ones):
  """Generation items with exact_match_norm 1 on the first `ones` of `entry_ids`."""
  return [{"id": i, "kind": "generation", "exact_match_norm": int(n < ones)} for n, i in enumerate(entry_ids)]


X_IDS, Y_IDS = [f"q{i}" for i in range(4)], [f"c{i}" for i in range(20)]
# (lr, correct of 4 new-task items, retained of 20 countries); a method's retained items are nested (the first k),
# so A's worst retention (16) holds every country B's best (6) does.
HAND = {"a": [(1e-4, 2, 18), (3e-4, 4, 16)], "b": [(1e-4, 2, 6), (3e-4, 3, 4)]}


def _hand_built(seeds=(0, 1), shuffle_seed=None):
  records, items = {}, {}
  for method, points in HAND.items():
    for lr, x, y in points:
      for seed in seeds:
        r = _record("facts", method, lr, seed, **{XK: x / 4, YK: y / 20})
        xs, ys = _items(X_IDS, x), _items(Y_IDS, y)
        if seed == shuffle_seed:                   # the same items in another order
          xs, ys = xs[::-1], ys[::-1]
        records[r["id"]], items[r["id"]] = r, {X[0]: xs, Y[0]: ys}
  return records, items


# ---- frontier, interpolation, matched score --------------------------------------------------------------
def test_the_frontier_keeps_the_points_no_other_point_beats_on_both_axes_in_new_task_order():
  points = [(0.5, 0.5), (0.1, 0.9), (0.4, 0.4), (0.8, 0.2), (0.5, 0.5)]
  assert frontier.frontier(points) == [(0.1, 0.9), (0.5, 0.5), (0.8, 0.2)]   # (0.4, 0.4) is beaten; one twin kept
  assert frontier.frontier([(0.2, 0.1)]) == [(0.2, 0.1)]


def test_retention_is_interpolated_along_the_frontier_and_never_extrapolated():
  front = [(0.1, 0.9), (0.5, 0.5), (0.8, 0.2)]
  assert frontier.retention_at(front, 0.3) == pytest.approx(0.7)
  assert frontier.retention_at(front, 0.8) == pytest.approx(0.2)
  assert frontier.retention_at(front, 0.05) is None and frontier.retention_at(front, 0.81) is None


def test_the_matched_score_is_the_lower_of_the_two_best_scores_when_both_frontiers_reach_it():
  assert frontier.matched_score([(0.1, 0.9), (0.8, 0.2)], [(0.2, 0.5), (0.6, 0.1)]) == pytest.approx(0.6)
  assert frontier.matched_score([(0.1, 0.9), (0.3, 0.2)], [(0.5, 0.5), (0.6, 0.1)]) is None   # no overlap


def test_points_average_each_grid_point_over_its_seeds_and_leave_out_diverged_runs():
  records = {}
  for lr, seed, x, y in [(1e-4, 0, 0.2, 0.8), (1e-4, 1, 0.4, 0.6), (3e-4, 0, 0.5, 0.1)]:
    r = _record("facts", "sft", lr, seed, **{XK: x, YK: y})
    records[r["id"]] = r
  bad = _record("facts", "sft", 1e-3, 0)
  bad["diverged"] = "loss nan"
  other = _record("translation", "sft", 1e-4, 0, **{XK: 9.0, YK: 9.0})
  records.update({bad["id"]: bad, other["id"]: other})
  low, high = frontier.method_points(records, "facts", "sft", XK, YK)
  assert low.hparams == ((LR, 1e-4),) and low.seeds == (0, 1)
  assert (low.x, low.y) == pytest.approx((0.3, 0.7)) and low.x_range == (0.2, 0.4) and low.y_range == (0.6, 0.8)
  assert low.x_sd == pytest.approx(np.std([0.2, 0.4], ddof=1)) and high.x_sd == 0.0 and high.seeds == (0,)


# ---- the matched-score comparison ------------------------------------------------------------------------------
def test_retention_at_the_matched_score_with_its_item_and_seed_bootstrap():
  records, items = _hand_built()
  a, b = (frontier.side(records, items, "facts", m, X, Y) for m in ("a", "b"))
  result = frontier.compare_matched(a, b, samples=300)
  # A's frontier (0.5, 0.9)-(1.0, 0.8), B's (0.5, 0.3)-(0.75, 0.2): matched at B's best 0.75, A there 0.85.
  assert (result.x, result.a, result.b) == pytest.approx((0.75, 0.85, 0.2))
  assert result.difference == pytest.approx(0.65)
  assert 0 < result.low <= result.difference <= result.high and result.verdict == "A keeps more"
  assert result.replicates + result.dropped == 300 and result.replicates > 150
  assert frontier.compare_matched(a, b, samples=300) == result                         # seeded: deterministic
  assert frontier.compare_matched(b, a, samples=300).verdict == "B keeps more"


def test_a_fixed_new_task_score_reads_both_frontiers_there():
  records, items = _hand_built()
  a, b = (frontier.side(records, items, "facts", m, X, Y) for m in ("a", "b"))
  at = frontier.compare_matched(a, b, x=0.6, samples=50)
  assert (at.a, at.b) == pytest.approx((0.88, 0.26))      # 0.9 - 0.1/0.5 * 0.1 and 0.3 - 0.1/0.25 * 0.1


def test_two_methods_with_the_same_items_are_not_resolved():
  records, items = _hand_built()
  a = frontier.side(records, items, "facts", "a", X, Y)
  result = frontier.compare_matched(a, a, samples=100)
  assert result.difference == 0 and result.low <= 0 <= result.high and result.verdict == "not resolved"
  assert frontier.verdict(-0.1, 0.2) == "not resolved"


def test_items_are_aligned_by_id_and_a_run_missing_items_is_refused():
  records, items = _hand_built(shuffle_seed=1)
  a = frontier.side(records, items, "facts", "a", X, Y)
  xs, ys = a.points[((LR, 1e-4),)]
  assert xs.shape == (2, 4, 1) and ys.shape == (2, 20, 1)
  assert (xs[0] == xs[1]).all() and (ys[0] == ys[1]).all()           # seed 1's reversed file, realigned
  first, last = list(items)[0], list(items)[-1]
  items[last][Y[0]] = items[last][Y[0]][:-1]
  with pytest.raises(ValueError, match="1 of the 20 items of cap:validation are missing and 0 others"):
    frontier.side(records, items, "facts", "b", X, Y)
  items[first][Y[0]] = items[first][Y[0]][:-1]           # the first run defines the order: the others have more
  with pytest.raises(ValueError, match="0 of the 19 items of cap:validation are missing and 1 others"):
    frontier.side(records, items, "facts", "a", X, Y)


def test_the_equal_rate_comparison_is_item_stats_paired_bootstrap():
  records, items = _hand_built()
  a, b = (frontier.side(records, items, "facts", m, X, Y) for m in ("a", "b"))
  at = frontier.compare_at_point(a, b, [[LR, 1e-4]], "y", samples=200)
  assert at.difference == pytest.approx(0.9 - 0.3) and at.low > 0 and at.seeds == (2, 2) and at.num_items == 20
  assert frontier.compare_at_point(a, b, [[LR, 1e-4]], "x", samples=200).difference == 0


# ---- report and figures --------------------------------------------------------------------------------------
def test_report_lines_give_the_table_the_figure_and_each_verdict(tmp_path):
  records, items = _hand_built()
  spec = {"x": ["EM", XK], "y": ["capitals", YK], "methods": ["a", "b", "c"], "compare": [["a", "b"], ["c", "b"]]}
  lines = frontier.report_lines("facts", spec, records, items, str(tmp_path))
  text = "\n".join(lines)
  assert "| a | learning_rate=0.0001 | 2 | 0.5 ± 0 | 0.9 ± 0 | ✓ |" in text
  assert "a vs b at matched new-task score 0.75: capitals 0.85 vs 0.2, difference +0.65" in text
  assert text.rstrip().endswith("c vs b: not run yet.") and "→ a keeps more" in text
  assert (tmp_path / "facts_frontier.png").stat().st_size > 0


def test_the_fallback_axis_is_read_only_when_no_run_moved_the_primary_one_beyond_the_declared_range():
  spec = {"x": ["EM", XK], "y": ["capitals", YK], "x_fallback": ["MC", "facts:validation/acc"], "min_range": 0.05}
  base = _record("facts", "base", 0.0, 0, "base", **{XK: 0.01})
  flat = {r["id"]: r for r in [base, _record("facts", "sft", 1e-4, 0, **{XK: 0.06}),
                               _record("facts", "sft", 3e-4, 0, **{XK: 0.02})]}
  assert frontier.new_task_axis(flat, "facts", spec) == ("MC", "facts:validation/acc")   # 0.06 - 0.01 is not > 0.05
  learned = _record("facts", "g_freeze", 1e-4, 1, **{XK: 0.07})
  assert frontier.new_task_axis({**flat, learned["id"]: learned}, "facts", spec) == ("EM", XK)
  assert frontier.new_task_axis(flat, "facts", {"x": ["EM", XK], "y": spec["y"]}) == ("EM", XK)
  lines = frontier.report_lines("facts", {**spec, "methods": []}, flat, {}, "/nonexistent")
  assert "the pre-registered fallback axis MC is read instead" in "\n".join(lines)


def _digest(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_figures_have_deterministic_bytes(tmp_path):
  records, _ = _hand_built()
  points = {m: frontier.method_points(records, "facts", m, XK, YK) for m in ("a", "b")}
  curves = {"sft": [[{"step": 1, "k": 1.0}, {"step": 2, "k": 3.0}], [{"step": 1, "k": 3.0}, {"step": 2, "k": 5.0}]]}
  digests = []
  for i in range(2):
    frontier.frontier_plot(str(tmp_path / f"f{i}.png"), "facts", points, ("EM", "capitals"), base=(0.0, 0.95))
    frontier.curves_plot(str(tmp_path / f"c{i}.png"), "long", curves, [("k", "k")], start={"k": 0.5})
    digests.append((_digest(tmp_path / f"f{i}.png"), _digest(tmp_path / f"c{i}.png")))
  assert digests[0] == digests[1]


def test_curve_bands_are_mean_and_range_over_seeds_at_the_steps_every_run_measured():
  curves = [[{"step": 1, "k": 1.0}, {"step": 2, "k": 3.0}], [{"step": 1, "k": 3.0}, {"step": 2, "k": 5.0},
                                                             {"step": 3, "k": 0.0}]]
  steps, mean, low, high = frontier.curve_bands(curves, "k")
  assert steps == [1, 2] and mean.tolist() == [2.0, 4.0] and low.tolist() == [1.0, 3.0] and high.tolist() == [3.0, 5.0]


def test_curves_start_at_the_untrained_models_score_on_the_items_each_periodic_evaluation_reads():
  facts = _items([f"f{i}" for i in range(6)], 1)                          # 1 of the first 2 right, 0 of the rest
  prose = [{"id": f"p{i}", "kind": "kl", "nll": float(i + 1), "tokens": 2.0, "bytes": 8.0, "kl": 0.0,
            "kl_max": 0.0} for i in range(6)]
  base_items = {"facts:validation": facts, "prose:test": prose}
  start = frontier.curve_start(["facts:validation", "prose:test", "capitals:validation"], 2, base_items,
                               ["facts/exact_match_norm", "prose/perplexity", "prose/kl", "prose/kl_max",
                                "capitals/acc"])
  assert start == {"facts/exact_match_norm": 0.5, "prose/perplexity": pytest.approx(np.exp(3 / 4)), "prose/kl": 0.0}


def test_an_evaluation_of_n_examples_reads_the_first_n_of_the_full_set_for_every_curve_set_of_the_study():
  """What `curve_start` relies on: the periodic evaluation's items are a prefix of the base record's items."""
  from grow_jax import data
  study = runs.load_study(STUDY)
  k = study.spec.curves["max_examples"]
  for entry in study.spec.curves["tasks"]["facts_long"]:
    name, split = entry.split(":")
    task = data.get_task(name)
    assert [e.id for e in task.examples(split, limit=k)] == [e.id for e in task.examples(split, limit=None)][:k]


def test_a_panel_spanning_a_hundredfold_of_positive_values_gets_a_log_axis():
  assert frontier.wants_log_axis(np.array([89.0, 3e4, 9e10]))
  assert not frontier.wants_log_axis(np.array([0.0, 6.3, 20.4]))           # KL: zero at the start
  assert not frontier.wants_log_axis(np.array([0.3, 0.9]))
  assert not frontier.wants_log_axis(np.zeros(0))


def test_the_report_draws_a_one_point_grids_curves_before_its_selection_and_nothing_of_a_wider_grid():
  from grow_jax.study import report
  curve = [{"step": 1, "k": 1.0}]
  records = {r["id"]: {**r, "curve": curve} for r in [_record("long", "sft", 1e-4, s) for s in (0, 1)]
             + [_record("long", "wide", lr, 0) for lr in (1e-4, 3e-4)]}
  assert [r["seed"] for r in report.curve_runs(records, {}, "long", "sft")] == [0, 1]
  assert report.curve_runs(records, {}, "long", "wide") == []
  chosen = [records[_record("long", "wide", 3e-4, 0)["id"]]]
  assert report.curve_runs(records, {("long", "wide"): chosen}, "long", "wide") == chosen


# ---- the runner: several sweep seeds, a grid value from another task's selection -------------------------------
def _fabricated(study, em):
  """Records of every pending sweep/base run of `study` whose validation EM is em[(method, lr, seed)] (default
  0.1)."""
  records = {}
  for run in runs.pending(study, {}):
    lr = dict(run.hparams).get(LR)
    final = {"fictional_facts:validation/exact_match_norm": em.get((run.method, lr, run.seed), 0.1),
             "capitals_gen:validation/exact_match_norm": 0.5}
    r = _record(run.task, run.method, lr, run.seed, run.phase, **final)
    r["hparams"] = [list(kv) for kv in run.hparams]
    r["id"] = run.id
    records[run.id] = r
  return records


def test_every_grid_point_runs_at_each_sweep_seed_and_the_pick_is_the_best_mean_over_seeds():
  study = runs.load_study(STUDY + ":smoke")
  first = runs.pending(study, {})
  assert [r.key for r in first] == [
      "facts/base/default/seed=0", "facts/sft/learning_rate=0.001/seed=0", "facts/sft/learning_rate=0.001/seed=1",
      "facts/sft/learning_rate=0.003/seed=0", "facts/sft/learning_rate=0.003/seed=1",
      "facts/l2sp/learning_rate=0.001/seed=0", "facts/l2sp/learning_rate=0.001/seed=1",
      "facts_long/base/default/seed=0"]                     # the long run waits for facts' sft selection
  # 3e-3 has the best single run (0.6) but the worse mean (0.3 < 0.4)
  records = _fabricated(study, {("sft", 1e-3, 0): 0.4, ("sft", 1e-3, 1): 0.4, ("sft", 3e-3, 0): 0.6,
                                ("sft", 3e-3, 1): 0.0})
  selected = runs.selections(study, records)
  assert selected[("facts", "sft")]["id"] == "facts/sft/learning_rate=0.001/seed=0"
  assert [(r.id, r.phase) for r in runs.pending(study, records)] == [
      ("facts/sft/learning_rate=0.001/seed=0", "test"), ("facts/sft/learning_rate=0.001/seed=1", "test"),
      ("facts/l2sp/learning_rate=0.001/seed=0", "test"), ("facts/l2sp/learning_rate=0.001/seed=1", "test"),
      ("facts_long/long_sft/learning_rate=0.001/seed=0", "sweep"),
      ("facts_long/long_sft/learning_rate=0.001/seed=1", "sweep")]


def test_with_several_sweep_seeds_the_selection_is_the_picked_points_first_seed_run(monkeypatch):
  study = runs.load_study(STUDY + ":smoke")
  records = _fabricated(study, {})
  monkeypatch.setattr(study.module, "select", lambda task, method, rs, ref: max(rs, key=lambda r: r["seed"]))
  assert {key: r["id"].rsplit("/", 1)[1] for key, r in runs.selections(study, records).items()} == {
      ("facts", "sft"): "seed=0", ("facts", "l2sp"): "seed=0"}          # the rule returned seed 1's records


def test_a_grid_value_from_another_tasks_selection_follows_that_selection():
  study = runs.load_study(STUDY + ":smoke")
  records = _fabricated(study, {("sft", 3e-3, 0): 0.5, ("sft", 3e-3, 1): 0.5})
  long = [r for r in runs.pending(study, records) if r.task == "facts_long"]
  assert [r.id for r in long] == ["facts_long/long_sft/learning_rate=0.003/seed=0",
                                  "facts_long/long_sft/learning_rate=0.003/seed=1"]
  config, _ = runs.run_config(study, long[0], "/tmp")
  assert config.optimizer.learning_rate == 0.003 and config.total_steps == 4 and config.train.mode == "sft"


def test_sweep_seeds_must_be_a_count_within_the_seeds(tmp_path):
  path = tmp_path / "three.py"
  path.write_text(f"import importlib.util\n_s = importlib.util.spec_from_file_location('f', {STUDY!r})\n"
                  "f = importlib.util.module_from_spec(_s)\n_s.loader.exec_module(f)\n"
                  "get_config, select = f.get_config, f.select\n\n"
                  "def get_study(arg=None):\n  return {**f.get_study('smoke'), 'sweep_seeds': 3}\n")
  with pytest.raises(ConfigError, match=r"sweep_seeds'\] is 3; expected an integer from 1 to the number of seeds"):
    runs.load_study(str(path))


# ---- the study file ------------------------------------------------------------------------------------------
def test_the_study_lists_its_frontier_runs_first_every_method_on_one_grid_at_two_seeds():
  study = runs.load_study(STUDY)
  todo = runs.pending(study, {})
  facts = [r for r in todo if r.task == "facts" and r.phase == "sweep"]
  assert len(facts) == 7 * 3 * 2 and todo[0].id == "facts/base/default/seed=0"
  assert {dict(r.hparams)[LR] for r in facts} == {1e-4, 3e-4, 1e-3} and {r.seed for r in facts} == {0, 1}
  assert [r.method for r in todo[1:31:6]] == ["sft", "g_freeze", "g_train", "lora_matched", "ewc"]   # core first
  assert not [r for r in todo if r.task == "facts_long" and r.method != "base"]   # rates come from facts


def test_translation_borrows_the_forgetting_studys_committed_runs_where_their_identity_matches(tmp_path):
  study = runs.load_study(STUDY)
  translation = [r for r in runs.pending(study, {}) if r.task == "translation"]
  borrowed = [r.id for r in translation if runs.borrowed_record(study, r, str(tmp_path))]
  assert len(borrowed) == 11 and "translation/base/default/seed=0" in borrowed
  assert "translation/g_freeze/learning_rate=0.0001/seed=1" in borrowed     # a seed run there, a grid run here
  assert not [r for r in borrowed if r.split("/")[1] in ("ewc", "l2sp", "g_freeze_attn")]   # never ran there


@pytest.mark.slow
def test_smoke_study_end_to_end_then_a_rerun_trains_nothing(tmp_path):
  study = runs.load_study(STUDY + ":smoke")
  out, workdirs = str(tmp_path / "out"), str(tmp_path / "wd")
  ran = runs.run_all(study, out, workdirs)
  records = runs.load_records(out, study)
  assert len(records) == 10 and ran == 16            # 2 bases, 6 facts and 2 long runs; 6 test phases
  assert not os.listdir(os.path.join(workdirs, study.name, "params"))       # every tested run's params removed
  selected = runs.selections(study, records)
  rate = dict(map(tuple, selected[("facts", "sft")]["hparams"]))[LR]
  long = sorted((r for r in records.values() if r["method"] == "long_sft"), key=lambda r: r["seed"])
  assert [(dict(map(tuple, r["hparams"]))[LR], r["seed"]) for r in long] == [(rate, 0), (rate, 1)]
  assert all(len(r["curve"]) == 2 and "fictional_facts:test/exact_match_norm" in r["final"] for r in long)
  tested = [r for r in records.values() if r["task"] == "facts" and r["method"] != "base"
            and "stdlib_text:test/kl" in r["final"]]
  assert sorted((r["method"], r["seed"]) for r in tested) == [("l2sp", 0), ("l2sp", 1), ("sft", 0), ("sft", 1)]
  from grow_jax.study import report
  items = report.load_items(records, out)
  lines = frontier.report_lines("facts", study.spec.report["facts"]["frontier"], records, items, out)
  assert any(line.startswith("l2sp vs sft") for line in lines)
  assert os.path.exists(os.path.join(out, "facts_frontier.png"))
  report.write_report(study, records, selected, out)          # every record at a selected point has its test
  assert runs.run_all(study, out, workdirs) == 0
