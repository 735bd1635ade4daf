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
  path = gc.build_gettext_dataset(tmp_path / "data", packages, wheel_dir=wheels,    # reuses the wheel: no pip
                                  heldout_packages=())
  manifest = cache.read_manifest(path)
  assert manifest["unique_pairs"] == 7 == sum(manifest["counts"].values())
  assert manifest["entries"]["duplicate_source"] == 1    # "Save changes" is in two catalogs
  assert manifest["params"]["packages"] == [["fakepkg", "1.0"]]
  assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [path.name], "no temporary leftovers"

  task = get_task("gettext_en_fr", data_dir=str(tmp_path / "data"), packages=packages, heldout_packages=())
  assert task.splits == ("train", "validation", "test")
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
  path = gc.build_gettext_dataset(tmp_path, catalogs=catalogs, heldout_packages=())
  stamp = (path / "manifest.json").stat().st_mtime_ns
  assert gc.build_gettext_dataset(tmp_path, catalogs=catalogs, heldout_packages=()) == path
  assert (path / "manifest.json").stat().st_mtime_ns == stamp
  other = gc.build_gettext_dataset(tmp_path, catalogs=[("a.po", 'msgid "Good night"\nmsgstr "Bonne nuit"\n')],
                                   heldout_packages=())
  assert other != path, "different catalogs get their own cache entry"
  held = gc.build_gettext_dataset(tmp_path, catalogs=catalogs, heldout_packages=("a.po",))
  assert held != path, "a different held-out choice gets its own cache entry"
  assert path.name.startswith(f"gettext_en_fr-{gc.VERSION}-") and gc.VERSION != "v1", "v1 caches are stale"


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


# -- held out by package ------------------------------------------------------------------------------------

def _po(*pairs):
  return "".join(f'msgid "{en}"\nmsgstr "{fr}"\n\n' for en, fr in pairs)


WEB = _po(("Save changes", "Enregistrer les modifications"), ("Cancel the order", "Annuler la commande"),
          ("Name:", "Nom :"), ("Delete %(name)s", "Supprimer %(name)s"),
          *[(f"Web page number {i}", f"Page web numéro {i}") for i in range(40)])
DOCS = _po(("Building the documentation", "Construction de la documentation"),
           ("save changes", "enregistrer les changements"),          # in WEB up to case: leaks, dropped
           ("Name", "Nom :"),                                         # in WEB up to punctuation: dropped
           ("Delete {0}", "Supprimer {0}"),                           # in WEB up to placeholders: dropped
           *[(f"Writing output file {i}", f"Écriture du fichier de sortie {i}") for i in range(40)])
ERP = _po(("Invoice line", "Ligne de facture"), ("Building the documentation", "Construire la doc"))


def test_overlap_key_ignores_case_punctuation_placeholders_and_markup():
  assert gc.overlap_key("Name:") == gc.overlap_key("name") == "name"
  assert gc.overlap_key("Delete %(name)s") == gc.overlap_key("Delete {0}") == gc.overlap_key("<b>delete</b>")
  assert gc.overlap_key("Save changes") != gc.overlap_key("Save change")


def test_heldout_packages_go_to_their_own_splits_without_leaks():
  catalogs = [("web:web/locale/fr/LC_MESSAGES/django.po", WEB), ("docs:docs/locale/fr/LC_MESSAGES/sphinx.po", DOCS),
              ("erp:erp/locale/fr.po", ERP)]
  splits, stats = gc.build_records(catalogs, heldout_packages=("docs", "erp"))
  assert list(splits) == ["train", "validation", "test", "validation_heldout", "test_heldout"]
  source = lambda names: {r["translation"]["en"]: r for n in names for r in splits[n]}
  training, held = source(["train", "validation", "test"]), source(["validation_heldout", "test_heldout"])
  assert len(training) == 44 and all(r["origin"].startswith("web:") for r in training.values())
  assert "Invoice line" in held and "Building the documentation" in held      # deduped across docs and erp
  assert not {"save changes", "Name", "Delete {0}"} & set(held), "English seen in a training package"
  assert not {gc.overlap_key(en) for en in held} & {gc.overlap_key(en) for en in training}
  assert len(held) == 42 and stats["heldout"]["dropped_seen_in_training"] == 3
  assert stats["heldout"]["kept_per_package"] == {"docs": 41, "erp": 1}
  assert stats["entries"]["heldout_seen_in_training"] == 3 and stats["entries"]["duplicate_source"] == 1
  assert stats["unique_pairs"] == 86
  for name in ("validation_heldout", "test_heldout"):
    assert 10 < len(splits[name]) < 32, "about half each"
    assert all(cache.hash_split(r["translation"]["en"], gc.HELDOUT_SPLIT_PERCENT) == name for r in splits[name])
  plain, _ = gc.build_records(catalogs)
  assert list(plain) == ["train", "validation", "test"] and sum(map(len, plain.values())) == 44 + 44 + 1


def test_a_heldout_package_without_catalogs_is_an_error(tmp_path):
  with pytest.raises(cache.CacheError, match=r"held-out package\(s\) \['sphinx'\] have no French catalog among "
                                             r"\['web'\]; pass heldout_packages=\(\)"):
    gc.build_records([("web:x/fr.po", WEB)], heldout_packages=("sphinx",))
  with pytest.raises(ValueError, match=r"held-out package\(s\) \['trytond'\] are not among the packages "
                                       r"\['fakepkg'\]"):
    gc.build_gettext_dataset(tmp_path, [("fakepkg", "1.0")], heldout_packages=("trytond",))
  assert not list(tmp_path.iterdir()), "checked before any download or build"


def test_task_serves_the_heldout_splits(tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  make_wheel(wheels)
  other = wheels / "otherpkg-2.0-py3-none-any.whl"
  with zipfile.ZipFile(other, "w") as z:
    z.writestr("otherpkg/locale/fr/LC_MESSAGES/messages.po", DOCS)
  packages = [("fakepkg", "1.0"), ("otherpkg", "2.0")]
  path = gc.build_gettext_dataset(tmp_path / "data", packages, wheel_dir=wheels, heldout_packages=("otherpkg",))
  manifest = cache.read_manifest(path)
  assert manifest["params"]["heldout_packages"] == ["otherpkg"]
  assert manifest["heldout"]["dropped_seen_in_training"] == 2                  # "save changes", "Name"
  task = get_task("gettext_en_fr", data_dir=str(tmp_path / "data"), packages=packages,
                  heldout_packages=["otherpkg"])
  assert task.splits == ("train", "validation", "test", "validation_heldout", "test_heldout")
  held = task.examples("validation_heldout") + task.examples("test_heldout")
  assert len(held) == manifest["counts"]["validation_heldout"] + manifest["counts"]["test_heldout"] == 42
  assert all(e.prompt.startswith("Translate English to French.\nEnglish: ") for e in held)
  training = {e.prompt for s in ("train", "validation", "test") for e in task.examples(s)}
  assert len(training) == 7 and not training & {e.prompt for e in held}
