"""Offline English->French pairs from gettext catalogs: reader, filters, dedupe, splits, cached dataset.

Every catalog and wheel here is written by the test: no network. The real build from PyPI wheels is
`python -m grow_jax.data.gettext_catalogs` (run by hand).
"""

import collections
import json
import zipfile

import pytest

from grow_jax.data import cache, gettext_catalogs as gc
from grow_jax.data import get_task
from grow_jax.errors import CacheError

CATALOG = r'''# French translation of a test application.
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Language: fr\n"

#: app/views.py:10
msgid "Save changes"
msgstr "Enregistrer les modifications"

#: a multi-line msgid and msgstr are joined; escapes are decoded
msgid ""
"This is a long help text that "
"spans two lines."
msgstr ""
"Ceci est un long texte d'aide qui "
"s'étend sur deux lignes."

msgid "Say \"hello\" to\nthe world"
msgstr "Dites « bonjour »\nau monde"

msgid "Hello %(name)s, welcome back"
msgstr "Bonjour %(name)s, bon retour"

msgid "Delete %(count)s items"
msgstr "Supprimer les éléments"

msgid "%(name)s"
msgstr "%(name)s"

msgid "{0} ({1})"
msgstr "{0} ({1})"

msgid "<b>%s</b>"
msgstr "<b>%s</b>"

msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d fichier"
msgstr[1] "%d fichiers"

#, fuzzy
msgid "Payment received"
msgstr "Paiement envoyé"

msgid "Not translated yet"
msgstr ""

msgid "Email"
msgstr "Email"

msgctxt "menu"
msgid "Open the file"
msgstr "Ouvrir le fichier"

msgid "Name:"
msgstr "Nom\u00a0:"

#~ msgid "An obsolete string"
#~ msgstr "Une chaîne obsolète"
'''.replace("\\u00a0", "\u00a0")

KEPT = [
    ("Save changes", "Enregistrer les modifications"),
    ("This is a long help text that spans two lines.", "Ceci est un long texte d'aide qui s'étend sur deux lignes."),
    ('Say "hello" to the world', "Dites « bonjour » au monde"),
    ("Hello %(name)s, welcome back", "Bonjour %(name)s, bon retour"),
    ("Open the file", "Ouvrir le fichier"),
    ("Name:", "Nom :"),
]


def test_reader_decodes_escapes_and_joins_multiline_strings():
  entries = {e.msgid: e for e in gc.read_catalog(CATALOG, "test.po")}
  assert entries['Say "hello" to\nthe world'].msgstr == "Dites « bonjour »\nau monde"
  assert entries["This is a long help text that spans two lines."].msgstr.endswith("sur deux lignes.")
  assert entries["%d file"].msgid_plural == "%d files"
  assert "fuzzy" in entries["Payment received"].flags
  assert entries["Open the file"].msgctxt == "menu"
  assert entries["An obsolete string"].obsolete


def test_filter_keeps_clean_pairs_and_counts_every_drop_reason():
  stats = collections.Counter()
  pairs = gc.catalog_pairs(gc.read_catalog(CATALOG, "test.po"), "test.po", stats)
  assert [(p.en, p.fr) for p in pairs] == KEPT
  assert all(p.origin == "test.po" for p in pairs)
  assert stats == {"kept": 6, "placeholder_mismatch": 1, "only_placeholders_or_markup": 3,
                   "plural": 1, "fuzzy": 1, "untranslated": 1, "copy_of_source": 1, "obsolete": 1}


@pytest.mark.parametrize("en, fr, reason", [
    ("Yes", "Oui", "too_short"),
    ("Go", "Aller", "only_placeholders_or_markup"),   # fewer than 3 letters
    ("A" * 30 + " word", "Un mot", "length_ratio"),
    ("Long text " * 50, "Texte long " * 50, "too_long"),
    ("Page {page} of {total}", "Page {page} sur {total}", None),
    ("Page {page} of {total}", "Page {page}", "placeholder_mismatch"),
    ("&nbsp;<br/>", "&nbsp;<br/>", "only_placeholders_or_markup"),
    ("{{ count }} items", "{{ count }} éléments", None),
])
def test_text_filters(en, fr, reason):
  catalog = f'msgid "{en}"\nmsgstr "{fr}"\n'
  stats = collections.Counter()
  pairs = gc.catalog_pairs(gc.read_catalog(catalog, "t.po"), "t.po", stats)
  assert stats == {reason or "kept": 1}
  assert len(pairs) == (reason is None)


@pytest.mark.parametrize("text, message", [
    ('msgid "unterminated\nmsgstr "x"\n', r"catalog bad\.po line 1: not a valid \.po line"),
    ('msgid "a"\nmsgstr "b"\nthis is not po\n', r"catalog bad\.po line 3: not a valid \.po line: 'this is not po'"),
    ('msgid "a"\nmsgstr "b"\nmsgstr "c"\n', r"catalog bad\.po: Syntax error"),
    ("# only a comment\n", r"catalog bad\.po: no entries"),
])
def test_malformed_catalog_names_the_catalog_and_line(text, message):
  with pytest.raises(gc.CatalogError, match=message):
    gc.read_catalog(text, "bad.po")


def test_bytes_are_decoded_with_the_declared_charset():
  latin1 = 'msgid ""\nmsgstr "Content-Type: text/plain; charset=ISO-8859-1\\n"\n\nmsgid "Summer"\nmsgstr "Été"\n'
  [entry] = gc.read_catalog(latin1.encode("latin-1"), "l.po")
  assert entry.msgstr == "Été"
  with pytest.raises(gc.CatalogError, match=r"catalog u\.po: cannot decode as 'utf-8'"):
    gc.read_catalog(b'msgid "Summer"\nmsgstr "\xc9t\xe9"\n', "u.po")


