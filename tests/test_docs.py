"""The repository explains itself: docs/design.md's module table and each package's `__init__` docstring name
every module there is (and none that is gone), no document points outside the repository, every
`--config.a.b=` override a document or script shows is a real config key, docs/config.md's key table names every
config key there is (and none that is gone), every flag a documented command passes is a flag that command
defines, every relative link in README.md and docs/*.md reaches a file (and a heading, for a `#anchor`), the
README keeps its two commands, and the GPU install line names the CUDA that setup.cfg's `gpu` extra installs."""

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


# ---- README.md and docs/*.md: links, config keys, commands ---------------------------------------------------

def _front_pages() -> list[str]:
  """README.md and every docs/*.md: the pages a newcomer reads."""
  docs = os.path.join(ROOT, "docs")
  return [os.path.join(ROOT, "README.md")] + sorted(
      os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))


def _outside_code_blocks(text: str) -> str:
  """`text` with its fenced code blocks blanked (line numbers kept): `# comment` lines there are no headings."""
  lines, fenced = [], False
  for line in text.split("\n"):
    if line.lstrip().startswith("```"):
      fenced = not fenced
      lines.append("")
    else:
      lines.append("" if fenced else line)
  return "\n".join(lines)


def _anchors(path: str) -> set[str]:
  """The `#anchors` GitHub gives a markdown file's headings: lower case, punctuation dropped, spaces to '-',
  a repeated heading suffixed -1, -2, ..."""
  seen, anchors = {}, set()
  for line in _outside_code_blocks(open(path).read()).split("\n"):
    match = re.match(r"#{1,6} +(.*?) *#* *$", line)
    if match:
      slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
      anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
      seen[slug] = seen.get(slug, 0) + 1
  return anchors


def _links(path: str) -> list[tuple[int, str]]:
  """(line, target) of every markdown link or image outside code blocks and code spans."""
  text = _outside_code_blocks(open(path).read())
  text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)
  return [(text.count("\n", 0, m.start()) + 1, m.group(1))
          for m in re.finditer(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)]


def test_the_front_pages_were_found_and_read():
  names = [os.path.relpath(p, ROOT) for p in _front_pages()]
  assert {"README.md", "docs/design.md", "docs/config.md", "docs/results.md"} <= set(names)
  assert len(_links(os.path.join(ROOT, "README.md"))) > 10
  assert "quickstart" in _anchors(os.path.join(ROOT, "README.md"))


def test_the_anchor_rule_is_githubs():
  readme = _anchors(os.path.join(ROOT, "README.md"))
  assert "tests-the-fast-tier-and-the-full-suite" in readme
  assert "the-two-commands" in readme
  results = _anchors(os.path.join(ROOT, "docs", "results.md"))
  assert "the-forgetting-study-c1c4" in results                # the en dash is dropped, as GitHub does


def test_every_relative_link_in_the_readme_and_docs_reaches_a_file_and_heading():
  broken = []
  for page in _front_pages():
    for number, target in _links(page):
      if re.match(r"[a-z][a-z0-9+.-]*:", target):                # http:, https:, mailto:
        continue
      file, _, anchor = target.partition("#")
      path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
      where = f"{os.path.relpath(page, ROOT)}:{number}: ({target})"
      if not os.path.exists(path):
        broken.append(f"{where} no such file")
      elif anchor and path.endswith(".md") and anchor not in _anchors(path):
        broken.append(f"{where} no heading #{anchor} in {os.path.relpath(path, ROOT)}")
  assert broken == []


def _documented_keys() -> list[tuple[int, str]]:
  """(line, key) for every key docs/config.md's key table names; `a.{b,c}` is a.b and a.c."""
  keys = []
  path = os.path.join(ROOT, "docs", "config.md")
  for number, line in enumerate(open(path), 1):
    cells = line.split(" | ")
    if not line.startswith("| `") or len(cells) < 2:
      continue
    for code in re.findall(r"`([^`]+)`", cells[0]):
      match = re.fullmatch(r"([\w.]*?)\{([\w,]+)\}", code)
      names = [match.group(1) + part for part in match.group(2).split(",")] if match else [code]
      keys.extend((number, name) for name in names if not name.startswith("configs/"))
  return keys


def _leaf_keys(node, prefix: str = "") -> list[str]:
  """Every leaf key of a config, dotted; `data.options` (the task options) stands as one key."""
  leaves = []
  for name in node.keys():
    key, value = prefix + name, node[name]
    if hasattr(value, "keys") and key != "data.options":
      leaves.extend(_leaf_keys(value, key + "."))
    else:
      leaves.append(key)
  return leaves


