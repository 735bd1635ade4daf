"""Offline facts about fictional people, taught in some phrasings and asked in others: fictional_facts (greedy
generation, exact match) and fictional_facts_mc (the same questions as 4-way log-likelihood multiple choice).

Why this task (issue 27): a new task that no method solves in the forgetting study's 100 steps, that keeps
improving for 1000+ steps, that rewards capacity, and that tests generalisation rather than recall of strings.
  * The base knows none of it: the people are invented (random syllable names, checked unique), and their
    attributes are drawn independently and uniformly from closed sets, so nothing about a name predicts its
    values. Generation exact match starts at ~0 and multiple choice at chance (0.25).
  * It is knowledge storage, the job the MLPs are thought to do (key-value memories): every fact is an arbitrary
    (name, attribute) -> value association that must be written into the weights, ~log2(|values|) bits each
    (2,000 trained facts x ~5.1 bits at the default size), and the store grows linearly with `num_entities` with
    no shortcut, which is where growth's added MLP width (G-Freeze, G-Train) should pay over LoRA's few
    parameters or an SFT that must overwrite what the base knows.
  * It tests extraction, not the training string: facts are trained only as statements ("Velmora Trask was born
    in Ostrava") and asked as questions in phrasings never seen in training ("In which city was Velmora Trask
    born?"). Following Allen-Zhu & Li ("Physics of Language Models 3.1": knowledge becomes extractable when
    each fact is seen in several phrasings and when question-answer pairs of *other* people are in the training
    mix), every fact has 4 training statements, and the training split also holds questions (in 2 training
    question phrasings per attribute) about a separate group of "format" people, whose facts are never
    evaluated: they teach the answer format and the statement -> question skill, not the evaluated facts.

People and attributes: each person has five attributes, values from closed sets (answers are short and
exact-matchable; a multiple-choice item offers the answer among 3 other values of the same attribute):
birth_city (40 real cities), birth_year (1920-1999), profession (30), employer (24 invented companies),
instrument (24). People are generated in one seeded sequence, in groups that never depend on `num_entities`:
    people 0-99      validation people     their facts trained as statements; asked in `validation`
    people 100-199   test people           their facts trained as statements; asked in `test`
    people 200-249   unseen people         never trained; asked in `test_unseen` (a sanity floor: ~0 / chance)
    people 250-      format people         num_entities - 200 of them: statements and training questions
So `num_entities` (people whose facts are trained; default 400, at least 250) sets the training load, while
validation, test and test_unseen are the same questions at every size: runs at different sizes are compared on
the same items, and an evaluation twin at its default options (the trainer hands `config.data.options` to its
own task only) reads the same evaluation splits. (A different `seed` is a different dataset.)

Splits (record = one text):
    train        4 statements per fact (the value last: loss falls on the value) for every trained person,
                 plus 2 training-phrasing questions per fact of the format people
    validation   one question per fact of the validation people, in a held-out phrasing (3 per attribute,
                 used in rotation): 500 questions
    test         the same for the test people: 500 questions, disjoint people from validation
    test_unseen  the same for the unseen people: 250 questions about facts never trained
No held-out question phrasing occurs in any training text (tests/test_data_fictional_facts.py checks it).

Prompts: statements "<prefix>" -> "<value>" (e.g. "The birthplace of Velmora Trask is" -> "Ostrava"); questions
"Q: <question>\\nA:" -> "<value>", 0-shot (the training questions teach the format; the base, which never saw it,
scores ~0 on generation, and multiple choice measures its knowledge without any format).

Size, in Gemma 3 tokens ([BOS] + prompt + " " + answer + [EOS], measured by experiments/fictional_facts_base.py;
a name is 3-7 tokens, 4.9 on average): a training statement is ~14 tokens, a training question ~19. At the
default 400 people the train split holds 8,000 statements and 2,000 questions, ~152k tokens: packed at 8 x 64 =
512 tokens per step, ~300 steps per epoch (more with packing's gaps). The forgetting study's 100 steps (~51k
tokens, a third of an epoch) show each evaluated fact ~1.3 times (of its 4 statements); 1000 steps are ~3.4
epochs (~13 sightings per fact), and storing arbitrary facts takes many more (Allen-Zhu & Li 3.3: ~100 exposures
per fact to reach 2 bits/parameter), so scores should keep rising well past 1000 steps. The train split grows
linearly with `num_entities` (800 people: ~344k tokens, ~670 steps per epoch); the evaluation splits stay.

Base Gemma 3 270M (experiments/results/fictional_facts_base.md; max_len 64): validation exact match 0.000
(it echoes the question: "Yekax Krotrosk is"), multiple choice 0.225 (chance 0.25, 200 questions); test_unseen
0.000 and 0.250.

Deterministic and offline: Python's `random` seeded by `seed` (string seeds per record for the choices), no
model, no download; the records are cached like the other offline tasks (grow_jax.data.cache), versioned by
VERSION (bump it when any list or template below changes).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import random
from typing import Any

from grow_jax.data import cache
from grow_jax.data.tasks import FieldError, Record, Task, field, register_task
from grow_jax.errors import TaskError

NAME = "fictional_facts"
NAME_MC = "fictional_facts_mc"
VERSION = "v1"
SPLITS = ("train", "validation", "test", "test_unseen")
NUM_CHOICES = 4

# The person groups (see the module docstring); `num_entities` counts the trained ones.
NUM_VALIDATION, NUM_TEST, NUM_UNSEEN = 100, 100, 50
MIN_FORMAT_PEOPLE = 50
MIN_ENTITIES = NUM_VALIDATION + NUM_TEST + MIN_FORMAT_PEOPLE
DEFAULT_NUM_ENTITIES = 400

# Greedy decoding for the generative form: the longest answer ("Ulvenhart Furniture", a year's 4 digits) is
# under 8 Gemma 3 tokens; the answer ends at a newline (or the EOS the training text puts after it).
GEN_MAX_NEW_TOKENS = 8


@dataclasses.dataclass(frozen=True)
class Attribute:
  """One attribute: its closed value set and its phrasings ({name} marks the person). Statements are prefixes
  that the value completes; questions are asked as "Q: <question>\\nA:"."""

  values: tuple[str, ...]
  statements: tuple[str, ...]        # training text
  train_questions: tuple[str, ...]   # training text (format people only)
  eval_questions: tuple[str, ...]    # held out: validation, test, test_unseen


CITIES = ("Aarhus", "Adelaide", "Antwerp", "Austin", "Bergen", "Bilbao", "Bologna", "Brno", "Busan", "Calgary",
          "Cork", "Denver", "Dresden", "Gdansk", "Geneva", "Ghent", "Glasgow", "Graz", "Krakow", "Leeds",
          "Leipzig", "Lyon", "Malmo", "Nantes", "Osaka", "Ostrava", "Perth", "Porto", "Quebec", "Riga",
          "Rotterdam", "Salzburg", "Seville", "Tallinn", "Tampere", "Turin", "Utrecht", "Valencia", "Vilnius",
          "Zurich")
YEARS = tuple(str(y) for y in range(1920, 2000))
PROFESSIONS = ("accountant", "architect", "astronomer", "baker", "butcher", "carpenter", "chemist", "dentist",
               "economist", "electrician", "firefighter", "florist", "geologist", "jeweller", "journalist",
               "lawyer", "librarian", "locksmith", "mechanic", "nurse", "pharmacist", "photographer", "pilot",
               "plumber", "sculptor", "surgeon", "tailor", "teacher", "translator", "veterinarian")
EMPLOYERS = ("Brelstock Foods", "Corvanta Shipping", "Dellmire Textiles", "Elkwater Energy", "Fennick Robotics",
             "Galdora Press", "Harrowgate Mining", "Ilvane Pharma", "Jorrin Glassworks", "Kestrane Airlines",
             "Lumora Studios", "Marrowby Bank", "Nestrel Insurance", "Orvanto Motors", "Pellquist Foundry",
             "Quorvane Labs", "Ravensholt Brewery", "Selvaro Telecom", "Tamberlin Toys", "Ulvenhart Furniture",
             "Veskaro Chemicals", "Wendrake Logistics", "Yarrowfield Farms", "Zephyrine Software")
INSTRUMENTS = ("accordion", "bagpipes", "banjo", "bassoon", "cello", "clarinet", "double bass", "drums", "flute",
               "guitar", "harmonica", "harp", "harpsichord", "mandolin", "oboe", "piano", "saxophone", "trombone",
               "trumpet", "tuba", "ukulele", "viola", "violin", "xylophone")

ATTRIBUTES: dict[str, Attribute] = {
    "birth_city": Attribute(
        CITIES,
        statements=("{name} was born in", "The birthplace of {name} is", "{name} came into the world in the city of",
                    "The city where {name} was born is"),
        train_questions=("Where was {name} born?", "What is the birthplace of {name}?"),
        eval_questions=("In which city was {name} born?", "What is {name}'s city of birth?",
                        "Which city is {name} originally from?")),
    "birth_year": Attribute(
        YEARS,
        statements=("{name} was born in the year", "The birth year of {name} is", "{name}'s year of birth is",
                    "The year in which {name} was born is"),
        train_questions=("When was {name} born?", "What is the birth year of {name}?"),
        eval_questions=("In what year was {name} born?", "Which year was {name} born in?",
                        "What year did {name} come into the world?")),
    "profession": Attribute(
        PROFESSIONS,
        statements=("{name}'s occupation is", "The profession of {name} is", "{name} works in the profession of",
                    "The job that {name} does is"),
        train_questions=("What is {name}'s occupation?", "What job does {name} have?"),
        eval_questions=("What does {name} do for a living?", "Which profession does {name} practise?",
                        "What line of work is {name} in?")),
    "employer": Attribute(
        EMPLOYERS,
        statements=("{name} works for", "The employer of {name} is", "{name} is employed by",
                    "{name} holds a position at"),
        train_questions=("Who does {name} work for?", "Who employs {name}?"),
        eval_questions=("Which company employs {name}?", "At which company does {name} work?",
                        "What is the name of {name}'s employer?")),
    "instrument": Attribute(
        INSTRUMENTS,
        statements=("{name} plays the", "The instrument that {name} plays is", "{name} is a skilled player of the",
                    "In the evenings, {name} practises the"),
        train_questions=("What instrument does {name} play?", "Which instrument is {name} skilled at?"),
        eval_questions=("Which musical instrument does {name} play?", "On which instrument does {name} perform?",
                        "What is {name}'s instrument?")),
}

# -- names ------------------------------------------------------------------------------------------------

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr",
           "v", "z", "th", "c", "j", "y")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "a", "e", "i", "o")
_MIDDLE_CODAS = ("", "", "", "", "", "", "l", "n", "r", "s", "m")
_FINAL_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "sk", "nd", "rk", "m")


def _word(rng: random.Random, syllables: int) -> str:
  """A pronounceable invented word: `syllables` onset + vowel (+ sometimes a consonant) syllables and a final
  coda, capitalised ("Velgrus", "Trimgrark")."""
  middle = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_MIDDLE_CODAS) for _ in range(syllables - 1)]
  return ("".join(middle) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_FINAL_CODAS)).capitalize()


def generate_names(n: int, rng: random.Random) -> list[str]:
  """`n` invented "First Last" names: first names of 2-3 syllables, surnames of 1-2, both 4-10 letters; every first
  name and every surname used once (so each one alone identifies a person), none a word of a value."""
  taken = {w.lower() for values in (a.values for a in ATTRIBUTES.values()) for v in values for w in v.split()}
  firsts: set[str] = set()
  lasts: set[str] = set()
  names = []
  for _ in range(200 * n + 1000):
    if len(names) == n:
      break
    first, last = _word(rng, rng.choice((2, 2, 3))), _word(rng, rng.choice((1, 2)))
    if not (4 <= len(first) <= 10 and 4 <= len(last) <= 10) or first == last:
      continue
    if first in firsts or last in lasts or first in lasts or last in firsts or {first.lower(), last.lower()} & taken:
      continue
    firsts.add(first)
    lasts.add(last)
    names.append(f"{first} {last}")
  if len(names) < n:
    raise ValueError(f"could only generate {len(names)} unique names of {n} requested")
  return names


# -- records ----------------------------------------------------------------------------------------------

def generate_people(num_entities: int = DEFAULT_NUM_ENTITIES, seed: int = 0) -> list[dict[str, Any]]:
  """All people, in group order (validation, test, unseen, format; module docstring): {index, name, group,
  facts: {attribute: value}}. Person i (name and values) is the same for every `num_entities`."""
  _check_num_entities(num_entities)
  total = num_entities + NUM_UNSEEN
  names = generate_names(total, random.Random(seed))   # sequential: the first k names are the same for any total
  groups = (["validation"] * NUM_VALIDATION + ["test"] * NUM_TEST + ["unseen"] * NUM_UNSEEN
            + ["format"] * (total - NUM_VALIDATION - NUM_TEST - NUM_UNSEEN))
  people = []
  for i, (name, group) in enumerate(zip(names, groups)):
    rng = random.Random(f"{seed}:facts:{i}")             # each person's values from a stream of its own
    people.append({"index": i, "name": name, "group": group,
                   "facts": {attr: rng.choice(spec.values) for attr, spec in ATTRIBUTES.items()}})
  return people


def _choices(seed: int, record_id: str, attribute: str, answer: str) -> tuple[list[str], int]:
  """The answer and NUM_CHOICES - 1 other values of the same attribute, in a seeded order (per record)."""
  rng = random.Random(f"{seed}:{record_id}")
  others = rng.sample([v for v in ATTRIBUTES[attribute].values if v != answer], NUM_CHOICES - 1)
  gold = rng.randrange(NUM_CHOICES)
  return others[:gold] + [answer] + others[gold:], gold


def question_prompt(question: str) -> str:
  return f"Q: {question}\nA:"


def _record(seed: int, person: dict[str, Any], attribute: str, kind: str, template: int, text: str
            ) -> dict[str, Any]:
  rid = f"p{person['index']:04d}-{attribute}-{kind}{template}"
  answer = person["facts"][attribute]
  choices, gold = _choices(seed, rid, attribute, answer)
  prompt = text.format(name=person["name"])
  return {"id": rid, "person": person["name"], "attribute": attribute, "template": f"{attribute}/{kind}{template}",
          "kind": kind, "prompt": prompt if kind == "s" else question_prompt(prompt), "answer": answer,
          "choices": choices, "gold": gold}


def build_records(num_entities: int = DEFAULT_NUM_ENTITIES, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
  """{split: records}; a record is one text: id, person, attribute, template ("<attribute>/<s|t|q><k>": s a
  training statement, t a training question, q a held-out question), kind, prompt, answer, choices, gold."""
  splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
  eval_split = {"validation": "validation", "test": "test", "unseen": "test_unseen"}
  for person in generate_people(num_entities, seed):
    for a, (attribute, spec) in enumerate(ATTRIBUTES.items()):
      if person["group"] != "unseen":
        splits["train"] += [_record(seed, person, attribute, "s", k, t) for k, t in enumerate(spec.statements)]
      if person["group"] == "format":
        splits["train"] += [_record(seed, person, attribute, "t", k, t) for k, t in enumerate(spec.train_questions)]
      else:   # one held-out phrasing per fact, in rotation so each phrasing is asked about equally often
        k = (person["index"] + a) % len(spec.eval_questions)
        splits[eval_split[person["group"]]].append(
            _record(seed, person, attribute, "q", k, spec.eval_questions[k]))
  return splits


def build_dataset(data_dir: str | None = None, num_entities: int = DEFAULT_NUM_ENTITIES, seed: int = 0
                  ) -> pathlib.Path:
  """The cached records (grow_jax.data.cache), one directory per (num_entities, seed)."""
  def build():
    return build_records(num_entities, seed), {"attributes": {a: len(s.values) for a, s in ATTRIBUTES.items()}}
  return cache.cached_dataset(NAME, VERSION, build, root=data_dir,
                              params={"num_entities": num_entities, "seed": seed})


def _check_num_entities(num_entities: int, task: str = NAME) -> None:
  if not isinstance(num_entities, int) or isinstance(num_entities, bool) or num_entities < MIN_ENTITIES:
    raise TaskError(f"task {task!r}: num_entities must be an int >= {MIN_ENTITIES} (the {NUM_VALIDATION} "
                     f"validation and {NUM_TEST} test people plus at least {MIN_FORMAT_PEOPLE} format people), "
                     f"got {num_entities!r}")


# -- tasks ------------------------------------------------------------------------------------------------

def _source(task: str, data_dir: str | None, num_entities: int, seed: int):
  _check_num_entities(num_entities, task)

  @functools.cache
  def path() -> pathlib.Path:
    return build_dataset(data_dir, num_entities, seed)
  return lambda split: cache.read_split(path(), split)


def _choice_list(r: Record) -> list[str]:
  choices = r["choices"]
  if not isinstance(choices, list) or len(choices) != NUM_CHOICES:
    raise FieldError(f"field 'choices' must be a list of {NUM_CHOICES} strings, got {choices!r:.80}")
  return choices


def _gold(r: Record) -> int:
  gold = r["gold"]
  if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < NUM_CHOICES:
    raise FieldError(f"field 'gold' must be an index into the {NUM_CHOICES} choices, got {gold!r}")
  return gold


@register_task(NAME)
def fictional_facts(data_dir: str | None = None, num_entities: int = DEFAULT_NUM_ENTITIES, seed: int = 0) -> Task:
  """Facts about invented people: statements to train on, held-out questions answered by greedy generation."""
  metrics = ("exact_match_norm", "exact_match")
  return Task(name=NAME, splits=SPLITS, source=_source(NAME, data_dir, num_entities, seed),
              prompt=lambda r: field(r, "prompt"), target=lambda r: field(r, "answer"), metrics=metrics,
              generation={"metrics": metrics, "max_new_tokens": GEN_MAX_NEW_TOKENS, "stop": ("\n",)},
              description="facts about invented people; held-out question phrasings answered by generation")


@register_task(NAME_MC)
def fictional_facts_mc(data_dir: str | None = None, num_entities: int = DEFAULT_NUM_ENTITIES, seed: int = 0
                       ) -> Task:
  """`fictional_facts` scored by log-likelihood: the answer among 4 values of the same attribute."""
  return Task(name=NAME_MC, splits=SPLITS, source=_source(NAME_MC, data_dir, num_entities, seed),
              prompt=lambda r: field(r, "prompt"), target=lambda r: _choice_list(r)[_gold(r)],
              choices=_choice_list, gold=_gold, metrics=("acc", "acc_norm"),
              description="facts about invented people; held-out questions, 4-way log-likelihood choice")
