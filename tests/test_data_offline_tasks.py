"""Offline tasks built from package data: capitals probe, stdlib prose, arithmetic problems; and their cache."""

import fractions
import json

import pytest

from grow_jax.data import arithmetic, cache, get_task, knowledge_probe, stdlib_text
from grow_jax.errors import CacheError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("grow_jax_data"))


# -- capitals -----------------------------------------------------------------------------------------------

def test_capitals_probe_knows_well_known_capitals(data_dir):
  task = get_task("capitals", data_dir=data_dir)
  examples = {e.id: e for e in task.examples("test")}
  assert len(examples) > 150
  for country, prompt, capital in [("France", "The capital of France is", "Paris"),
                                   ("Japan", "The capital of Japan is", "Tokyo"),
                                   ("Netherlands", "The capital of the Netherlands is", "Amsterdam"),
                                   ("United States", "The capital of the United States is", "Washington D.C.")]:
    ex = examples[country]
    assert (ex.prompt, ex.target) == (prompt, capital)
    assert ex.choices[ex.gold] == capital and len(set(ex.choices)) == 4


def test_capitals_probe_is_deterministic_and_seeded(data_dir, tmp_path):
  first = get_task("capitals", data_dir=data_dir).examples("test")
  assert get_task("capitals", data_dir=str(tmp_path)).examples("test") == first   # rebuilt from scratch
  reseeded = get_task("capitals", data_dir=data_dir, seed=1).examples("test")
  assert [e.target for e in reseeded] == [e.target for e in first]
  assert [e.choices for e in reseeded] != [e.choices for e in first]
  golds = [e.gold for e in first]
  assert set(golds) == {0, 1, 2, 3}, "the answer position varies"


def test_capitals_filters_ambiguous_and_copyable_items():
  records = knowledge_probe.build_records([
      ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima"), ("Singapore", "Singapore"),
      ("Kuwait", "Kuwait City"), ("Virgin Islands, British", "Road Town"), ("Antarctica", None),
      ("Bonaire", "Kralendijk / Oranjestad"), ("Vatican City State", ["Vatican City"]), ("The Gambia", "Banjul")])
  assert [r["country"] for r in records] == ["France", "Italy", "Japan", "Peru", "The Gambia"]
  assert records[-1]["context"] == "The capital of the Gambia is"
  for r in records:
    assert r["choices"][r["gold"]] == dict(France="Paris", Italy="Rome", Japan="Tokyo", Peru="Lima")\
        .get(r["country"], "Banjul")


def test_capitals_has_only_a_test_split(data_dir):
  with pytest.raises(ValueError, match=r"task 'capitals' has no split 'train'; available splits: \['test'\]"):
    get_task("capitals", data_dir=data_dir).examples("train")


# -- stdlib prose -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, prose", [
    ("Return a new list containing all items from the iterable in ascending order, as the builtin does.", True),
    ("Return a new list containing all items from the iterable in ascending order, as the builtin does", False),
    ("return a new list containing all items from the iterable in ascending order, as the builtin does.", False),
    ("Too short to be a paragraph.", False),
    ("Example: x = foo(a_b, c_d) + bar(e_f) * g_h[i_j] if k_l else m_n(o_p) and q_r(s_t) or u_v.", False),
    ("This paragraph introduces a code block that follows it in the documentation of the module::", False),
])
def test_prose_filter(text, prose):
  assert stdlib_text.is_prose(text) is prose


def test_prose_paragraphs_skip_doctests_code_and_lists():
  doc = ("Summary line that is short.\n\n"
         "This function computes the thing that you asked for and returns it to the caller as a string.\n\n"
         ">>> compute(1)\n'1'\n\n"
         "    indented code block that should never be considered as English prose at all.\n\n"
         "- a bulleted list item that is long enough to be a sentence in its own right here.\n\n"
         "It wraps its text over\nseveral lines, but it is still one paragraph of plain English prose.")
  assert stdlib_text.prose_paragraphs(doc) == [
      "This function computes the thing that you asked for and returns it to the caller as a string.",
      "It wraps its text over several lines, but it is still one paragraph of plain English prose."]


def test_stdlib_text_corpus(data_dir):
  task = get_task("stdlib_text", data_dir=data_dir)
  assert task.metrics == ("perplexity", "kl")
  val, test = task.examples("validation"), task.examples("test")
  assert len(val) > 300 and len(test) > 300
  texts = [e.target for e in val + test]
  assert len(set(texts)) == len(texts), "deduplicated"
  assert all(e.prompt == "" and e.target_delimiter == "" and e.text == e.target for e in val + test)
  assert not any(">>>" in t or "\n" in t for t in texts)
  manifest = cache.read_manifest(cache.dataset_path(cache.data_dir(data_dir), "stdlib_text", "v1"))
  assert manifest["python"] and manifest["counts"] == {"validation": len(val), "test": len(test)}


# -- arithmetic ---------------------------------------------------------------------------------------------

F = fractions.Fraction
SOLVE = {  # independent re-derivation of each template's answer from its operands, in exact arithmetic
    "add": lambda o: F(o["a"] + o["b"]), "sub": lambda o: F(o["a"] - o["b"]), "mul": lambda o: F(o["a"] * o["b"]),
    "div": lambda o: F(o["total"], o["b"]), "percent_off": lambda o: o["price"] * (1 - F(o["r"], 100)),
    "percent_of": lambda o: o["n"] * F(o["r"], 100), "ratio": lambda o: o["total"] * F(o["y"], o["x"] + o["y"]),
    "speed": lambda o: F(o["s"] * o["h"]), "two_step": lambda o: F(o["a"] * o["b"] - o["c"]),
}


