"""The repository explains itself: docs/design.md's module table and each package's `__init__` docstring name
every module there is (and none that is gone), no document points outside the repository, every
`--config.a.b=` override a document or script shows is a real config key, and the GPU install line names the CUDA
that setup.cfg's `gpu` extra installs."""

import ast
import configparser
import os
import re

from config_files import ROOT
from grow_jax.train.config import base_config

PACKAGE = os.path.join(ROOT, "grow_jax")


def _modules() -> set[str]:
  """Every module of grow_jax as 'pkg/name.py' (top level: 'name.py'); subpackages' __init__.py aside."""
  found = set()
  for folder, _, names in os.walk(PACKAGE):
    rel = os.path.relpath(folder, PACKAGE)
    for name in names:
      if name.endswith(".py") and not (name == "__init__.py" and rel != "."):
        found.add(name if rel == "." else f"{rel}/{name}")
  return found


def _design_table() -> set[str]:
  text = open(os.path.join(ROOT, "docs", "design.md")).read()
  section = text.split("## Package modules", 1)[1].split("\n## ", 1)[0]
  listed = set()
  for line in section.splitlines():
    cell = line.split("|")[1].strip() if line.startswith("| ") else ""
    match = re.fullmatch(r"(?:\*\*(\w+/)\*\* )?`([\w/]+\.py)`", cell)
    if match:
      listed.add((match.group(1) or "") + match.group(2))
  return listed


def test_the_design_docs_module_table_names_every_module_and_no_missing_one():
  modules, listed = _modules(), _design_table()
  assert len(listed) > 40                                                  # the table was read
  assert sorted(modules - listed) == [], "modules missing from docs/design.md's table"
  assert sorted(listed - modules) == [], "docs/design.md lists modules that do not exist"


def test_each_packages_docstring_names_its_modules():
  for folder in sorted(os.listdir(PACKAGE)):
    init = os.path.join(PACKAGE, folder, "__init__.py")
    if not os.path.isfile(init):
      continue
    doc = ast.get_docstring(ast.parse(open(init).read())) or ""
    names = sorted(n for n in os.listdir(os.path.join(PACKAGE, folder)) if n.endswith(".py") and n != "__init__.py")
    missing = [n for n in names if not re.search(rf"(?<![\w/]){re.escape(n)}", doc)]
    assert missing == [], f"grow_jax/{folder}/__init__.py's docstring does not name {missing}"


def test_no_document_or_source_points_outside_the_repository():
  outside = re.compile(r"\.\./shared|/work/shared|\bPAPER\.md|\bDESIGN\.md")
  hits = []
  for folder, dirs, names in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules")]
    for name in names:
      if name.endswith((".py", ".md", ".sh", ".toml", ".sbatch")) and name != "test_docs.py":
        path = os.path.join(folder, name)
        for number, line in enumerate(open(path, errors="replace"), 1):
          if outside.search(line):
            hits.append(f"{os.path.relpath(path, ROOT)}:{number}")
  assert hits == []


def _documents():
  """Every file a user reads or runs, outside tests/: docs, READMEs, launchers, configs, experiments, the package."""
  for folder, dirs, names in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules", "tests")]
    for name in names:
      if name.endswith((".py", ".md", ".sh", ".sbatch")):
        yield os.path.join(folder, name)


def _has_key(config, dotted: str) -> bool:
  """Whether `dotted` names a config key; an upper-case part (`data.options.KEY`) stands for any key below."""
  if dotted == "a.b":                       # `--config.a.b=x`: the syntax, not a key
    return True
  node = config
  for part in dotted.split("."):
    if part.isupper():
      return True
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def test_every_config_override_in_the_docs_and_scripts_is_a_real_key():
  overrides = []
  for path in _documents():
    for number, line in enumerate(open(path, errors="replace"), 1):
      for key in re.findall(r"--config\.([A-Za-z_][\w.]*?)=", line):
        overrides.append((f"{os.path.relpath(path, ROOT)}:{number}", key))
  assert len(overrides) > 10                                              # the documents were read
  config = base_config()
  unknown = [f"{where}: --config.{key}" for where, key in overrides if not _has_key(config, key)]
  assert unknown == [], "not keys of grow_jax.train.config.base_config()"


def test_the_gpu_install_line_names_the_cuda_the_gpu_extra_installs():
  extras = configparser.ConfigParser()
  extras.read(os.path.join(ROOT, "setup.cfg"))
  [cuda] = re.findall(r"jax\[cuda(\d+)\]", extras["options.extras_require"]["gpu"])
  claims = []
  for path in _documents():
    for number, line in enumerate(open(path, errors="replace"), 1):
      for version in re.findall(r"\.\[gpu\]\W*\(?[^()]*?CUDA (\d+)", line):
        claims.append((f"{os.path.relpath(path, ROOT)}:{number}", version))
  assert claims                                                           # the install lines were read
  assert [where for where, version in claims if version != cuda] == [], f"the gpu extra installs CUDA {cuda}"
