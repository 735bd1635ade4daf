"""Specification of item-level statistics: the paired bootstrap and exact McNemar test (grow_jax/study/item_stats.py)
on hand-computed cases, corpus chrF/BLEU from summed sentence statistics, capitals_gen's answer classes on hand-made
answers, and the report's item-level section (present only where per-item files exist)."""

import math
import os

import numpy as np
import pytest
import sacrebleu

from grow_jax.evaluation import capitals_errors, generative, text_metrics
from grow_jax.study import item_stats, report, runs

SMOKE = "experiments/studies/forgetting_270m.py:smoke"


# ---- McNemar ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_only, b_only, p", [
    (0, 0, 1.0),                      # no discordant pair: nothing to test
    (5, 0, 2 / 32),                   # 2 P(X <= 0), X ~ Bin(5, 1/2)
    (1, 9, 2 * (1 + 10) / 1024),      # 2 P(X <= 1), X ~ Bin(10, 1/2)
    (3, 3, 1.0),                      # capped at 1
    (2, 3, 1.0),                      # 2 (1 + 5 + 10) / 32 = 1
])
def test_mcnemar_is_the_exact_two_sided_binomial_test_of_the_discordant_pairs(a_only, b_only, p):
  agree = [1, 1, 0]                                  # concordant pairs change nothing
  a = np.array([1] * a_only + [0] * b_only + agree)
  b = np.array([0] * a_only + [1] * b_only + agree)
  assert item_stats.mcnemar(a, b) == (a_only, b_only, pytest.approx(p, rel=1e-12))
  assert item_stats.mcnemar(b, a) == (b_only, a_only, pytest.approx(p, rel=1e-12))


def test_mcnemar_agrees_with_scipys_binomial_test():
  stats = pytest.importorskip("scipy.stats")
  for x, y in [(7, 19), (30, 12), (0, 4), (150, 170)]:
    assert item_stats.binomial_two_sided(x, y) == pytest.approx(stats.binomtest(x, x + y, 0.5).pvalue, rel=1e-9)


def test_mcnemar_refuses_what_is_not_two_paired_binary_vectors():
  with pytest.raises(ValueError, match="one length"):
    item_stats.mcnemar([1, 0], [1, 0, 1])
  with pytest.raises(ValueError, match="0/1"):
    item_stats.mcnemar([1, 2], [1, 0])


# ---- the paired bootstrap ------------------------------------------------------------------------------
def test_identical_or_shifted_sides_give_an_exact_difference_and_a_point_interval():
  rng = np.random.default_rng(1)
  b = rng.normal(size=50)
  assert item_stats.paired_bootstrap(b, b)[:3] == (0.0, 0.0, 0.0)
  shifted = item_stats.paired_bootstrap(b + 0.25, b)
  assert shifted.difference == pytest.approx(0.25) and shifted.low == pytest.approx(0.25)
  assert shifted.high == pytest.approx(0.25) and (shifted.num_items, shifted.seeds) == (50, (1, 1))


def test_two_items_resample_to_three_means_with_probabilities_a_quarter_a_half_a_quarter():
  point, replicates = item_stats.bootstrap_differences([0.0, 1.0], [0.0, 0.0], samples=20_000)
  assert point == 0.5
  values, counts = np.unique(replicates, return_counts=True)
  assert list(values) == [0.0, 0.5, 1.0]
  assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
  assert item_stats.paired_bootstrap([0.0, 1.0], [0.0, 0.0])[1:3] == (0.0, 1.0)


def test_the_replicates_spread_like_the_standard_error_of_the_paired_differences():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=400), rng.normal(size=400)
  point, replicates = item_stats.bootstrap_differences(a, b)
  d = a - b
  assert point == pytest.approx(d.mean())
  assert replicates.mean() == pytest.approx(d.mean(), abs=0.02)
  assert replicates.std() == pytest.approx(d.std() / math.sqrt(len(d)), rel=0.05)     # bootstrap SE of a mean
  # Pairing matters: a shared item effect cancels in the difference, so the interval is narrow.
  shared = rng.normal(scale=10, size=400)
  paired = item_stats.paired_bootstrap(a + shared, b + shared)
  assert paired.difference == pytest.approx(d.mean()) and paired.high - paired.low < 0.5


def test_seeds_are_averaged_on_each_side_under_one_draw_of_items():
  a = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])[:, :, None]     # 2 seeds x 4 items
  b = np.array([[0.0, 0.0, 1.0, 0.0]])[:, :, None]                           # 1 seed
  result = item_stats.paired_bootstrap(a, b, samples=2000)
  assert result.difference == pytest.approx((0.75 + 0.5) / 2 - 0.25)
  assert result.seeds == (2, 1) and result.num_items == 4
  _, replicates = item_stats.bootstrap_differences(a, b, samples=2000)
  assert replicates.min() >= -0.25 and replicates.max() <= 1.0   # only differences one draw can give


