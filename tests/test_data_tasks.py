"""Task registry and the record -> Example contract (grow_jax.data.tasks)."""

import dataclasses

import pytest

from grow_jax.data import tasks
from grow_jax.data.tasks import Example, MalformedRecordError, Task, field, get_task, list_tasks
from grow_jax.errors import TaskError

PAPER_TASKS = {"scitail", "sciq", "mathqa", "winogrande", "translation_en_fr"}
OFFLINE_TASKS = {"gettext_en_fr", "capitals", "capitals_gen", "capitals_lettered", "stdlib_text", "arithmetic",
                 "arithmetic_cloze"}


def qa_task(records, **overrides):
  """A small multiple-choice task over in-memory records {q, options, gold}."""
  kwargs = dict(
      name="toy_qa", splits=("train", "test"), source=lambda split: records[split],
      prompt=lambda r: f"Q: {field(r, 'q')}\nA:", target=lambda r: r["options"][r["gold"]],
      choices=lambda r: r["options"], gold=lambda r: r["gold"], metrics=("acc",))
  kwargs.update(overrides)
  return Task(**kwargs)


GOOD = {"q": "2 + 2?", "options": ["3", "4"], "gold": 1}


def test_registry_lists_every_builtin_task():
  assert PAPER_TASKS | OFFLINE_TASKS <= set(list_tasks())


def test_unknown_task_names_it_and_lists_known_ones():
  with pytest.raises(TaskError, match=r"unknown task 'sciqq'.*known tasks: \[.*'sciq'"):
    get_task("sciqq")


def test_unknown_option_names_the_task_and_its_options():
  with pytest.raises(TaskError, match=r"task 'sciq' does not take options \['colour'\].*style"):
    get_task("sciq", colour="red")


def test_unknown_split_names_the_task_and_available_splits():
  task = qa_task({"train": [GOOD], "test": [GOOD]})
  with pytest.raises(TaskError, match=r"task 'toy_qa' has no split 'dev'; available splits: \['train', 'test'\]"):
    task.examples("dev")


def test_good_record_becomes_example_with_target_equal_to_gold_choice():
  [ex] = qa_task({"train": [GOOD], "test": []}).examples("train")
  assert ex == Example(id="train-0", prompt="Q: 2 + 2?\nA:", target="4", choices=("3", "4"), gold=1)
  assert ex.target == ex.choices[ex.gold]
  assert ex.text == "Q: 2 + 2?\nA: 4", "prompt + target_delimiter + target"
  assert (ex.prompt, ex.references) == ("Q: 2 + 2?\nA:", ("4",)), "the evaluator's field names"


def test_record_id_field_is_used_in_examples():
  [ex] = qa_task({"train": [{**GOOD, "id": "q-17"}], "test": []}).examples("train")
  assert ex.id == "q-17"


@pytest.mark.parametrize("record, reason", [
    ({"options": ["3", "4"], "gold": 1}, r"missing field 'q'"),
    ({"q": "   ", "options": ["3", "4"], "gold": 1}, r"field 'q' is empty"),
    ({"q": 7, "options": ["3", "4"], "gold": 1}, r"field 'q' must be a string, got int"),
    ({"q": "2 + 2?", "options": ["3", "4"], "gold": 2}, r"gold index must be an int in \[0, 2\), got 2"),
    ({"q": "2 + 2?", "options": ["4", "4"], "gold": 1}, r"choices are not distinct"),
    ({"q": "2 + 2?", "options": ["3", "4"], "gold": "1"}, r"gold index must be an int in \[0, 2\), got '1'"),
    ({"q": "2 + 2?", "options": ["3"], "gold": 0}, r"needs at least 2 choices, got 1"),
])
def test_malformed_record_error_names_task_split_index_and_reason(record, reason):
  task = qa_task({"train": [GOOD, record], "test": []})
  with pytest.raises(MalformedRecordError, match=rf"task 'toy_qa' split 'train' record 1 \(id 'train-1'\): {reason}"):
    task.examples("train")


def test_empty_target_is_an_error_not_an_empty_example():
  task = Task(name="toy_lm", splits=("train",), source=lambda s: [{"text": "hello"}, {"text": ""}],
              prompt=lambda r: "", target=lambda r: r["text"], metrics=("perplexity",))
  with pytest.raises(MalformedRecordError, match=r"task 'toy_lm' split 'train' record 1 .*target is empty"):
    task.examples("train")


def test_target_must_equal_gold_choice():
  task = qa_task({"train": [GOOD], "test": []}, target=lambda r: "four")
  with pytest.raises(MalformedRecordError, match=r"target 'four' must equal choices\[gold\] = '4'"):
    task.examples("train")


def test_non_mapping_record_is_malformed():
  with pytest.raises(MalformedRecordError, match=r"record 0 .*must be a mapping of fields, got list"):
    qa_task({"train": [["2 + 2?", "4"]], "test": []}).examples("train")


def test_skip_policy_drops_bad_records_and_logs_the_count(caplog):
  task = qa_task({"train": [GOOD, {"q": ""}, GOOD], "test": []})
  examples = task.examples("train", on_malformed="skip")
  assert [e.id for e in examples] == ["train-0", "train-2"]
  assert "skipped 1 malformed records of 3" in caplog.text


def test_limit_reads_only_the_first_records():
  assert len(qa_task({"train": [GOOD] * 5, "test": []}).examples("train", limit=2)) == 2


def test_task_definition_errors():
  with pytest.raises(TaskError, match=r"unknown metrics \['rouge'\]"):
    qa_task({}, metrics=("rouge",))
  with pytest.raises(TaskError, match="`choices` and `gold` must be given together"):
    qa_task({}, gold=None)
  with pytest.raises(TaskError, match=r"generation metrics \['bleu'\] must be a non-empty subset of the task's "
                                      r"metrics \['acc'\]"):
    qa_task({}, generation={"metrics": ("bleu",), "max_new_tokens": 4})
  with pytest.raises(TaskError, match=r"generation metrics \[\] must be"):
    qa_task({}, generation={"max_new_tokens": 4})


def test_aliases_are_extra_references():
  task = Task(name="toy_gen", splits=("test",), source=lambda s: [{"q": "Capital of the US?", "a": "Washington D.C.",
                                                                     "also": ["Washington"]}],
              prompt=lambda r: r["q"], target=lambda r: r["a"], aliases=lambda r: r["also"],
              metrics=("exact_match",))
  [ex] = task.examples("test")
  assert ex.references == ("Washington D.C.", "Washington") and ex.to_dict()["aliases"] == ["Washington"]
  bad = dataclasses.replace(task, aliases=lambda r: [" Washington"])
  with pytest.raises(MalformedRecordError, match=r"alias 0 ' Washington' starts with whitespace"):
    bad.examples("test")


def test_duplicate_registration_is_an_error():
  with pytest.raises(TaskError, match="task 'sciq' is already registered"):
    tasks.register_task("sciq")(lambda: None)


def test_example_to_dict_is_json_ready():
  ex = Example(id="a", prompt="p", target="t", choices=("t", "u"), gold=0)
  assert ex.to_dict() == {"id": "a", "prompt": "p", "target": "t", "choices": ["t", "u"], "gold": 0,
                          "target_delimiter": " "}


def test_answers_must_not_repeat_the_delimiter():
  task = qa_task({"train": [GOOD], "test": []}, choices=lambda r: [" " + o for o in r["options"]],
                 target=lambda r: " " + r["options"][r["gold"]])
  with pytest.raises(MalformedRecordError, match=r"choice 0 ' 3' starts with whitespace; the target delimiter ' '"):
    task.examples("train")
