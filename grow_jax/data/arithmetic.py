"""Offline MathQA-like arithmetic word problems: five options A-E, integer answers, seeded generator.

Templates: add, sub, mul, div, percent_off, percent_of, ratio, speed, two_step. Each draws operands so the answer
is a positive integer; four distractors are near misses and typical mistakes (e.g. adding instead of
subtracting), distinct and positive; the gold position is random. Problems are unique by question text and
split train/validation/test 90/5/5 by a hash of the question, so splits never share a question.

One task serves both uses: style "lettered" (default, MathQA-like: options listed, target "C") or "cloze"
(choices "42", ...; generative target "42"). `arithmetic_cloze` is the cloze style under its own name (the trainer
names tasks without options).

For fine-tuning experiments prefer the cloze style (experiments/results/arithmetic_base.md): the lettered prompt
shows all five options, and as the two near misses cluster around the answer, "the option with the most close
neighbours" is right 60-65% of the time without reading the question; lettered examples are also ~66 Gemma
tokens long (65% exceed 64). Cloze scoring rates each number alone (no such cue) and fits in 46 tokens. The base
Gemma 3 270M is at chance on both (validation: lettered 0.204, cloze 0.206; greedy cloze answers 0.000).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import random
from typing import Any, Callable

from grow_jax.data import cache, prompts
from grow_jax.data.tasks import FieldError, Record, Task, field, register_task

NAME = "arithmetic"
NAME_CLOZE = "arithmetic_cloze"
VERSION = "v1"
NUM_OPTIONS = 5

_NAMES = ("Ava", "Ben", "Chloe", "Daniel", "Emma", "Farid", "Grace", "Hiro", "Isabel", "Jonas", "Keira", "Liam",
          "Maya", "Noah", "Olivia", "Priya", "Quentin", "Rosa", "Samir", "Tara")
_THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "coins")
_CONTAINERS = ("box", "basket", "jar", "crate", "bag")


def _plural(noun: str) -> str:
  return noun + ("es" if noun.endswith(("x", "s", "ch", "sh")) else "s")


def _add(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  a, b = rng.randint(12, 400), rng.randint(5, 300)
  name, things = rng.choice(_NAMES), rng.choice(_THINGS)
  q = f"{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?"
  return q, a + b, {"a": a, "b": b}, [abs(a - b), a + b + 10]


def _sub(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  a = rng.randint(30, 500)
  b = rng.randint(5, a - 5)
  things, container, name = rng.choice(_THINGS), rng.choice(_CONTAINERS), rng.choice(_NAMES)
  q = f"A {container} holds {a} {things}. {name} takes out {b} of them. How many {things} are left in the {container}?"
  return q, a - b, {"a": a, "b": b}, [a + b, a - b + 10]


def _mul(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  a, b = rng.randint(3, 40), rng.randint(3, 30)
  things, container = rng.choice(_THINGS), rng.choice(_CONTAINERS)
  q = f"Each {container} contains {a} {things}. How many {things} are there in {b} {_plural(container)}?"
  return q, a * b, {"a": a, "b": b}, [a + b, a * (b - 1)]


def _div(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  each, b = rng.randint(3, 40), rng.randint(2, 15)
  total = each * b
  name, things = rng.choice(_NAMES), rng.choice(_THINGS)
  q = f"{name} shares {total} {things} equally among {b} friends. How many {things} does each friend get?"
  return q, each, {"total": total, "b": b}, [total - b, each + b]


def _percent_off(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  price, r = 20 * rng.randint(2, 50), 5 * rng.randint(1, 15)   # price multiple of 20 and r multiple of 5
  item = rng.choice(("jacket", "lamp", "bicycle", "chair", "backpack", "printer"))
  q = f"A {item} costs ${price}. It is on sale for {r}% off. What is the sale price in dollars?"
  return q, price * (100 - r) // 100, {"price": price, "r": r}, [price * r // 100, price - r]


def _percent_of(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  r = rng.choice((10, 20, 25, 30, 40, 50, 60, 75, 80))
  n = 20 * rng.randint(2, 60)            # r% of a multiple of 20 is an integer for these r
  activity = rng.choice(("play chess", "walk to school", "play an instrument", "read every day"))
  q = f"There are {n} students in a school and {r}% of them {activity}. How many students {activity}?"
  return q, n * r // 100, {"n": n, "r": r}, [n - n * r // 100, n * r // 100 + r]


def _ratio(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  x, y = rng.choice(((1, 2), (2, 3), (3, 4), (3, 5), (2, 5), (4, 5), (5, 7), (1, 3), (3, 7)))
  if rng.random() < 0.5:
    x, y = y, x
  k = rng.randint(2, 30)
  total = k * (x + y)
  q = (f"The ratio of red marbles to blue marbles in a bag is {x} : {y}. There are {total} marbles in total. "
       "How many blue marbles are there?")
  return q, k * y, {"x": x, "y": y, "total": total}, [k * x, total - k]


def _speed(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  s, h = 5 * rng.randint(6, 30), rng.randint(2, 9)
  vehicle = rng.choice(("train", "bus", "car", "truck"))
  q = f"A {vehicle} travels at {s} km per hour for {h} hours. How many kilometers does it travel?"
  return q, s * h, {"s": s, "h": h}, [s + h, s * (h + 1)]


def _two_step(rng: random.Random) -> tuple[str, int, dict[str, int], list[int]]:
  a, b = rng.randint(2, 12), rng.randint(4, 25)
  c = rng.randint(1, a * b - 1)
  name, things = rng.choice(_NAMES), rng.choice(_THINGS)
  q = (f"{name} buys {a} packs of {things} with {b} {things} in each pack and gives away {c} {things}. "
       f"How many {things} does {name} have left?")
  return q, a * b - c, {"a": a, "b": b, "c": c}, [a * b + c, a + b - c]


TEMPLATES: dict[str, Callable[[random.Random], tuple[str, int, dict[str, int], list[int]]]] = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "percent_off": _percent_off,
    "percent_of": _percent_of, "ratio": _ratio, "speed": _speed, "two_step": _two_step,
}


def _distractors(rng: random.Random, answer: int, mistakes: list[int]) -> list[int]:
  """Four distinct positive wrong values: typical mistakes first, then near misses."""
  pool = [m for m in dict.fromkeys(mistakes) if m > 0 and m != answer]
  rng.shuffle(pool)
  chosen = pool[:2]
  spread = max(3, answer // 10)
  near = [answer + d for d in range(-spread, spread + 1) if d and answer + d > 0]
  rng.shuffle(near)
  for v in near:
    if len(chosen) == NUM_OPTIONS - 1:
      break
    if v not in chosen:
      chosen.append(v)
  if len(chosen) != NUM_OPTIONS - 1:
    raise AssertionError(f"could not find {NUM_OPTIONS - 1} distractors for answer {answer}")
  return chosen


def generate_problem(rng: random.Random, template: str | None = None) -> dict[str, Any]:
  """One problem record: question, options (5 strings), gold, answer, template, operands."""
  template = template or rng.choice(sorted(TEMPLATES))
  question, answer, operands, mistakes = TEMPLATES[template](rng)
  wrong = _distractors(rng, answer, mistakes)
  gold = rng.randrange(NUM_OPTIONS)
  values = wrong[:gold] + [answer] + wrong[gold:]
  return {"question": question, "options": [str(v) for v in values], "gold": gold, "answer": answer,
          "template": template, "operands": operands}


def generate_problems(n: int, seed: int = 0) -> list[dict[str, Any]]:
  """`n` problems unique by question text, deterministic in `seed`, ids "<seed>-<k>"."""
  rng = random.Random(seed)
  seen: set[str] = set()
  out = []
  for _ in range(50 * n + 100):
    if len(out) == n:
      break
    p = generate_problem(rng)
    if p["question"] not in seen:
      seen.add(p["question"])
      out.append({"id": f"{seed}-{len(out)}", **p})
  if len(out) < n:
    raise ValueError(f"could only generate {len(out)} unique problems of {n} requested (seed {seed})")
  return out


def build_arithmetic_dataset(data_dir: str | None = None, num_problems: int = 10_000, seed: int = 0
                             ) -> pathlib.Path:
  """The cached problems, split 90/5/5 by a hash of the question."""
  def build():
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in cache.DEFAULT_SPLIT_PERCENT}
    for p in generate_problems(num_problems, seed):
      splits[cache.hash_split(p["question"])].append(p)
    return splits, {"templates": sorted(TEMPLATES)}
  return cache.cached_dataset(NAME, VERSION, build, root=data_dir,
                              params={"num_problems": num_problems, "seed": seed})


def _item(r: Record, style: str) -> prompts.MultipleChoice:
  options = r["options"]
  if not isinstance(options, list) or len(options) != NUM_OPTIONS:
    raise FieldError(f"field 'options' must be a list of {NUM_OPTIONS} strings, got {options!r:.80}")
  return prompts.multiple_choice(field(r, "question"), options, r["gold"], style)


@register_task(NAME)
def arithmetic(style: str = "lettered", data_dir: str | None = None, num_problems: int = 10_000,
               seed: int = 0) -> Task:
  """Arithmetic word problems, 5 options; `style` "lettered" (target "C") or "cloze" (target "42")."""
  prompts.check_style(NAME, style)

  @functools.cache
  def path() -> pathlib.Path:
    return build_arithmetic_dataset(data_dir, num_problems, seed)

  return Task(name=NAME, splits=("train", "validation", "test"),
              source=lambda split: cache.read_split(path(), split), prompt=lambda r: _item(r, style).prompt,
              target=lambda r: _item(r, style).target, choices=lambda r: _item(r, style).choices,
              gold=lambda r: _item(r, style).gold, metrics=("acc", "exact_match"),
              description="generated arithmetic word problems, 5 options (offline MathQA stand-in)")


@register_task(NAME_CLOZE)
def arithmetic_cloze(data_dir: str | None = None, num_problems: int = 10_000, seed: int = 0) -> Task:
  """`arithmetic` with style "cloze" (prompt "Question: ...\nAnswer:", choices the five numbers, target "42")."""
  return dataclasses.replace(arithmetic("cloze", data_dir, num_problems, seed), name=NAME_CLOZE,
                             description="generated arithmetic word problems, cloze: the answer's number")