def test_the_bootstrap_is_deterministic_for_a_seed_and_takes_any_statistic_of_the_sums():
  rng = np.random.default_rng(3)
  nll_a, nll_b, tokens = rng.uniform(5, 50, 30), rng.uniform(5, 50, 30), rng.integers(3, 20, 30).astype(float)
  per_token = lambda sums, n: sums[..., 0] / sums[..., 1]
  a, b = np.stack([nll_a, tokens], 1), np.stack([nll_b, tokens], 1)
  first = item_stats.paired_bootstrap(a, b, per_token)
  assert first == item_stats.paired_bootstrap(a, b, per_token)
  assert first != item_stats.paired_bootstrap(a, b, per_token, seed=1)
  assert first.difference == pytest.approx(nll_a.sum() / tokens.sum() - nll_b.sum() / tokens.sum())
  assert first.low < first.difference < first.high


def test_the_sides_must_share_their_items():
  with pytest.raises(ValueError, match="share their items"):
    item_stats.paired_bootstrap(np.zeros(5), np.zeros(6))
  with pytest.raises(ValueError, match="level"):
    item_stats.paired_bootstrap(np.zeros(5), np.zeros(5), level=95)


# ---- corpus scores from sentence statistics --------------------------------------------------------------
def test_vectorised_corpus_scores_equal_sacrebleus_on_random_statistics():
  rng = np.random.default_rng(4)
  for name, k in (("chrf", 18), ("bleu", 10)):
    rows = rng.integers(0, 6, (2000, k)) * rng.integers(0, 2, (2000, k))    # many zeros: every edge case
    if name == "bleu":
      rows[:, 6:] = np.maximum(rows[:, 6:], rows[:, 2:6])                    # total >= correct
    else:
      rows[:, 2::3] = np.minimum(rows[:, 2::3], np.minimum(rows[:, 0::3], rows[:, 1::3]))
    expected = [text_metrics.score_from_statistics(name, row) for row in rows]
    assert text_metrics.scores_from_statistics(name, rows) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_summed_sentence_statistics_give_sacrebleus_corpus_scores():
  hyps = ["le chat est sur le tapis", "bonjour", "", "Limite de nouveau"]
  refs = ["le chat est sur le tapis rouge", "Bonjour !", "rien", "Limite de nouveauté"]
  for name, corpus in (("chrf", sacrebleu.corpus_chrf), ("bleu", sacrebleu.corpus_bleu)):
    summed = np.sum(text_metrics.sentence_statistics(name, hyps, refs), axis=0)
    assert float(text_metrics.scores_from_statistics(name, summed)) == pytest.approx(corpus(hyps, [refs]).score)


# ---- capitals_gen's answers by class --------------------------------------------------------------------
@pytest.mark.parametrize("answer, references, expected", [
    ("London", ["London"], "correct"),
    ("london.", ["London"], "correct"),                    # case and punctuation folded, as exact_match_norm
    ("Bogota", ["Bogotá"], "correct"),                     # accents folded
    ("Kiev", ["Kyiv", "Kiev"], "correct"),                 # an accepted alias
    ("Londres", ["London"], "other_language"),             # French / Spanish / Portuguese
    ("Lisboa", ["Lisbon"], "other_language"),
    ("Varsovie", ["Warsaw"], "other_language"),
    ("Pékin", ["Beijing"], "other_language"),
    ("La Haye", ["Amsterdam", "The Hague"], "other_language"),   # an alias's other name
    ("Paris", ["London"], "wrong_city"),                   # another capital
    ("Moscou", ["Warsaw"], "wrong_city"),                  # another capital, in French
    ("Sydney", ["Canberra"], "wrong_city"),                # an unlisted city-like name
    ("St. George's", ["Kingstown"], "wrong_city"),
    ("", ["Paris"], "format_lost"),
    ("France", ["Paris"], "format_lost"),                  # the country, not a city
    ("Paris, France", ["Paris"], "format_lost"),           # the right city inside other text
    ("La capitale est Paris", ["Paris"], "format_lost"),
    ("Q: What is the capital of Spain?", ["Lima"], "format_lost"),
    ("the capital is a big city", ["Lima"], "format_lost"),
    ("Route 66", ["Lima"], "format_lost"),
])
def test_each_answer_falls_in_one_class(answer, references, expected):
  assert capitals_errors.classify(answer, references) == expected


def test_the_breakdown_counts_every_class_over_generation_items():
  records = [{"prediction": p, "reference": r, **({"aliases": a} if a else {})} for p, r, a in [
      ("Paris", "Paris", None), ("Londres", "London", None), ("Rome", "London", None), ("", "Oslo", None),
      ("Kiev", "Kyiv", ["Kiev"])]]
  assert capitals_errors.breakdown(records) == {"correct": 2, "other_language": 1, "wrong_city": 1, "format_lost": 1}


def test_every_exonym_names_a_probe_capital_and_differs_from_it():
  from grow_jax.data import capital_probes, knowledge_probe
  from grow_jax.evaluation.text_metrics import normalize_answer
  capitals = {c for _, c in knowledge_probe.country_capitals() if isinstance(c, str)}
  capitals |= {a for aliases in capital_probes.ALIASES.values() for a in aliases}
  for city, names in capitals_errors.EXONYMS.items():
    assert city in capitals, city
    assert all(normalize_answer(n) != normalize_answer(city) for n in names), city
  cities, _ = capitals_errors.known_names()
  assert {"london", "londres", "canberra", "washington"} <= cities