def test_arithmetic_gold_option_is_the_computed_answer():
  problems = arithmetic.generate_problems(2000, seed=3)
  assert {p["template"] for p in problems} == set(SOLVE)
  for p in problems:
    value = SOLVE[p["template"]](p["operands"])
    assert value.denominator == 1 and value > 0, p
    assert int(p["options"][p["gold"]]) == value == p["answer"], p
    assert len(set(p["options"])) == 5 and all(int(o) > 0 for o in p["options"]), p
    assert all(str(v) in p["question"] for v in p["operands"].values()), p


def test_arithmetic_generator_is_deterministic_and_unique():
  a, b = arithmetic.generate_problems(500, seed=7), arithmetic.generate_problems(500, seed=7)
  assert a == b
  assert a != arithmetic.generate_problems(500, seed=8)
  assert len({p["question"] for p in a}) == 500
  assert {p["gold"] for p in a} == {0, 1, 2, 3, 4}


def test_arithmetic_task_lettered_and_cloze(data_dir):
  lettered = get_task("arithmetic", data_dir=data_dir, num_problems=400)
  cloze = get_task("arithmetic", style="cloze", data_dir=data_dir, num_problems=400)
  split_ids = {s: {e.id for e in lettered.examples(s)} for s in lettered.splits}
  assert sum(map(len, split_ids.values())) == 400
  assert not (split_ids["train"] & split_ids["test"]) and not (split_ids["train"] & split_ids["validation"])
  ex, ex_cloze = lettered.examples("test")[0], cloze.examples("test")[0]
  assert ex.choices == ("A", "B", "C", "D", "E") and ex.target == "ABCDE"[ex.gold]
  assert ex.prompt.startswith("Question: ") and "\nA. " in ex.prompt and ex.prompt.endswith("\nAnswer:")
  assert ex_cloze.gold == ex.gold and ex_cloze.target == str(int(ex_cloze.target))
  assert f"\n{'ABCDE'[ex.gold]}. {int(ex_cloze.target)}\n" in ex.prompt + "\n"


def test_arithmetic_cloze_is_the_cloze_style_under_its_own_name(data_dir):
  from grow_jax.evaluation import tasks as task_eval
  named = get_task("arithmetic_cloze", data_dir=data_dir, num_problems=400)
  styled = get_task("arithmetic", style="cloze", data_dir=data_dir, num_problems=400)
  assert named.name == "arithmetic_cloze" and named.examples("validation") == styled.examples("validation")
  [mc] = task_eval.eval_tasks("arithmetic_cloze", split="validation", limit=3,
                              task_options={"data_dir": data_dir, "num_problems": 400})
  assert (mc.name, mc.kind) == ("arithmetic_cloze", "multiple_choice")
  assert all(c.isdigit() for e in mc.examples for c in e.choices[e.gold])


def test_unknown_style_is_an_error():
  with pytest.raises(ValueError, match=r"task 'arithmetic': style must be one of \('cloze', 'lettered'\), got 'x'"):
    get_task("arithmetic", style="x")


# -- cache --------------------------------------------------------------------------------------------------

def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("GROW_JAX_DATA_DIR", str(tmp_path / "env"))
  assert cache.data_dir() == tmp_path / "env"
  assert cache.data_dir(tmp_path / "arg") == tmp_path / "arg"
  monkeypatch.delenv("GROW_JAX_DATA_DIR")
  monkeypatch.setenv("GROW_JAX_CACHE", str(tmp_path / "cache"))
  assert cache.data_dir() == tmp_path / "cache" / "data"
  monkeypatch.delenv("GROW_JAX_CACHE")
  assert str(cache.data_dir()).endswith(".cache/grow_jax/data")


def test_env_var_places_the_offline_datasets(monkeypatch, tmp_path):
  monkeypatch.setenv("GROW_JAX_DATA_DIR", str(tmp_path))
  get_task("arithmetic", num_problems=50).examples("train")
  [entry] = tmp_path.iterdir()
  assert entry.name.startswith("arithmetic-v1-") and (entry / "manifest.json").exists()


def test_corrupt_cached_split_names_file_and_line(tmp_path):
  path = cache.write_dataset(tmp_path / "ds", {"train": [{"a": 1}]}, {"name": "ds"})
  with open(path / "train.jsonl", "a") as f:
    f.write("{not json\n")
  with pytest.raises(CacheError, match=r"train\.jsonl:2: not a JSON record"):
    cache.read_split(path, "train")


def test_a_finished_dataset_is_not_replaced_by_a_concurrent_builder(tmp_path):
  first = cache.write_dataset(tmp_path / "ds", {"train": [{"v": 1}]}, {"name": "ds"})
  second = cache.write_dataset(tmp_path / "ds", {"train": [{"v": 2}]}, {"name": "ds"})
  assert first == second and cache.read_split(first, "train") == [{"v": 1}]
  assert [p.name for p in tmp_path.iterdir()] == ["ds"]
  assert json.loads((first / "manifest.json").read_text())["counts"] == {"train": 1}


def test_build_failure_leaves_no_dataset(tmp_path):
  def build():
    raise RuntimeError("network down")
  with pytest.raises(RuntimeError, match="network down"):
    cache.cached_dataset("x", "v1", build, root=tmp_path)
  assert list(tmp_path.iterdir()) == []
