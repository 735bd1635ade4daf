"""Generative capital-city probes that can fall to zero: capitals_gen and capitals_lettered.

The log-likelihood `capitals` probe (knowledge_probe.py) picks the likeliest of 4 capitals, so a model that
has lost the ability to answer still scores ~25%. These two probes make the model *produce* the answer, so a
model that no longer answers in the format (say it starts translating into French) scores ~0:

  capitals_gen       "Q: What is the capital of France?\\nA:" after `shots` fixed solved examples; greedy decode,
                     the first line of the completion, stripped, must equal the capital. Metrics:
                     exact_match_norm (headline: accents, case and punctuation folded, metrics_text.normalize_answer)
                     and exact_match (the exact string).
  capitals_lettered  "Question: What is the capital of France?\\nA. Lima\\nB. Paris\\nC. ...\\nD. ...\\nAnswer:" after
                     `shots` fixed solved examples; the first generated token, stripped, must be the letter
                     ("B"). Chance is 25% only for a model that still answers with a letter.

Items: every country of the `capitals` probe (same countryinfo records, same seeded options and gold position),
except the few-shot countries (FEW_SHOT, never scored) and EXCLUDED (no single current capital, or a duplicate).
ALIASES lists other accepted answers for the generative probe: official co-capitals / seats of government,
current names and common English spellings, taken from standard references, not from any model's outputs.

Normalisation (exact_match_norm): a probe of *knowledge and format*, so spelling variants that do not change the
answer are not errors: "Bogota" for "Bogotá" (accents), "paris" (case), "Washington, D.C." or "Paris." (punctuation).
Anything else on the first line ("Paris, France", "La capitale est Paris") is wrong.

Splits, by a hash of the country name: "validation" (58 items: the prompt format was chosen on them, with the
base model) and "test" (159 items: never looked at when choosing). Neither is ever trained on.

Base Gemma 3 270M (greedy, f32; experiments/results/probe_prompts.md):
  capitals_gen       validation exact_match_norm by shots: 0: 0.00 (it answers in sentences), 1: 0.59, 2: 0.64,
                     3: 0.64, 5: 0.64 -> default 2 shots, the shortest prompt with the best score: at most 46
                     tokens, so prompt + 12 new tokens fit the trainer's 64-token evaluation window (3 shots do
                     not: cut on the left, without its BOS, the base model scores 0.10 instead of 0.64).
  capitals_lettered  validation 0-shot 0.14, 3-shot 0.26 (always "B"), 5-shot 0.26; test (5-shot) 0.26: chance.
                     The 270M model does not map letters to options; kept for larger models, not a 270M probe.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Iterable

from grow_jax.data import cache, knowledge_probe, prompts
from grow_jax.data.tasks import FieldError, Record, Task, field, register_task

NAME_GEN = "capitals_gen"
NAME_LETTERED = "capitals_lettered"
DATASET = "capital_probes"
VERSION = "v1"
SPLIT_PERCENT = (("validation", 30), ("test", 70))

# Fixed solved examples: (country, capital, options, gold). The first `shots` are used; the options of the
# lettered shots are capitals of other countries, with the answer at varied letters (B, D, A, C, B).
FEW_SHOT: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("Germany", "Berlin", ("Madrid", "Berlin", "Lima", "Oslo"), 1),
    ("Japan", "Tokyo", ("Seoul", "Nairobi", "Quito", "Tokyo"), 3),
    ("Canada", "Ottawa", ("Ottawa", "Dublin", "Hanoi", "Accra"), 0),
    ("Italy", "Rome", ("Vienna", "Bern", "Rome", "Athens"), 2),
    ("Egypt", "Cairo", ("Rabat", "Cairo", "Amman", "Tunis"), 1),
)
MAX_SHOTS = len(FEW_SHOT)
# Chosen on the validation split with the base model (see the module docstring). capitals_lettered: no shot count
# lifts the 270M model above chance; 5 is the usual few-shot count for lettered multiple choice (MMLU).
DEFAULT_SHOTS = {NAME_GEN: 2, NAME_LETTERED: 5}
# Longest capital/alias is 8 Gemma 3 tokens ("Sri Jayawardenepura Kotte"); room for a few more.
GEN_MAX_NEW_TOKENS = 12

EXCLUDED = {
    "Hong Kong": "a special administrative region; countryinfo's 'City of Victoria' is not a usual answer",
    "Antilles néerlandaises": "dissolved in 2010, and named in French",
    "Serbia and Montenegro": "dissolved in 2006",
    "Palestine": "no single uncontested capital",
    "Burma": "the same country as Myanmar",
}

ALIASES: dict[str, tuple[str, ...]] = {
    "United States": ("Washington",),
    "Bolivia": ("La Paz",),                          # seat of government (Sucre: constitutional capital)
    "South Africa": ("Cape Town", "Bloemfontein"),   # legislative and judicial capitals
    "Benin": ("Cotonou",),                           # seat of government
    "Swaziland": ("Mbabane",),                       # administrative capital (Lobamba: legislative)
    "Sri Lanka": ("Sri Jayawardenepura Kotte",),     # legislative capital
    "Malaysia": ("Putrajaya",),                      # administrative capital
    "Netherlands": ("The Hague",),                   # seat of government
    "Kazakhstan": ("Astana",),                       # the city's name again since 2022
    "Myanmar": ("Nay Pyi Taw", "Naypyitaw"),
    "Ukraine": ("Kiev",),
    "Mongolia": ("Ulan Bator",),
    "Western Sahara": ("Laayoune",),
}


def build_records(pairs: Iterable[tuple[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
  """Probe records (sorted by country) from (country, capital) pairs: the `capitals` probe's records less the
  few-shot and excluded countries, with the question, capital and aliases added."""
  skip = {c for c, *_ in FEW_SHOT} | set(EXCLUDED)
  out = []
  for r in knowledge_probe.build_records(pairs, seed):
    country = r["country"]
    if country in skip:
      continue
    out.append({"id": country, "country": country,
                "question": f"What is the capital of {knowledge_probe.country_phrase(country)}?",
                "capital": r["choices"][r["gold"]], "aliases": list(ALIASES.get(country, ())),
                "choices": r["choices"], "gold": r["gold"]})
  return out


def split_records(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """validation / test (30 / 70) by a hash of the country name."""
  splits: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SPLIT_PERCENT}
  for r in records:
    splits[cache.hash_split(r["country"], SPLIT_PERCENT)].append(r)
  return splits


def build_dataset(data_dir: str | None = None, seed: int = 0) -> pathlib.Path:
  def build():
    import countryinfo
    splits = split_records(build_records(knowledge_probe.country_capitals(), seed))
    return splits, {"source": f"countryinfo {getattr(countryinfo, '__version__', '?')}",
                    "few_shot_countries": [c for c, *_ in FEW_SHOT], "excluded": EXCLUDED}
  return cache.cached_dataset(DATASET, VERSION, build, root=data_dir, params={"seed": seed})


# -- prompts ----------------------------------------------------------------------------------------------

def _question(country: str) -> str:
  return f"What is the capital of {knowledge_probe.country_phrase(country)}?"


def gen_prompt(question: str, shots: int) -> str:
  """`shots` solved "Q: ...\\nA: <capital>" blocks, then "Q: <question>\\nA:"."""
  head = "".join(f"Q: {_question(c)}\nA: {capital}\n\n" for c, capital, _, _ in FEW_SHOT[:shots])
  return f"{head}Q: {question}\nA:"


def lettered_prompt(question: str, options: list[str] | tuple[str, ...], shots: int) -> str:
  """`shots` solved lettered questions (each followed by " <letter>"), then the lettered question."""
  head = ""
  for c, _, shot_options, gold in FEW_SHOT[:shots]:
    item = prompts.multiple_choice(_question(c), shot_options, gold, "lettered")
    head += f"{item.prompt} {item.target}\n\n"
  return head + prompts.multiple_choice(question, options, 0, "lettered").prompt


def _check_shots(task: str, shots: int) -> int:
  if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= MAX_SHOTS:
    raise ValueError(f"task {task!r}: shots must be an int in 0..{MAX_SHOTS}, got {shots!r}")
  return shots


def _options(r: Record) -> list[str]:
  options = r["choices"]
  if not isinstance(options, list) or len(options) != knowledge_probe.NUM_CHOICES:
    raise FieldError(f"field 'choices' must be a list of {knowledge_probe.NUM_CHOICES} strings, got "
                     f"{options!r:.80}")
  return options


def _letter(r: Record) -> str:
  gold = r["gold"]
  if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(_options(r)):
    raise FieldError(f"field 'gold' must be an index into the choices, got {gold!r}")
  return prompts.LETTERS[gold]


def _aliases(r: Record) -> list[str]:
  aliases = r.get("aliases", [])
  if not isinstance(aliases, list):
    raise FieldError(f"field 'aliases' must be a list of strings, got {aliases!r:.80}")
  return aliases


# -- tasks ------------------------------------------------------------------------------------------------

def _source(data_dir: str | None, seed: int):
  @functools.cache
  def path() -> pathlib.Path:
    return build_dataset(data_dir, seed)
  return lambda split: cache.read_split(path(), split)


@register_task(NAME_GEN)
def capitals_gen(shots: int = DEFAULT_SHOTS[NAME_GEN], data_dir: str | None = None, seed: int = 0) -> Task:
  """Capital-city questions answered by greedy generation; first line vs the capital (or an alias)."""
  _check_shots(NAME_GEN, shots)
  metrics = ("exact_match_norm", "exact_match")
  return Task(name=NAME_GEN, splits=tuple(s for s, _ in SPLIT_PERCENT), source=_source(data_dir, seed),
              prompt=lambda r: gen_prompt(field(r, "question"), shots), target=lambda r: field(r, "capital"),
              aliases=_aliases, metrics=metrics,
              generation={"metrics": metrics, "max_new_tokens": GEN_MAX_NEW_TOKENS, "stop": ("\n",)},
              description=f"capital-city questions, {shots}-shot, answered by generation (exact match)")


@register_task(NAME_LETTERED)
def capitals_lettered(shots: int = DEFAULT_SHOTS[NAME_LETTERED], data_dir: str | None = None,
                      seed: int = 0) -> Task:
  """Capital-city questions with options A-D answered by generating the letter (first token)."""
  _check_shots(NAME_LETTERED, shots)
  return Task(name=NAME_LETTERED, splits=tuple(s for s, _ in SPLIT_PERCENT), source=_source(data_dir, seed),
              prompt=lambda r: lettered_prompt(field(r, "question"), _options(r), shots), target=_letter,
              metrics=("exact_match",), generation={"metrics": ("exact_match",), "max_new_tokens": 1},
              description=f"capital-city questions, options A-D, {shots}-shot, answered by generating the letter")
