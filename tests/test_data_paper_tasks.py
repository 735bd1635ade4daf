"""The paper's tasks, read through `datasets.load_dataset("json", ...)` from fixtures in each dataset's real schema."""

import json
import pathlib

import pytest

from grow_jax.data import get_task
from grow_jax.data.paper_tasks import parse_mathqa_options
from grow_jax.data.tasks import FieldError, MalformedRecordError
from grow_jax.errors import TaskError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf_datasets_cache"))


def files(dataset, *splits):
  return {s: str(FIXTURES / dataset / f"{s}.jsonl") for s in splits}


def records(dataset, split):
  return [json.loads(line) for line in (FIXTURES / dataset / f"{split}.jsonl").read_text().splitlines()]


def test_records_come_through_the_datasets_json_builder(hf_cache):
  import datasets
  task = get_task("scitail", data_files=files("scitail", "train", "validation"), cache_dir=hf_cache)
  assert isinstance(task.source("train"), datasets.Dataset)
  assert [r["label"] for r in task.records("train")] == ["neutral", "entails", "entails"]


def test_scitail_is_a_yes_no_entailment_question(hf_cache):
  task = get_task("scitail", data_files=files("scitail", "train", "validation"), cache_dir=hf_cache)
  assert task.splits == ("train", "validation")
  first, second = task.examples("train")[:2]
  assert first.prompt == ("Premise: Pluto rotates once on its axis every 6.39 Earth days;\n"
                          "Hypothesis: Earth rotates on its axis once times in one day.\n"
                          "Does the premise entail the hypothesis? Answer yes or no.\nAnswer:")
  assert (first.choices, first.gold, first.target, first.target_delimiter) == (("yes", "no"), 1, "no", " ")
  assert (second.gold, second.target) == (0, "yes")
  assert [e.target for e in task.examples("validation")] == ["yes", "no"]


def test_scitail_unknown_label_is_malformed(tmp_path, hf_cache):
  bad = tmp_path / "train.jsonl"
  bad.write_text(json.dumps({"premise": "a b", "hypothesis": "c d", "label": "contradiction"}) + "\n")
  task = get_task("scitail", data_files={"train": str(bad)}, cache_dir=hf_cache)
  with pytest.raises(MalformedRecordError, match=r"'scitail' split 'train' record 0 .*field 'label' must be one of "
                                                 r"\['entails', 'neutral'\], got 'contradiction'"):
    task.examples("train")


def test_sciq_cloze_choices_are_the_answers_and_target_is_the_correct_one(hf_cache):
  task = get_task("sciq", data_files=files("sciq", "train", "test"), cache_dir=hf_cache)
  examples = task.examples("train")
  for ex, r in zip(examples, records("sciq", "train")):
    assert sorted(ex.choices) == sorted(r[k] for k in ("distractor1", "distractor2", "distractor3",
                                                      "correct_answer"))
    assert ex.target == r["correct_answer"]
    assert ex.prompt.endswith(f"Question: {r['question']}\nAnswer:")
    assert ex.prompt.startswith(r["support"][:30] if r["support"] else "Question:")
  assert len({ex.gold for ex in examples + task.examples("test")}) > 1, "the answer is not always in one place"
  assert task.examples("train") == examples, "choice order is deterministic"


def test_sciq_lettered_lists_options_and_answers_with_a_letter(hf_cache):
  task = get_task("sciq", style="lettered", with_support=False, data_files=files("sciq", "test"),
                  cache_dir=hf_cache)
  [ex] = task.examples("test")
  assert ex.prompt.startswith("Question: Compounds that are capable of accepting electrons")
  assert ex.choices == ("A", "B", "C", "D")
  assert f"\n{'ABCD'[ex.gold]}. oxidants\n" in ex.prompt


def test_sciq_missing_field_names_it_and_the_record(tmp_path, hf_cache):
  rec = {k: v for k, v in records("sciq", "test")[0].items() if k != "correct_answer"}
  path = tmp_path / "test.jsonl"
  path.write_text(json.dumps(records("sciq", "train")[0]) + "\n" + json.dumps(rec) + "\n")
  task = get_task("sciq", data_files={"test": str(path)}, cache_dir=hf_cache)
  with pytest.raises(MalformedRecordError, match=r"'sciq' split 'test' record 1 \(id 'test-1'\): "
                                                 r"missing field 'correct_answer'"):
    task.examples("test")


def test_mathqa_lettered_options_from_the_options_string(hf_cache):
  task = get_task("mathqa", data_files=files("math_qa", "train"), cache_dir=hf_cache)
  first, second, third = task.examples("train")
  assert first.prompt.endswith("A. rs . 400\nB. rs . 300\nC. rs . 500\nD. rs . 350\nE. none of these\nAnswer:")
  assert (first.target, second.target, third.target) == ("A", "D", "C")
  assert "D. rs . 1,080\n" in third.prompt


def test_mathqa_cloze_choices_are_option_values(hf_cache):
  task = get_task("mathqa", style="cloze", data_files=files("math_qa", "train"), cache_dir=hf_cache)
  ex = task.examples("train")[1]
  assert ex.choices == ("1200", "120", "360", "240", "none of these")
  assert ex.target == "240"
  assert ex.prompt.startswith("Question: average age of students") and ex.prompt.endswith("Answer:")