def test_dedupe_keeps_the_most_frequent_translation_per_source():
  pairs = [gc.Pair("Cancel", "Annuler", "a"), gc.Pair("Cancel", "Abandonner", "b"),
           gc.Pair("Cancel", "Annuler", "c"), gc.Pair("Add item", "Ajouter", "b"),
           gc.Pair("Add item", "Ajouter un élément", "a")]
  assert gc.dedupe_pairs(pairs) == [gc.Pair("Add item", "Ajouter", "a b"), gc.Pair("Cancel", "Annuler", "a b c")]


def test_hash_split_is_deterministic_and_roughly_90_5_5():
  texts = [f"sentence number {i}" for i in range(4000)]
  splits = [cache.hash_split(t) for t in texts]
  assert splits == [cache.hash_split(t) for t in texts]
  counts = collections.Counter(splits)
  assert 0.87 < counts["train"] / 4000 < 0.93 and 0.03 < counts["test"] / 4000 < 0.07


def make_wheel(directory, name="fakepkg", version="1.0"):
  """A wheel-shaped zip with French catalogs where real packages put them (and some to ignore)."""
  path = directory / f"{name}-{version}-py3-none-any.whl"
  other = 'msgid "Welcome to the site"\nmsgstr "Bienvenue sur le site"\n'
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{name}/locale/fr/LC_MESSAGES/django.po", CATALOG)
    z.writestr(f"{name}/locale/fr_FR/LC_MESSAGES/djangojs.po", other)
    z.writestr(f"{name}/ir/locale/fr.po", 'msgid "Save changes"\nmsgstr "Sauvegarder"\n')
    z.writestr(f"{name}/locale/fr_CA/LC_MESSAGES/django.po", 'msgid "Cart items"\nmsgstr "Panier"\n')
    z.writestr(f"{name}/locale/de/LC_MESSAGES/django.po", 'msgid "Save changes"\nmsgstr "Speichern"\n')
    z.writestr(f"{name}/locale/fr/LC_MESSAGES/django.mo", b"\x00")
  return path


def test_wheel_catalogs_finds_french_catalogs_only(tmp_path):
  found = [origin for origin, _ in gc.wheel_catalogs(make_wheel(tmp_path), "fakepkg")]
  assert found == ["fakepkg:fakepkg/ir/locale/fr.po", "fakepkg:fakepkg/locale/fr/LC_MESSAGES/django.po",
                   "fakepkg:fakepkg/locale/fr_FR/LC_MESSAGES/djangojs.po"]


def test_dataset_from_a_wheel_is_cached_atomically_and_served_by_the_task(tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  make_wheel(wheels)
  packages = [("fakepkg", "1.0")]
  path = gc.build_gettext_dataset(tmp_path / "data", packages, wheel_dir=wheels)   # reuses the wheel: no pip
  manifest = cache.read_manifest(path)
  assert manifest["unique_pairs"] == 7 == sum(manifest["counts"].values())
  assert manifest["entries"]["duplicate_source"] == 1    # "Save changes" is in two catalogs
  assert manifest["params"]["packages"] == [["fakepkg", "1.0"]]
  assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [path.name], "no temporary leftovers"

  task = get_task("gettext_en_fr", data_dir=str(tmp_path / "data"), packages=packages)
  examples = [e for s in task.splits for e in task.examples(s)]
  by_source = {e.prompt.split("English: ")[1].removesuffix("\nFrench:"): e.target for e in examples}
  assert by_source["Welcome to the site"] == "Bienvenue sur le site"
  assert by_source["Save changes"] in ("Enregistrer les modifications", "Sauvegarder")
  assert set(by_source) == {en for en, _ in KEPT} | {"Welcome to the site"}
  for split in task.splits:
    assert all(cache.hash_split(json.loads(line)["translation"]["en"]) == split
               for line in (path / f"{split}.jsonl").read_text().splitlines())


def test_cached_dataset_is_not_rebuilt(tmp_path):
  catalogs = [("a.po", 'msgid "Good morning"\nmsgstr "Bonjour"\n')]
  path = gc.build_gettext_dataset(tmp_path, catalogs=catalogs)
  stamp = (path / "manifest.json").stat().st_mtime_ns
  assert gc.build_gettext_dataset(tmp_path, catalogs=catalogs) == path
  assert (path / "manifest.json").stat().st_mtime_ns == stamp
  other = gc.build_gettext_dataset(tmp_path, catalogs=[("a.po", 'msgid "Good night"\nmsgstr "Bonne nuit"\n')])
  assert other != path, "different catalogs get their own cache entry"


def test_malformed_catalog_stops_the_build_and_writes_nothing(tmp_path):
  with pytest.raises(gc.CatalogError, match=r"catalog broken\.po line 2"):
    gc.build_gettext_dataset(tmp_path, catalogs=[("broken.po", 'msgid "x"\nmsgstr "y\n')])
  assert not [p for p in tmp_path.iterdir()]


def test_failed_download_names_the_package_and_the_offline_route(tmp_path, monkeypatch):
  import subprocess

  def no_network(cmd, **kwargs):
    assert cmd[-1] == "django==5.2.19" and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for django==5.2.19")

  monkeypatch.setattr(subprocess, "run", no_network)
  with pytest.raises(CacheError, match=r"pip download of django==5\.2\.19 failed \(exit 1\).*"
                                             r"python -m grow_jax\.data\.gettext_catalogs"):
    gc.download_wheels([("django", "5.2.19")], tmp_path)