def test_docs_config_md_names_real_keys_and_every_key():
  config = base_config()
  documented = _documented_keys()
  assert len(documented) > 50                                              # the table was read
  unknown = [f"docs/config.md:{number}: {key}" for number, key in documented if not _has_key(config, key)]
  assert unknown == [], "not keys of grow_jax.train.config.base_config()"
  named = {key.split(".NAME")[0] for _, key in documented}
  # A method's options are documented by the method that declares them (its file in grow_jax/methods/).
  methods_source = "".join(open(p).read() for p in _python_files(os.path.join(PACKAGE, "methods")))
  missing = [key for key in _leaf_keys(config) if key not in named and not (
      key.startswith("train.") and re.search(rf"""["']{key.split('.', 1)[1]}["']""", methods_source))]
  assert missing == [], "config keys docs/config.md's table does not document"


def _python_files(folder: str) -> list[str]:
  return [os.path.join(f, n) for f, _, names in os.walk(folder) for n in names if n.endswith(".py")]


def _commands(text: str) -> list[str]:
  """Every `python -m grow_jax.<module> ...` or `python <script>.py ...` command line in a page, continuation
  lines joined, ending at a code span's end or a shell comment."""
  text = re.sub(r"\\\n\s*", " ", text)
  found = []
  for match in re.finditer(r"python3? (-m grow_jax[\w.]*|[\w/]+\.py)([^\n`]*)", text):
    # What follows ` -- ` goes to another program (sbatch, the trainer behind a launcher).
    found.append(match.group(1) + re.split(r" #| && | \| | -- ", match.group(2) + " ")[0])
  return found


def _defined_flags(command: str) -> set[str] | None:
  """The flags `command`'s program defines (absl's DEFINE_* or argparse's add_argument), None where there is no
  such module or script. For a grow_jax module: the flags any grow_jax module defines, since a CLI takes the absl
  flags of the modules it imports (--distributed, ...)."""
  if command.startswith("-m "):
    module = command.split()[1]
    path = os.path.join(ROOT, *module.split("."))
    if not (os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__main__.py"))):
      return None
    sources = _python_files(PACKAGE)
  else:
    script = os.path.join(ROOT, command.split()[0])
    if not os.path.isfile(script):
      return None
    sources = [script]
  flags = {"help", "helpfull", "flagfile"}
  for source in sources:
    text = open(source).read()
    flags.update(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", text))
    flags.update(re.findall(r"add_argument\(\s*[\"']--([\w-]+)[\"']", text))
    flags.update(n for s in re.findall(r"add_argument\(([^)]*)\)", text) for n in re.findall(r"[\"']--([\w-]+)", s))
  return flags


def test_every_documented_command_exists_and_passes_only_flags_it_defines():
  unknown, commands = [], 0
  for page in _front_pages() + [os.path.join(ROOT, "launch", "README.md")]:
    for command in _commands(open(page).read()):
      commands += 1
      defined = _defined_flags(command)
      if defined is None:
        unknown.append(f"{os.path.relpath(page, ROOT)}: `{command.strip()}`: no such module or script")
        continue
      for flag in re.findall(r"(?<![\w-])--([A-Za-z_][\w-]*)", command.split(maxsplit=2)[-1]):
        if flag != "config" and not flag.startswith("config.") and flag not in defined:
          unknown.append(f"{os.path.relpath(page, ROOT)}: `{command.strip()}`: --{flag}")
  assert commands > 20                                                     # the commands were read
  assert unknown == []


def test_the_readme_keeps_its_two_commands():
  """.ci/run runs these two lines, and tests/test_newcomer.py the first one's path: they are the contract."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert ("pip install -e . && python -m grow_jax.main --config=configs/quickstart.py "
          "--workdir=/tmp/grow_jax/quickstart") in readme
  assert 'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadfile' in readme
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert "python -m pytest -q -n 2 --dist loadfile" in ci and "configs/quickstart.py" in ci


def test_the_readme_says_how_to_run_the_fast_tier_and_setup_cfg_declares_its_marker():
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert 'python -m pytest -q -n 2 -m "not slow"' in readme and "python -m pytest -q -n 2 -m slow" in readme
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, "setup.cfg"))
  markers = [line.split(":")[0].strip() for line in setup["tool:pytest"]["markers"].strip().splitlines()]
  assert "slow" in markers
