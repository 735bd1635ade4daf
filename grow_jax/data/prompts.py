"""Prompt formats shared by tasks: translation and multiple choice.

Our reading: the paper publishes no prompts. These are plain zero-shot formats in the style of
lm-evaluation-harness ("Question: ...\\nAnswer:"), one per kind of task, so that every task family reads the same.
Choices carry no leading space: the task's target delimiter (" ") joins prompt and answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Sequence

STYLES = ("cloze", "lettered")
LETTERS = "ABCDEFGHIJ"


def translation_prompt(source: str, source_language: str = "English", target_language: str = "French") -> str:
  """"Translate English to French.\\nEnglish: <source>\\nFrench:" (the target is " <translation>")."""
  return f"Translate {source_language} to {target_language}.\n{source_language}: {source}\n{target_language}:"


@dataclasses.dataclass(frozen=True)
class MultipleChoice:
  """A formatted multiple-choice item: `target == choices[gold]`."""

  prompt: str
  choices: tuple[str, ...]
  gold: int

  @property
  def target(self) -> str:
    return self.choices[self.gold]


def multiple_choice(question: str, options: Sequence[str], gold: int, style: str, *,
                    preamble: str = "") -> MultipleChoice:
  """Formats a question with `options` (answer `options[gold]`).

  style:
    "cloze": prompt "Question: <q>\\nAnswer:", choices the options' texts (lm-eval-harness style; the model
      never sees the other options; scored by log-likelihood of each option's text).
    "lettered": the options are listed as "A. <option>" lines; choices "A", "B", ... (the target is a
      letter, so generative exact match is well defined).
  preamble: text placed before "Question:" (e.g. SciQ's supporting paragraph).
  """
  if style not in STYLES:
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")
  if not 2 <= len(options) <= len(LETTERS):
    raise ValueError(f"needs 2..{len(LETTERS)} options, got {len(options)}")
  head = f"{preamble.strip()}\n" if preamble.strip() else ""
  if style == "cloze":
    return MultipleChoice(f"{head}Question: {question}\nAnswer:", tuple(options), gold)
  listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
  return MultipleChoice(f"{head}Question: {question}\n{listed}\nAnswer:",
                        tuple(LETTERS[:len(options)]), gold)


def check_style(task: str, style: str) -> str:
  """Returns `style` or raises ValueError naming the task and the valid styles."""
  if style not in STYLES:
    raise ValueError(f"task {task!r}: style must be one of {STYLES}, got {style!r}")
  return style


def seeded_order(key: str, n: int) -> list[int]:
  """A permutation of range(n) fixed by `key` (stable across runs, machines and Python versions)."""
  seed = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
  order = list(range(n))
  random.Random(seed).shuffle(order)
  return order
