"""Specification of per-item evaluation records: asked for (`items=True`), every evaluation kind returns one record
per example with the same aggregate metrics, the records reproduce those metrics, and they are written as a
deterministic file (`python -m grow_jax.evaluate --items`, a study run's `runs/<run>.items.jsonl.gz`).

A tiny random Gemma and the byte tokenizer: the records' wiring, not a model's quality.
"""

import gzip
import hashlib
import json

import jax
import numpy as np
import pytest
import sacrebleu

from grow_jax.data import Example
from grow_jax.evaluate import ByteTokenizer, run
from grow_jax.evaluation import evaluator as ev, generative, items, registry, scoring
from grow_jax.model.config import get_preset
from grow_jax.model.transformer import init_params
from grow_jax.study import runs
from grow_jax.train import config as config_lib

CONFIG = get_preset("tiny")
TOK = ByteTokenizer()
KW = dict(batch_size=4, max_len=16)
TEXTS = ["The river runs through the old town, past the market.", "Water boils at one hundred degrees.",
         "She opened the letter slowly, read it twice, and put it back in the drawer without a word."]


def mc_example(i):
  return Example(id=f"q{i}", prompt=f"Question {i}:", target="a", choices=("a", "bb", "ccc"), gold=i % 3)


def gen_example(word, *aliases):
  return Example(id=f"say-{word}", prompt=f"Say {word}:", target=word, aliases=aliases)


@pytest.fixture(scope="module")
def params():
  return init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def base():
  return init_params(CONFIG, jax.random.key(1))


def every_kind():
  return [ev.EvalTask("mc", "multiple_choice", [mc_example(i) for i in range(6)]),
          ev.EvalTask("wino", "partial", [Example(id="w", prompt="to m", target="yyy", choices=("to m", "to y"),
                                                  gold=1, contexts=("to m", "to y"), continuation="yyy")]),
          ev.EvalTask("ppl", "perplexity", TEXTS, ids=["river", "water", "letter"]),
          ev.EvalTask("kl", "kl", TEXTS),
          ev.EvalTask("gen", "generation", [gen_example("chat"), gen_example("chien", "CHIEN"), gen_example("vache")],
                      {"metrics": ("exact_match", "exact_match_norm", "chrf", "bleu"), "max_new_tokens": 6})]


@pytest.mark.slow
def test_items_leave_every_aggregate_unchanged_and_reproduce_it(params, base):
  evaluator = ev.Evaluator(TOK, every_kind(), base=(CONFIG, base), **KW)
  plain = evaluator(CONFIG, params)
  scored = evaluator(CONFIG, params, items=True)
  assert set(scored) == set(plain)
  for name, metrics in plain.items():
    assert scored[name].metrics == metrics                                  # the same floats, bit for bit
    records = scored[name].items
    assert [r["kind"] for r in records] == [scored[name].items[0]["kind"]] * len(records)
    recomputed = {m: items.metric_from_items(records, m) for m in metrics
                  if items.metric_statistic(records[0]["kind"], m) is not None}
    assert "acc" in recomputed or name not in ("mc", "wino")
    for metric, value in recomputed.items():
      assert value == pytest.approx(metrics[metric], rel=1e-5, abs=1e-6), (name, metric)
  assert set(items.metric_statistic("kl", m) is not None for m in ("kl", "perplexity", "bits_per_byte")) == {True}
  assert {"perplexity", "nll_per_token", "bits_per_byte"} <= {m for m in plain["ppl"]
                                                            if items.metric_statistic("perplexity", m)}
  assert max(r["kl_max"] for r in scored["kl"].items) == pytest.approx(plain["kl"]["kl_max"], abs=1e-4)
  assert len(scored["mc"].items) == 6 and len(scored["gen"].items) == 3 and len(scored["kl"].items) == 3


def test_multiple_choice_items_name_the_choice_the_gold_and_the_rounded_loglikelihoods(params):
  examples = [mc_example(i) for i in range(4)]
  [task] = [ev.EvalTask("mc", "multiple_choice", examples)]
  scored = ev.Evaluator(TOK, [task], **KW).evaluate_task(CONFIG, params, task, items=True)
  lls = scoring.loglikelihood(CONFIG, params, TOK, scoring.multiple_choice_requests(examples), **KW)
  for i, record in enumerate(scored.items):
    own = [ll.logprob for ll in lls[3 * i:3 * i + 3]]
    assert record["id"] == f"q{i}" and record["gold"] == i % 3
    assert record["ll"] == pytest.approx(own, abs=1e-4)
    assert record["chosen"] == int(np.argmax(own)) and record["acc"] == int(record["chosen"] == record["gold"])
    per_char = np.asarray(own) / np.asarray([1.0, 2.0, 3.0])
    assert record["chosen_norm"] == int(np.argmax(per_char))
    assert record["acc_norm"] == int(record["chosen_norm"] == record["gold"])
  assert np.mean([r["acc"] for r in scored.items]) == scored.metrics["acc"]