@pytest.mark.parametrize("options, values", [
    ("a ) 38 , b ) 27.675 , c ) 30 , d ) 28.34 , e ) 32.67", ["38", "27.675", "30", "28.34", "32.67"]),
    ("a ) rs . 1,080 , b ) 2 , c ) 3 , d ) 4 , e ) none", ["rs . 1,080", "2", "3", "4", "none"]),
    ("['a ) 1 / 2', 'b ) 1 / 3', 'c ) 1', 'd ) 2', 'e ) 3']", ["1 / 2", "1 / 3", "1", "2", "3"]),
])
def test_parse_mathqa_options(options, values):
  assert parse_mathqa_options(options) == values


@pytest.mark.parametrize("options", ["a ) 1 , b ) 2 , c ) 3 , d ) 4", "a ) 1 , c ) 2 , b ) 3 , d ) 4 , e ) 5",
                                     "a ) 1 , b ) , c ) 3 , d ) 4 , e ) 5", "1, 2, 3, 4, 5"])
def test_parse_mathqa_options_rejects_malformed(options):
  with pytest.raises(FieldError, match="field 'options'"):
    parse_mathqa_options(options)


def test_winogrande_partial_scoring_contexts_and_shared_continuation(hf_cache):
  task = get_task("winogrande", data_files=files("winogrande", "train", "validation"), cache_dir=hf_cache)
  harder, easier = task.examples("validation")
  assert harder.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                             "Sarah was a much better surgeon than Maria so Maria")
  assert harder.continuation == "always got the harder cases."
  assert (harder.choices, harder.gold, harder.target) == (("Sarah", "Maria"), 0, "Sarah")
  assert (easier.gold, easier.target) == (1, "Maria")
  assert "Sarah or Maria?" in harder.prompt and harder.prompt.endswith("Answer:")


def test_winogrande_unlabeled_record_is_malformed(tmp_path, hf_cache):
  path = tmp_path / "validation.jsonl"
  path.write_text(json.dumps({"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": ""}) + "\n")
  task = get_task("winogrande", data_files={"validation": str(path)}, cache_dir=hf_cache)
  with pytest.raises(MalformedRecordError, match=r"field 'answer' must be '1' or '2', got ''"):
    task.examples("validation")


def test_winogrande_sentence_needs_exactly_one_blank(tmp_path, hf_cache):
  path = tmp_path / "train.jsonl"
  path.write_text(json.dumps({"sentence": "No blank here.", "option1": "x", "option2": "y", "answer": "1"}) + "\n")
  task = get_task("winogrande", data_files={"train": str(path)}, cache_dir=hf_cache)
  with pytest.raises(MalformedRecordError, match=r"field 'sentence' must contain exactly one blank"):
    task.examples("train")


def test_wmt14_translation_prompt_and_target(hf_cache):
  task = get_task("translation_en_fr", data_files=files("wmt14", "train", "validation", "test"), cache_dir=hf_cache)
  assert task.metrics == ("bleu", "chrf")
  [ex] = task.examples("validation")
  assert ex.prompt == ("Translate English to French.\n"
                       "English: A Republican strategy to counter the re-election of Obama\nFrench:")
  assert ex.target == "Une stratégie républicaine pour contrer la réélection d'Obama"
  assert task.examples("test")[0].target == 'Spectaculaire saut en "wingsuit" au-dessus de Bogota'


def test_opus_books_derives_disjoint_validation_and_test_from_train(hf_cache):
  task = get_task("translation_en_fr", dataset="opus_books", data_files=files("opus_books", "train"),
                  cache_dir=hf_cache)
  assert task.splits == ("train", "validation", "test")
  ids = {s: [e.id for e in task.examples(s)] for s in task.splits}
  everything = [r["id"] for r in records("opus_books", "train")]
  assert sorted(sum(ids.values(), [])) == sorted(everything)
  assert ids["validation"] and ids["test"] and len(ids["train"]) > len(ids["validation"])
  assert ids == {s: [e.id for e in task.examples(s)] for s in task.splits}, "deterministic"


def test_opus_books_needs_a_train_file():
  with pytest.raises(TaskError, match=r"derives validation/test from 'train'.*got \['test'\]"):
    get_task("translation_en_fr", dataset="opus_books", data_files={"test": "x.jsonl"})


def test_unknown_translation_dataset():
  with pytest.raises(TaskError, match=r"unknown dataset 'europarl'; known: \['wmt14', 'opus_books'\]"):
    get_task("translation_en_fr", dataset="europarl")


def test_missing_split_with_local_files_lists_the_files_splits():
  task = get_task("scitail", data_files=files("scitail", "train"))
  with pytest.raises(TaskError, match=r"task 'scitail' has no split 'test'; available splits: \['train'\]"):
    task.examples("test")


def test_hub_splits_without_local_files():
  assert get_task("winogrande").splits == ("train", "validation")
  assert get_task("sciq").splits == ("train", "validation", "test")
  with pytest.raises(TaskError, match=r"task 'winogrande' has no split 'test'"):
    get_task("winogrande").examples("test")


def test_hub_failure_names_the_task_and_the_local_files_alternative(monkeypatch):
  import datasets

  def unreachable(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'allenai/sciq' on the Hub")

  monkeypatch.setattr(datasets, "load_dataset", unreachable)
  with pytest.raises(RuntimeError, match=r"task 'sciq': could not load 'allenai/sciq' .*split 'test'.*"
                                         r"ConnectionError.*pass data_files="):
    get_task("sciq").examples("test")
