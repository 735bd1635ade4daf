"""The paper's tasks, read through Hugging Face `datasets` (on machines with hub access).

    scitail      allenai/scitail, config tsv_format        premise, hypothesis, label ("entails" | "neutral")
    sciq         allenai/sciq                              question, distractor1..3, correct_answer, support
    mathqa       allenai/math_qa                           Problem, Rationale, options, correct, annotated_formula,
                                                           linear_formula, category
    winogrande   allenai/winogrande, config winogrande_xl  sentence (one "_"), option1, option2, answer ("1"|"2")
    translation_en_fr
                 wmt/wmt14 fr-en (default) or Helsinki-NLP/opus_books en-fr   translation: {en, fr}

Every task takes `data_files={split: path or [paths]}` to read JSON/JSONL files in the dataset's real schema
through `datasets.load_dataset("json", ...)` instead of the hub (tests use this; so can air-gapped machines with
exported copies), `cache_dir=` for the `datasets` cache, `revision=` (e.g. "refs/convert/parquet" for
script-based hub repos that `datasets` >= 4 no longer runs), `streaming=`, and `limit=N`: only the first N
records of each split (of the stored `train` split for tasks that derive validation/test from it), streamed, so
the rest is never downloaded, prepared or tokenized (WMT14 fr-en's train split is 40.8M pairs). Streaming reads
the dataset's files in their listed order without shuffling, so the same N gives the same records everywhere.

For machines without the hub (cluster nodes), stage the data once: `python -m grow_jax.data.stage`.

Prompts are our reading (the paper publishes none); see `prompts.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Callable, Iterable, Mapping, Sequence

from grow_jax.data import prompts
from grow_jax.data.cache import hash_split
from grow_jax.data.tasks import FieldError, Record, Task, field, register_task
from grow_jax.errors import TaskError

DataFiles = Mapping[str, "str | Sequence[str]"] | None


@dataclasses.dataclass(frozen=True)
class HubDataset:
  """Where a task's records live on the hub.

  derive_splits: if set, the hub has only `train`; the task's validation/test are carved out of it by
    `hash_split(derive_splits(record))` (90/5/5), disjoint and stable.
  """

  path: str
  name: str | None
  splits: tuple[str, ...]
  derive_splits: Callable[[Record], str] | None = None


def hub_source(task: str, hub: HubDataset, *, data_files: DataFiles = None, cache_dir: str | None = None,
               streaming: bool = False, revision: str | None = None, limit: int | None = None
               ) -> tuple[tuple[str, ...], Callable[[str], Iterable[Record]]]:
  """(splits, source) for a task whose records come from `hub` or from local `data_files`; with `limit`, the
  first `limit` records of each stored split, streamed (nothing after them is read)."""
  if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
    raise TaskError(f"task {task!r}: limit={limit!r}; expected a positive number of records (or None: all)")
  streaming = streaming or limit is not None
  if data_files is not None:
    if not isinstance(data_files, Mapping) or not data_files:
      raise TaskError(f"task {task!r}: data_files must be a non-empty mapping split -> path(s), "
                      f"got {data_files!r:.80}")
    stored = tuple(data_files)
  else:
    stored = ("train",) if hub.derive_splits else hub.splits
  if hub.derive_splits:
    if "train" not in stored:
      raise TaskError(f"task {task!r} derives validation/test from 'train'; data_files must have a 'train' "
                      f"entry, got {list(stored)}")
    splits = ("train", "validation", "test")
  else:
    splits = stored

  def load(split: str) -> Iterable[Record]:
    records = _load(split)
    # islice, not IterableDataset.take: take reads the next table of the stream ahead (datasets 5.2)
    return itertools.islice(records, limit) if limit is not None else records

  def _load(split: str) -> Iterable[Record]:
    import datasets  # heavy: imported on first use only
    if data_files is not None:
      return datasets.load_dataset("json", data_files={split: data_files[split]}, split=split,
                                   cache_dir=cache_dir, streaming=streaming)
    try:
      return datasets.load_dataset(hub.path, hub.name, split=split, cache_dir=cache_dir, streaming=streaming,
                                   revision=revision)
    except Exception as e:  # network, auth, missing config...: say which task and what to do instead
      raise RuntimeError(
          f"task {task!r}: could not load {hub.path!r} (config {hub.name!r}, split {split!r}) from the Hugging "
          f"Face hub: {type(e).__name__}: {e}. Without hub access, stage the data once where the hub is "
          "reachable (python -m grow_jax.data.stage) and point config.data.staged or $GROW_JAX_STAGED_DATA at "
          "it, or pass data_files={split: path} to read local JSON files in the same schema.") from e

  def source(split: str) -> Iterable[Record]:
    if hub.derive_splits is None:
      return load(split)
    return (r for r in load("train") if hub.derive_splits(r) == split)

  return splits, source


# -- SciTail ----------------------------------------------------------------------------------------------

SCITAIL = HubDataset("allenai/scitail", "tsv_format", ("train", "validation", "test"))
_SCITAIL_LABELS = {"entails": 0, "neutral": 1}
_YES_NO = ("yes", "no")


def _scitail_prompt(r: Record) -> str:
  return (f"Premise: {field(r, 'premise').strip()}\nHypothesis: {field(r, 'hypothesis').strip()}\n"
          "Does the premise entail the hypothesis? Answer yes or no.\nAnswer:")


def _scitail_gold(r: Record) -> int:
  label = field(r, "label").strip()
  if label not in _SCITAIL_LABELS:
    raise FieldError(f"field 'label' must be one of {list(_SCITAIL_LABELS)}, got {label!r}")
  return _SCITAIL_LABELS[label]


@register_task("scitail")
def scitail(data_files: DataFiles = None, cache_dir: str | None = None, streaming: bool = False,
            revision: str | None = None, limit: int | None = None) -> Task:
  """SciTail entailment (tsv_format) as a yes/no question; target "yes" (entails) or "no" (neutral)."""
  splits, source = hub_source("scitail", SCITAIL, data_files=data_files, cache_dir=cache_dir,
                              streaming=streaming, revision=revision, limit=limit)
  return Task(name="scitail", splits=splits, source=source, prompt=_scitail_prompt,
              target=lambda r: _YES_NO[_scitail_gold(r)], choices=lambda r: _YES_NO, gold=_scitail_gold,
              metrics=("acc", "exact_match"), description="SciTail science entailment, yes/no")


# -- SciQ -------------------------------------------------------------------------------------------------

SCIQ = HubDataset("allenai/sciq", None, ("train", "validation", "test"))


def _sciq_item(r: Record, style: str, with_support: bool) -> prompts.MultipleChoice:
  question = field(r, "question").strip()
  answers = [field(r, k).strip() for k in ("distractor1", "distractor2", "distractor3", "correct_answer")]
  order = prompts.seeded_order(question, 4)   # the answer's position is fixed per question, not always last
  support = field(r, "support", allow_empty=True) if with_support else ""
  return prompts.multiple_choice(question, [answers[i] for i in order], order.index(3), style, preamble=support)


@register_task("sciq")
def sciq(style: str = "cloze", with_support: bool = True, data_files: DataFiles = None,
         cache_dir: str | None = None, streaming: bool = False, revision: str | None = None,
         limit: int | None = None) -> Task:
  """SciQ 4-way science QA; `with_support` prepends the supporting paragraph (as lm-eval-harness does)."""
  prompts.check_style("sciq", style)
  splits, source = hub_source("sciq", SCIQ, data_files=data_files, cache_dir=cache_dir, streaming=streaming,
                              revision=revision, limit=limit)
  item = lambda r: _sciq_item(r, style, with_support)  # noqa: E731
  return Task(name="sciq", splits=splits, source=source, prompt=lambda r: item(r).prompt,
              target=lambda r: item(r).target, choices=lambda r: item(r).choices, gold=lambda r: item(r).gold,
              metrics=("acc", "acc_norm", "exact_match"), description="SciQ science QA, 4 choices")


# -- MathQA -----------------------------------------------------------------------------------------------

MATHQA = HubDataset("allenai/math_qa", None, ("train", "validation", "test"))
_OPTION_MARK = re.compile(r"(?:^|,)\s*\[?\s*'?([a-e])\s*\)")


def parse_mathqa_options(options: str) -> list[str]:
  """"a ) 38 , b ) 27.675 , c ) 30 , d ) 28.34 , e ) 32.67" -> ["38", "27.675", "30", "28.34", "32.67"].

  Values may contain commas ("1,200"). Raises FieldError unless exactly the options a..e appear, in order.
  """
  marks = list(_OPTION_MARK.finditer(options))
  letters = "".join(m.group(1) for m in marks)
  if letters != "abcde":
    raise FieldError(f"field 'options' must list options 'a ) ... , e ) ...' in order, got {options!r:.120}")
  ends = [m.start() for m in marks[1:]] + [len(options)]
  values = [options[m.end():end].strip(" ,'[]") for m, end in zip(marks, ends)]
  for letter, value in zip(letters, values):
    if not value:
      raise FieldError(f"field 'options': option {letter!r} is empty in {options!r:.120}")
  return values


def _mathqa_item(r: Record, style: str) -> prompts.MultipleChoice:
  values = parse_mathqa_options(field(r, "options"))
  correct = field(r, "correct").strip()
  if correct not in "abcde" or len(correct) != 1:
    raise FieldError(f"field 'correct' must be one of a..e, got {correct!r}")
  return prompts.multiple_choice(" ".join(field(r, "Problem").split()), values, "abcde".index(correct), style)


@register_task("mathqa")
def mathqa(style: str = "lettered", data_files: DataFiles = None, cache_dir: str | None = None,
           streaming: bool = False, revision: str | None = None, limit: int | None = None) -> Task:
  """MathQA 5-way math word problems; default "lettered" (the options are numbers the model must see)."""
  prompts.check_style("mathqa", style)
  splits, source = hub_source("mathqa", MATHQA, data_files=data_files, cache_dir=cache_dir, streaming=streaming,
                              revision=revision, limit=limit)
  return Task(name="mathqa", splits=splits, source=source, prompt=lambda r: _mathqa_item(r, style).prompt,
              target=lambda r: _mathqa_item(r, style).target, choices=lambda r: _mathqa_item(r, style).choices,
              gold=lambda r: _mathqa_item(r, style).gold, metrics=("acc", "acc_norm", "exact_match"),
              description="MathQA math word problems, 5 choices")


# -- WinoGrande -------------------------------------------------------------------------------------------

WINOGRANDE_SPLITS = ("train", "validation")   # the hub's test split has no answers


def _blank(r: Record) -> tuple[str, int]:
  sentence = field(r, "sentence")
  if sentence.count("_") != 1:
    raise FieldError(f"field 'sentence' must contain exactly one blank '_', got {sentence!r:.120}")
  return sentence, sentence.index("_")


def _winogrande_options(r: Record) -> tuple[str, str]:
  return field(r, "option1").strip(), field(r, "option2").strip()


def _winogrande_gold(r: Record) -> int:
  answer = field(r, "answer", allow_empty=True).strip()
  if answer not in ("1", "2"):
    raise FieldError(f"field 'answer' must be '1' or '2', got {answer!r} (the test split is unlabeled)")
  return int(answer) - 1


def winogrande_partial(r: Record) -> tuple[tuple[str, str], str]:
  """lm-eval-harness partial scoring: contexts = sentence up to the blank with each option substituted;
  continuation = the rest after the blank (shared by both options; the delimiter " " joins them)."""
  sentence, i = _blank(r)
  continuation = sentence[i + 1:].strip()
  if not continuation:
    raise FieldError(f"field 'sentence' has nothing after the blank: {sentence!r:.120}")
  return tuple(sentence[:i] + o for o in _winogrande_options(r)), continuation


def _winogrande_prompt(r: Record) -> str:
  sentence, _ = _blank(r)
  o1, o2 = _winogrande_options(r)
  return f"{sentence.strip()}\nQuestion: In the sentence above, who or what is _: {o1} or {o2}?\nAnswer:"


@register_task("winogrande")
def winogrande(config: str = "winogrande_xl", data_files: DataFiles = None, cache_dir: str | None = None,
               streaming: bool = False, revision: str | None = None, limit: int | None = None) -> Task:
  """WinoGrande: 2-way pronoun resolution; partial scoring for log-likelihood, a question for generation."""
  hub = HubDataset("allenai/winogrande", config, WINOGRANDE_SPLITS)
  splits, source = hub_source("winogrande", hub, data_files=data_files, cache_dir=cache_dir, streaming=streaming,
                              revision=revision, limit=limit)
  return Task(name="winogrande", splits=splits, source=source, prompt=_winogrande_prompt,
              target=lambda r: _winogrande_options(r)[_winogrande_gold(r)], choices=_winogrande_options,
              gold=_winogrande_gold, partial=winogrande_partial, metrics=("acc", "exact_match"),
              description=f"WinoGrande ({config}), 2 options, partial scoring")


# -- English -> French translation ------------------------------------------------------------------------

def translation_pair(r: Record, source: str = "en", target: str = "fr") -> tuple[str, str]:
  """(source, target) texts of a `{"translation": {"en": ..., "fr": ...}}` record, whitespace-normalised."""
  pair = r["translation"] if "translation" in r else None
  if not isinstance(pair, Mapping):
    raise FieldError(f"field 'translation' must be a mapping {{{source!r}: ..., {target!r}: ...}}, "
                     f"got {pair!r:.80}")
  try:
    return " ".join(field(pair, source).split()), " ".join(field(pair, target).split())
  except FieldError as e:
    raise FieldError(f"translation: {e}") from None


TRANSLATION_DATASETS = {
    "wmt14": HubDataset("wmt/wmt14", "fr-en", ("train", "validation", "test")),
    "opus_books": HubDataset("Helsinki-NLP/opus_books", "en-fr", ("train",),
                             derive_splits=lambda r: hash_split(translation_pair(r)[0])),
}


def translation_task(name: str, splits: Sequence[str], source: Callable[[str], Iterable[Record]],
                     description: str) -> Task:
  """A Task over `{"translation": {"en", "fr"}}` records: prompt `prompts.translation_prompt`, target the French."""
  return Task(name=name, splits=tuple(splits), source=source,
              prompt=lambda r: prompts.translation_prompt(translation_pair(r)[0]),
              target=lambda r: translation_pair(r)[1], metrics=("bleu", "chrf"), description=description)


@register_task("translation_en_fr")
def translation_en_fr(dataset: str = "wmt14", data_files: DataFiles = None, cache_dir: str | None = None,
                      streaming: bool = False, revision: str | None = None, limit: int | None = None) -> Task:
  """English -> French from the hub: `dataset` "wmt14" (newstest2013/2014 as validation/test, 3000 pairs
  each; train is 40.8M pairs: pass `limit`, e.g. 200_000, to stream only the first ones) or "opus_books" (train
  only on the hub; validation/test are carved out by a hash of the English text)."""
  if dataset not in TRANSLATION_DATASETS:
    raise TaskError(f"task 'translation_en_fr': unknown dataset {dataset!r}; known: {list(TRANSLATION_DATASETS)}")
  splits, source = hub_source("translation_en_fr", TRANSLATION_DATASETS[dataset], data_files=data_files,
                              cache_dir=cache_dir, streaming=streaming, revision=revision, limit=limit)
  return translation_task("translation_en_fr", splits, source, f"English->French translation ({dataset})")

