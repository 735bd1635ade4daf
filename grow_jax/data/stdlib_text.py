"""Offline general English text: prose paragraphs from Python standard-library docstrings.

A held-out corpus for perplexity and for the KL divergence between the fine-tuned and the base model's
next-token distributions ("how much did general language modelling move"). Each record is one paragraph:
prompt "", target_delimiter "" and target = the paragraph (so every token is scored).

Docstrings of a fixed list of stdlib modules and their public functions, classes and methods are split into
paragraphs; only English prose is kept: starts with a capital, ends a sentence, enough words, mostly letters,
few code-like words, no doctest/indented/bulleted/directive lines. Deduplicated, then split 50/50 into
validation and test by a hash of the text. Docstrings change between Python versions: the dataset is built
once and cached, and the manifest records the Python version.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pathlib
import re
import sys
from typing import Any, Iterator, Sequence

from grow_jax.data import cache
from grow_jax.data.tasks import Task, field, register_task

NAME = "stdlib_text"
VERSION = "v1"

MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "email.message", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "importlib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "logging.handlers", "lzma", "mailbox", "mimetypes",
    "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
    "pkgutil", "platform", "poplib", "pprint", "profile", "pstats", "queue", "quopri", "random", "re",
    "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest",
    "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zipimport",
)

_SPLITS = (("validation", 50), ("test", 50))
_CODE_CHARS = re.compile(r"[()\[\]{}=<>_`*|\\#@$]")
_BAD_LINE = re.compile(r"^(?:>>>|\.\.\.|\.\. |:\w+|[-*+•] |\d+[.)] |\$ )")


@dataclasses.dataclass(frozen=True)
class ProseFilter:
  """What counts as an English prose paragraph."""

  min_words: int = 12
  max_chars: int = 1200
  min_letter_fraction: float = 0.8   # letters and spaces among all characters
  max_code_word_fraction: float = 0.1  # words with code characters (_ ( ) = ` ...)


def docstrings(module_names: Sequence[str] = MODULES) -> Iterator[tuple[str, str]]:
  """(qualified name, cleaned docstring) for each module and its public functions, classes and methods,
  in a fixed order (modules as listed, members sorted by name). Missing modules are skipped."""
  for module_name in module_names:
    try:
      module = importlib.import_module(module_name)
    except ImportError:
      continue
    yield from _walk(module, module_name, module_name, depth=0)


def _walk(obj: Any, qualname: str, module_name: str, depth: int) -> Iterator[tuple[str, str]]:
  doc = inspect.getdoc(obj)
  if doc and (depth == 0 or getattr(obj, "__doc__", None)):
    yield qualname, doc
  if depth >= 2:
    return
  for name, member in sorted(vars(obj).items(), key=lambda kv: kv[0]) if hasattr(obj, "__dict__") else ():
    if name.startswith("_"):
      continue
    member = getattr(member, "__func__", member)   # staticmethod / classmethod
    if not (inspect.isclass(member) or inspect.isfunction(member)):
      continue
    if getattr(member, "__module__", None) != module_name:
      continue   # re-exported from elsewhere: visited (or not) in its own module
    yield from _walk(member, f"{qualname}.{name}", module_name, depth + 1 if inspect.isclass(member) else 2)


def prose_paragraphs(doc: str, config: ProseFilter = ProseFilter()) -> list[str]:
  """The paragraphs of a cleaned docstring that are English prose, whitespace-normalised."""
  out = []
  for block in re.split(r"\n\s*\n", doc):
    lines = block.split("\n")
    if any(line[:1].isspace() or _BAD_LINE.match(line) for line in lines):
      continue   # indented code, doctest, directive, field list, bullet
    text = " ".join(block.split())
    if is_prose(text, config):
      out.append(text)
  return out


def is_prose(text: str, config: ProseFilter = ProseFilter()) -> bool:
  """Heuristic: a capitalised, sentence-final, mostly-letters paragraph with few code-like words."""
  words = text.split()
  if len(words) < config.min_words or len(text) > config.max_chars:
    return False
  if not text[0].isupper() or not re.search(r"[.!?][\"')]?$", text) or text.endswith(("::", "...")):
    return False
  if sum(c.isalpha() or c == " " for c in text) < config.min_letter_fraction * len(text):
    return False
  return sum(bool(_CODE_CHARS.search(w)) for w in words) <= config.max_code_word_fraction * len(words)


def build_records(module_names: Sequence[str] = MODULES, config: ProseFilter = ProseFilter()
                  ) -> dict[str, list[dict[str, Any]]]:
  """Deduplicated prose paragraphs by split (validation/test 50/50 by hash), in docstring order."""
  seen: set[str] = set()
  splits: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in _SPLITS}
  for qualname, doc in docstrings(module_names):
    for i, text in enumerate(prose_paragraphs(doc, config)):
      if text in seen:
        continue
      seen.add(text)
      splits[cache.hash_split(text, _SPLITS)].append({"id": f"{qualname}#{i}", "text": text})
  return splits


def build_stdlib_text_dataset(data_dir: str | None = None) -> pathlib.Path:
  """The cached corpus (built from this interpreter's stdlib on first use)."""
  def build():
    return build_records(), {"python": sys.version.split()[0], "modules": list(MODULES),
                             "filter": dataclasses.asdict(ProseFilter())}
  return cache.cached_dataset(NAME, VERSION, build, root=data_dir)


@register_task(NAME)
def stdlib_text(data_dir: str | None = None) -> Task:
  """General English prose for perplexity/KL: prompt "", target = the paragraph (every token scored)."""

  @functools.cache
  def path() -> pathlib.Path:
    return build_stdlib_text_dataset(data_dir)

  return Task(name=NAME, splits=tuple(name for name, _ in _SPLITS),
              source=lambda split: cache.read_split(path(), split), prompt=lambda r: "",
              target=lambda r: field(r, "text"), target_delimiter="", metrics=("perplexity", "kl"),
              description="English prose paragraphs from Python stdlib docstrings (offline)")
