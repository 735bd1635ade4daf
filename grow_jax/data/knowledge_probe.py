"""Offline world-knowledge probe (stand-in for WinoGrande): "The capital of <country> is" -> 4 capitals.

Built from the `countryinfo` package's data: every country with exactly one named capital, each question with
three distractor capitals of other countries chosen by a seeded RNG, the gold position seeded too. Scored by
log-likelihood of each choice ("Paris", "Rome", ... after the delimiter " "), chance 25%; the same records
serve generation (target "Paris").

Kept out: territories without a capital or with several ("Kralendijk / Oranjestad / The Bottom"), names with
commas or parentheses ("Virgin Islands, British"), and items whose capital contains the country name
("Singapore", "Kuwait City": answerable by copying, so they do not probe knowledge).
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import random
from typing import Any, Iterable, Mapping

from grow_jax.data import cache
from grow_jax.data.tasks import Record, Task, field, register_task

NAME = "capitals"
VERSION = "v1"
NUM_CHOICES = 4
# Country names that read with "the" ("the capital of the Netherlands").
_THE_SUFFIXES = ("Islands", "Republic", "States", "Kingdom", "Emirates", "Netherlands", "Philippines",
                 "Maldives", "Comoros", "Seychelles", "Lands", "Territory", "Bahamas", "Gambia")


def country_capitals() -> list[tuple[str, str]]:
  """(country, capital) pairs from `countryinfo` (1.x `all_countries()`, or 0.x `CountryInfo().all()`)."""
  import countryinfo
  if hasattr(countryinfo, "all_countries"):
    infos: Iterable[Mapping[str, Any]] = (c.info() for c in countryinfo.all_countries())
  else:  # countryinfo 0.x
    infos = countryinfo.CountryInfo().all().values()
  return [(str(i.get("name") or ""), i.get("capital")) for i in infos]


def _clean(country: str, capital: Any) -> tuple[str, str] | None:
  if isinstance(capital, list):
    capital = capital[0] if len(capital) == 1 else None
  if not isinstance(capital, str):
    return None
  country, capital = " ".join(country.split()), " ".join(capital.split())
  if not country or not capital or any(c in country for c in ",()") or any(c in capital for c in "/,;()"):
    return None
  name, city = country.lower().removeprefix("the "), capital.lower()
  if name in city or city in name:
    return None
  return country, capital


def country_phrase(country: str) -> str:
  """The country as it reads after "The capital of": "the Netherlands", "the United States", "France"."""
  if country.lower().startswith("the "):
    return "the " + country[4:]
  if country.endswith(_THE_SUFFIXES) or country.startswith(("Republic of", "Democratic Republic", "Isle of",
                                                            "Federated States")):
    return "the " + country
  return country


def build_records(pairs: Iterable[tuple[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
  """Deterministic probe records (sorted by country) with seeded distractors and gold position."""
  clean = sorted({c for c in (_clean(country, capital) for country, capital in pairs) if c is not None})
  capitals = sorted({capital for _, capital in clean})
  if len(capitals) < NUM_CHOICES:
    raise ValueError(f"need at least {NUM_CHOICES} distinct capitals to build the probe, got {len(capitals)}")
  records = []
  for country, capital in clean:
    rng = random.Random(int.from_bytes(hashlib.sha1(f"{seed}:{country}".encode()).digest()[:8], "big"))
    distractors = rng.sample([c for c in capitals if c != capital], NUM_CHOICES - 1)
    gold = rng.randrange(NUM_CHOICES)
    choices = distractors[:gold] + [capital] + distractors[gold:]
    records.append({"id": country, "country": country, "context": f"The capital of {country_phrase(country)} is",
                    "choices": choices, "gold": gold})
  return records


def build_capitals_dataset(data_dir: str | None = None, seed: int = 0) -> pathlib.Path:
  """The cached probe dataset (split "test" only: a probe is never trained on)."""
  def build():
    import countryinfo
    records = build_records(country_capitals(), seed)
    return {"test": records}, {"source": f"countryinfo {getattr(countryinfo, '__version__', '?')}"}
  return cache.cached_dataset(NAME, VERSION, build, root=data_dir, params={"seed": seed})


def _choices(r: Record) -> list[str]:
  choices = r["choices"]
  if not isinstance(choices, list):
    raise ValueError(f"field 'choices' must be a list of strings, got {choices!r:.80}")
  return list(choices)


@register_task(NAME)
def capitals(data_dir: str | None = None, seed: int = 0) -> Task:
  """The capitals probe: prompt "The capital of France is", choices "Paris", ...; metric acc."""

  @functools.cache
  def path() -> pathlib.Path:
    return build_capitals_dataset(data_dir, seed)

  return Task(name=NAME, splits=("test",), source=lambda split: cache.read_split(path(), split),
              prompt=lambda r: field(r, "context"), target=lambda r: _choices(r)[r["gold"]],
              choices=_choices, gold=lambda r: r["gold"], metrics=("acc", "exact_match"),
              description="capital-city multiple choice from countryinfo (offline WinoGrande stand-in)")