def test_generation_items_hold_prediction_reference_and_per_item_scores(monkeypatch):
  examples = [gen_example("Paris"), gen_example("Kyiv", "Kiev"), gen_example("le chat noir")]
  answers = {"Say Paris:": "paris", "Say Kyiv:": "Kiev", "Say le chat noir:": "le chat blanc"}
  monkeypatch.setattr(generative, "generate_texts", lambda c, p, t, prompts, **kw: [answers[x] for x in prompts])
  task = ev.EvalTask("gen", "generation", examples, {"metrics": ("exact_match", "exact_match_norm", "chrf", "bleu")})
  scored = ev.Evaluator(TOK, [task]).evaluate_task(None, None, task, items=True)
  paris, kyiv, cat = scored.items
  assert paris == {**paris, "kind": "generation", "id": "say-Paris", "prediction": "paris", "reference": "Paris",
                   "exact_match": 0, "exact_match_norm": 1} and "aliases" not in paris
  assert kyiv["aliases"] == ["Kiev"] and kyiv["exact_match"] == 1
  assert cat["chrf"] == round(sacrebleu.sentence_chrf("le chat blanc", ["le chat noir"]).score, 2)
  predictions, references = ["paris", "Kiev", "le chat blanc"], [["Paris"], ["Kyiv", "Kiev"], ["le chat noir"]]
  assert scored.metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [["Paris", "Kyiv", "le chat noir"],
                                                                                    [None, "Kiev", None]]).score)
  for metric in ("chrf", "bleu"):                        # the corpus score from the summed sentence statistics
    assert items.metric_from_items(scored.items, metric) == pytest.approx(scored.metrics[metric], abs=1e-9)
  assert generative.score_predictions(predictions, references, metrics=("exact_match", "chrf", "bleu")) == {
      k: v for k, v in scored.metrics.items() if k != "exact_match_norm"}


def test_text_items_are_per_text_sums_under_the_texts_ids(params):
  task = ev.EvalTask("ppl", "perplexity", TEXTS, ids=["river", "water", "letter"])
  scored = ev.Evaluator(TOK, [task], batch_size=4, max_len=16).evaluate_task(CONFIG, params, task, items=True)
  assert [r["id"] for r in scored.items] == ["river", "water", "letter"]
  assert [r["tokens"] for r in scored.items] == [len(t.encode()) for t in TEXTS]     # bytes: every token predicted
  assert [r["bytes"] for r in scored.items] == [len(t.encode()) for t in TEXTS]
  assert sum(r["tokens"] for r in scored.items) == scored.metrics["num_tokens"]
  nll = sum(r["nll"] for r in scored.items)
  assert nll / scored.metrics["num_tokens"] == pytest.approx(scored.metrics["nll_per_token"], rel=1e-6)


def test_data_task_evaluations_carry_the_examples_ids():
  from grow_jax.evaluation import tasks as task_eval
  from grow_jax.data import get_task
  [kl] = [t for t in task_eval.eval_tasks("stdlib_text", split="test", limit=3) if t.kind in ("kl", "perplexity")]
  assert list(kl.ids) == [e.id for e in get_task("stdlib_text").examples("test", limit=3)]


def test_item_ids_are_the_examples_ids_else_indices_and_unique():
  assert items.item_ids([mc_example(0), mc_example(1)]) == ["q0", "q1"]
  assert items.item_ids(["a text", "another"]) == ["0", "1"]
  assert items.item_ids([mc_example(0), mc_example(0), mc_example(0)]) == ["q0", "q0#1", "q0#2"]
  assert items.item_ids(["x", "y"], ids=["b", "a"]) == ["b", "a"]
  with pytest.raises(ValueError, match="1 ids for 2 examples"):
    ev.EvalTask("p", "perplexity", ["x", "y"], ids=["a"])