# ---- the report's item-level section ---------------------------------------------------------------------
def _generation_items(predictions, references):
  ids = [f"p{i}" for i in range(len(predictions))]
  return [{"kind": "generation", **r} for r in generative.prediction_items(
      ids, predictions, references, metrics=("exact_match_norm", "chrf", "bleu"))]


def _record(run, final):
  return {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
          "seed": run.seed, "phase": run.phase, "steps": 3, "train_seconds": 1.0, "eval_seconds": 1.0,
          "seconds": 2.0, "final": final}


def test_item_comparisons_pair_each_method_with_the_reference_on_shared_items_and_seeds():
  n = 10
  references = [f"city {i}" for i in range(n)]
  sft_answers = [references[0]] + ["nope"] * 8 + [references[9]]             # right on items 0, 9
  method_answers = references[:9] + ["nope"]                                   # right on items 0..8
  grouped = {("t", "sft"): [{"id": "s0", "seed": 0}], ("t", "g_freeze"): [{"id": "g0", "seed": 0}],
             ("t", "lora"): [{"id": "l0", "seed": 0}]}
  by_run = {"s0": {"capitals_gen:test": _generation_items(sft_answers, references)},
            "g0": {"capitals_gen:test": _generation_items(method_answers, references)}}
  metrics = [("EM", "capitals_gen:test/exact_match_norm"), ("chrF", "capitals_gen:test/chrf")]
  rows = report.item_comparison_rows("t", metrics, grouped, by_run, ["sft", "g_freeze", "lora"])
  em, chrf = rows                                                              # lora has no items: no row
  assert em[:5] == ["g_freeze", "EM", "10", "0", "+0.7"]
  assert em[6] == f"{2 * (1 + 9) / 2 ** 9:.2g}"                                # a_only 8, b_only 1
  expected = (sacrebleu.corpus_chrf(method_answers, [references]).score
              - sacrebleu.corpus_chrf(sft_answers, [references]).score)
  assert chrf[1] == "chrF" and chrf[4] == f"{expected:+.3g}" and chrf[6] == "–"


def test_the_report_gains_the_item_section_only_where_item_files_exist(tmp_path):
  study = runs.load_study(SMOKE)
  out = str(tmp_path)
  references = ["le chat noir", "la maison", "un petit jardin", "bonne nuit"]
  val = {"gettext_en_fr:validation/chrf": 5.0, "capitals_gen:validation/exact_match_norm": 0.5}
  answers = {}

  def add(run, predictions, **final):
    answers[run.id] = predictions
    chrf = sacrebleu.corpus_chrf(predictions, [references]).score
    record = _record(run, {**val, "gettext_en_fr:test_heldout/chrf": chrf, "stdlib_text:test/kl": 0.1, **final})
    runs.write_record(out, run, record)

  base_run, low, high = runs.pending(study, {})
  add(base_run, ["chat", "maison", "jardin", "nuit"])
  add(low, references[:2] + ["un jardin", "nuit"])
  add(high, references[:3] + ["bonne"], **{"gettext_en_fr:validation/chrf": 9.0})   # sft selects this point
  [l2sp] = [r for r in runs.pending(study, runs.load_records(out)) if r.method == "l2sp"]
  add(l2sp, ["le chat noir", "la", "un petit jardin", "bonne nuit"])
  loaded = runs.load_records(out)
  selected = runs.selections(study, loaded)
  assert {("translation", "sft"), ("translation", "l2sp")} <= set(selected)
  without = report.write_report(study, loaded, selected, out)
  assert "Paired over the test items" not in without
  for run in (base_run, high, l2sp):
    record = loaded[run.id]
    runs.write_items(out, run, record, {"gettext_en_fr:test_heldout": _generation_items(answers[run.id], references)})
    runs.write_record(out, run, record)
  loaded = runs.load_records(out)
  with_items = report.write_report(study, loaded, selected, out)
  before, after = without.splitlines(), with_items.splitlines()
  start = next(i for i, line in enumerate(after) if line.startswith("Paired over the test items"))
  end = len(after) - (len(before) - start)
  assert after[:start] == before[:start] and after[end:] == before[start:]   # only the section is new
  section = after[start:end]
  [row] = [line for line in section if line.startswith("| l2sp")]             # kl has no items: chrF only
  expected = (sacrebleu.corpus_chrf(answers[l2sp.id], [references]).score
              - sacrebleu.corpus_chrf(answers[high.id], [references]).score)
  assert expected < -1 and row.split("|")[2:6] == [" chrF held-out ", " 4 ", " 0 ", f" {expected:+.3g} "]
  assert report.write_report(study, loaded, selected, out) == with_items      # deterministic
  os.remove(os.path.join(out, "runs", loaded[high.id]["items"]["file"]))
  with pytest.raises(FileNotFoundError):
    report.write_report(study, loaded, selected, out)                          # a named file must exist
