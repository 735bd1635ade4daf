"""capitals_gen's answers classified: how much of a fall in its exact match is the model answering in another
language ('Londres' for London) rather than not knowing.

Each answer (the first line of the completion, as the probe scores it) falls in one class, checked in this order
(`classify`); "normalised" is `text_metrics.normalize_answer` (accents, case, punctuation folded), as the probe's
headline metric exact_match_norm:

  correct          normalised, equal to the capital or one of its accepted aliases (exactly exact_match_norm)
  format_lost      empty; or the right city inside other text ("Paris, France", "La capitale est Paris"); or not
                   a city name: a country's name, more than MAX_NAME_WORDS words, digits or sentence punctuation,
                   lower-case words (runaway text, a sentence)
  other_language   the right city under another name: one of EXONYMS of the capital or an alias ('Londres',
                   'Lisboa', 'Varsovie', 'Pékin'); spelling variants that only differ in accents or case are already
                   correct
  wrong_city       any other city-like name: another country's capital (countryinfo, the probe's aliases, their
                   exonyms) or an unlisted name of at most MAX_NAME_WORDS capitalised words

EXONYMS lists, for the probe's capitals, their names in French, Spanish, German, Italian and Portuguese (and local
names) where these differ from the English one after normalisation, from standard references (the cities'
Wikipedia names in those languages), not from any model's outputs. A name missing from it is counted as a wrong
city: the breakdown's other_language share is a lower bound.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Mapping, Sequence

from grow_jax.evaluation.text_metrics import normalize_answer

CLASSES = ("correct", "other_language", "wrong_city", "format_lost")
MAX_NAME_WORDS = 4
# Lower-case words a city name may contain ("Port-au-Prince" is one word; "Andorra la Vella", "Port of Spain").
_PARTICLES = {"de", "la", "le", "les", "du", "des", "di", "da", "do", "dos", "of", "the", "al", "el", "es", "y",
              "au", "aux", "en", "sur", "am", "an", "der", "del", "et"}
_NAME_CHARS = re.compile(r"^[^\W\d_](?:[^\W\d_]|['’.\-])*$")

EXONYMS: dict[str, tuple[str, ...]] = {
    "Abu Dhabi": ("Abou Dabi", "Abu Dabi"),
    "Addis Ababa": ("Addis-Abeba", "Adís Abeba"),
    "Algiers": ("Alger", "Argel", "Algier", "Algeri"),
    "Antananarivo": ("Tananarive",),
    "Ashgabat": ("Achgabat", "Aşgabat", "Aschgabat", "Asjabad"),
    "Athens": ("Athènes", "Atenas", "Athen", "Atene", "Athina"),
    "Baghdad": ("Bagdad",),
    "Baku": ("Bakou",),
    "Beijing": ("Pékin", "Pekín", "Peking", "Pechino", "Pequim"),
    "Beirut": ("Beyrouth", "Beirute"),
    "Belgrade": ("Belgrado", "Belgrad", "Beograd"),
    "Bern": ("Berne", "Berna"),
    "Bishkek": ("Bichkek", "Biskek", "Bischkek"),
    "Brussels": ("Bruxelles", "Bruselas", "Brüssel", "Bruxelas", "Brussel"),
    "Bucharest": ("Bucarest", "Bukarest", "Bucareste", "București"),
    "Cape Town": ("Le Cap", "Ciudad del Cabo", "Kapstadt", "Città del Capo", "Cidade do Cabo", "Kaapstad"),
    "Chișinău": ("Kichinev", "Kischinau"),
    "Copenhagen": ("Copenhague", "Kopenhagen", "Copenaghen", "København"),
    "Damascus": ("Damas", "Damaskus", "Damasco"),
    "Dhaka": ("Dacca", "Daca", "Dakka"),
    "Dushanbe": ("Douchanbé", "Duschanbe", "Dusambé"),
    "Edinburgh": ("Édimbourg", "Edimburgo", "Edimburg"),
    "Havana": ("La Havane", "La Habana", "Havanna", "L'Avana", "Havane"),
    "Helsinki": ("Helsingfors",),
    "Jakarta": ("Djakarta", "Yakarta", "Giacarta", "Jacarta"),
    "Jerusalem": ("Jerusalén", "Gerusalemme"),
    "Kabul": ("Kaboul", "Cabul"),
    "Kathmandu": ("Katmandou", "Katmandú", "Katmandu", "Catmandu"),
    "Kyiv": ("Kiew", "Kijów", "Kiïv", "Kyjiw"),
    "Lisbon": ("Lisbonne", "Lisboa", "Lissabon", "Lisbona"),
    "Ljubljana": ("Lubiana", "Liubliana", "Laibach"),
    "London": ("Londres", "Londra", "Londen"),
    "Manila": ("Manille", "Manilla"),
    "Mogadishu": ("Mogadiscio", "Mogadischu"),
    "Moscow": ("Moscou", "Moscú", "Moskau", "Mosca", "Moscovo", "Moskva"),
    "Muscat": ("Mascate", "Maskat", "Mascat"),
    "New Delhi": ("Nueva Delhi", "Nuova Delhi", "Nova Deli", "Neu-Delhi", "Nouvelle-Delhi"),
    "Nicosia": ("Nicosie", "Nikosia", "Lefkosia"),
    "Paris": ("Parigi",),
    "Port of Spain": ("Port-d'Espagne", "Puerto España"),
    "Prague": ("Praga", "Prag", "Praha"),
    "Pyongyang": ("Pionyang", "Pjöngjang"),
    "Riyadh": ("Riyad", "Riad", "Riade"),
    "Seoul": ("Seúl", "Seul"),
    "Stockholm": ("Estocolmo", "Stoccolma"),
    "Taipei": ("Taipeh", "Taipé"),
    "Tashkent": ("Tachkent", "Taschkent", "Taskent"),
    "Tbilisi": ("Tbilissi", "Tiflis"),
    "Tehran": ("Téhéran", "Teherán", "Teheran", "Teerã"),
    "The Hague": ("La Haye", "La Haya", "Den Haag", "L'Aia", "Haia"),
    "Ulaanbaatar": ("Oulan-Bator", "Ulán Bator", "Ulan-Bator"),
    "Valletta": ("La Valette", "La Valeta", "La Valletta", "Valeta"),
    "Vienna": ("Vienne", "Viena", "Wien"),
    "Vilnius": ("Vilna", "Wilna"),
    "Warsaw": ("Varsovie", "Varsovia", "Warschau", "Varsavia", "Varsóvia", "Warszawa"),
    "Yerevan": ("Erevan", "Ereván", "Eriwan"),
}


def _norm_set(names: Iterable[str]) -> set[str]:
  return {n for n in (normalize_answer(x) for x in names) if n}


@functools.cache
def _exonyms() -> dict[str, frozenset[str]]:
  """normalised capital -> its normalised other names."""
  return {normalize_answer(city): frozenset(_norm_set(names)) for city, names in EXONYMS.items()}


@functools.cache
def known_names() -> tuple[frozenset[str], frozenset[str]]:
  """(normalised city names: every country's capital in countryinfo, the probe's aliases and EXONYMS; normalised
  country names)."""
  from grow_jax.data import capital_probes, knowledge_probe
  cities, countries = set(), set()
  for country, capital in knowledge_probe.country_capitals():
    countries |= _norm_set([country])
    cities |= _norm_set(capital if isinstance(capital, list) else [capital] if isinstance(capital, str) else [])
  cities |= _norm_set(a for aliases in capital_probes.ALIASES.values() for a in aliases)
  cities |= _norm_set([*EXONYMS, *(n for names in EXONYMS.values() for n in names)])
  return frozenset(cities), frozenset(countries - cities)


def is_name_like(text: str) -> bool:
  """At most MAX_NAME_WORDS words, each a capitalised name word or a particle ('of', 'la', ...), letters with
  hyphens, apostrophes and abbreviation dots only ("St. George's", "Port-au-Prince", "Andorra la Vella")."""
  words = text.strip().removesuffix(".").split()
  if not words or len(words) > MAX_NAME_WORDS:
    return False
  for i, word in enumerate(words):
    if not _NAME_CHARS.match(word):
      return False
    if word[0].islower() and not (i > 0 and word.lower() in _PARTICLES) and not re.match(r"^[dl]['’]", word):
      return False
  return True


def classify(prediction: str, references: Sequence[str], *,
             known: tuple[frozenset[str], frozenset[str]] | None = None) -> str:
  """The class (one of CLASSES) of one answer to a question whose accepted answers are `references`."""
  cities, countries = known if known is not None else known_names()
  answer = normalize_answer(prediction)
  right = _norm_set(references)
  if answer in right:
    return "correct"
  if not answer:
    return "format_lost"
  other_names = set().union(*(_exonyms().get(r, frozenset()) for r in right))
  if answer in other_names:
    return "other_language"
  padded = f" {answer} "
  if any(f" {name} " in padded for name in right | other_names):
    return "format_lost"                     # the right city, inside other text
  if answer in countries:
    return "format_lost"
  if answer in cities or is_name_like(prediction):
    return "wrong_city"
  return "format_lost"


def item_references(item: Mapping[str, Any]) -> list[str]:
  """A generation item's accepted answers: its reference and aliases (grow_jax/evaluation/items.py)."""
  return [item["reference"], *item.get("aliases", [])]


def breakdown(items: Sequence[Mapping[str, Any]], *,
              known: tuple[frozenset[str], frozenset[str]] | None = None) -> dict[str, int]:
  """{class: count} over capitals_gen generation items (every class present, in CLASSES order)."""
  counts = dict.fromkeys(CLASSES, 0)
  for item in items:
    counts[classify(item["prediction"], item_references(item), known=known)] += 1
  return counts