def test_the_item_file_has_deterministic_bytes_and_is_checked_by_its_hash(tmp_path):
  records = {"b:test": [{"kind": "generation", "id": "1", "prediction": "Londres", "exact_match": 0}],
             "a:test": [{"kind": "multiple_choice", "id": "x", "ll": [-1.5, -2.0], "acc": 1}]}
  first = items.write_items(str(tmp_path / "one.items.jsonl.gz"), records)
  again = items.write_items(str(tmp_path / "two.items.jsonl.gz"), dict(reversed(list(records.items()))))
  raw = (tmp_path / "one.items.jsonl.gz").read_bytes()
  assert raw == (tmp_path / "two.items.jsonl.gz").read_bytes() and first == again
  assert raw[4:8] == b"\0\0\0\0"                                            # gzip mtime 0
  assert first == {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw), "entries": {"a:test": 1, "b:test": 1}}
  lines = gzip.decompress(raw).decode().splitlines()
  assert [json.loads(line)["entry"] for line in lines] == ["a:test", "b:test"]     # entries sorted
  assert lines[1] == '{"entry":"b:test","exact_match":0,"id":"1","kind":"generation","prediction":"Londres"}'
  assert items.read_items(str(tmp_path / "one.items.jsonl.gz"), first["sha256"]) == records
  items.write_items(str(tmp_path / "plain.jsonl"), records)
  assert (tmp_path / "plain.jsonl").read_bytes() == gzip.decompress(raw)  # no .gz: the same lines, uncompressed
  (tmp_path / "one.items.jsonl.gz").write_bytes(items.file_bytes("x.gz", {"a:test": records["a:test"]}))
  with pytest.raises(ValueError, match="differs from the recorded"):
    items.read_items(str(tmp_path / "one.items.jsonl.gz"), first["sha256"])


def test_an_eval_context_with_items_returns_scored_results(params, monkeypatch):
  ctx = registry.EvalContext(CONFIG, tokenizer=TOK, limit=2, **KW, items=True)
  result = registry.build("smoke_ppl", ctx)(params)
  assert isinstance(result, items.Scored) and len(result.items) == 2
  assert result.metrics == registry.build("smoke_ppl", registry.EvalContext(CONFIG, tokenizer=TOK, limit=2, **KW))(params)
  registry.register("metrics_only")(lambda ctx, split: lambda p: {"loss": 1.0})
  try:
    assert registry.build("metrics_only", ctx)(params) == items.Scored({"loss": 1.0}, [])   # no items to give
  finally:
    registry.EVALUATIONS.remove("metrics_only")


def test_the_cli_writes_the_items_it_scored(tmp_path):
  path = tmp_path / "items.jsonl.gz"
  kwargs = dict(tokenizer="bytes", limit=2, batch_size=4, max_len=64)
  results = run("random:tiny", ["smoke_capitals", "smoke_ppl"], items=str(path), **kwargs)
  assert results == run("random:tiny", ["smoke_capitals", "smoke_ppl"], **kwargs)
  written = items.read_items(str(path))
  assert sorted(written) == ["smoke_capitals", "smoke_ppl"]
  assert [r["id"] for r in written["smoke_capitals"]] == ["France", "Japan"]
  assert items.metric_from_items(written["smoke_capitals"], "acc") == results["smoke_capitals"]["acc"]


def test_a_study_run_keeps_its_items_next_to_its_record_and_a_test_phase_adds_to_them(tmp_path, params):
  config = config_lib.base_config()
  config.init.source = "random:tiny"
  config.eval.batch_size, config.eval.max_len = 4, 64
  final = runs.evaluate([["smoke_capitals", 2]], config, CONFIG, params, TOK)
  scored = final.per_item
  assert list(scored) == ["smoke_capitals"] and len(scored["smoke_capitals"]) == 2
  assert dict(final) == {f"smoke_capitals/{k}": v for k, v in registry.build(
      "smoke_capitals", registry.EvalContext(CONFIG, tokenizer=TOK, limit=2, batch_size=4, max_len=64))(params).items()}
  run_ = runs.Run("translation", "sft", (("optimizer.learning_rate", 1e-3),), 0, "sweep")
  record = {"id": run_.id, "final": dict(final)}
  out = str(tmp_path)
  runs.write_items(out, run_, record, scored)                       # the sweep: validation entries
  path = tmp_path / "runs" / "translation__sft__learning_rate=0.001__seed=0.items.jsonl.gz"
  assert record["items"] == {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                             "entries": {"smoke_capitals": 2}}
  tested = runs.evaluate([["smoke_ppl", 2]], config, CONFIG, params, TOK).per_item
  runs.write_items(out, run_, record, tested)                       # the test phase adds its entries
  assert record["items"]["entries"] == {"smoke_capitals": 2, "smoke_ppl": 2}
  assert items.read_items(str(path), record["items"]["sha256"]) == {**scored, **tested}
  (tmp_path / "runs" / "stray.items.jsonl.gz").write_bytes(b"")
  assert list(runs.load_records(out)) == []                         # item files are not records
