"""The layers run one way: grow_jax's import graph (module-level AND in-function imports) has no cycle, and the
light modules stay light (`import grow_jax.tables` does not import JAX)."""

import ast
import os
import pathlib
import subprocess
import sys

import grow_jax

ROOT = pathlib.Path(grow_jax.__file__).parent


def modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """{dotted module name: file} of every module under `root` (a package `__init__` is the package's name)."""
  out = {}
  for path in sorted(root.rglob("*.py")):
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def imported(module: str, node: ast.AST, known: dict[str, pathlib.Path], package: str) -> set[str]:
  """The modules of `package` one import statement in `module` loads: a submodule named in a from-import is
  that submodule, any other name is its package (`from grow_jax.data import get_task` -> grow_jax.data). The
  parent packages Python initialises on the way are not edges: they run before the importing module's body."""
  def owner(name: str) -> str:
    while name not in known:
      name = name.rpartition(".")[0]
    return name

  if isinstance(node, ast.Import):
    return {owner(a.name) for a in node.names if a.name == package or a.name.startswith(package + ".")}
  base = node.module or ""
  if node.level:
    here = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
      here = here.rpartition(".")[0]
    base = f"{here}.{base}" if base else here
  if base != package and not base.startswith(package + "."):
    return set()
  return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else owner(base) for a in node.names}


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  """{module: the package's modules it imports anywhere in its file: at module level, in functions, in
  `if` / `try` blocks alike}."""
  known = modules(root, package)
  graph = {}
  for name, path in known.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        edges |= imported(name, node, known, package)
    graph[name] = edges - {name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
  state = {}                     # absent: unseen, 1: on the current path, 2: done
  for start in sorted(graph):
    if start in state:
      continue
    path, stack = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while stack:
      nxt = next(stack[-1], None)
      if nxt is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      elif nxt not in state:
        state[nxt] = 1
        path.append(nxt)
        stack.append(iter(sorted(graph[nxt])))
  return None


def test_the_import_graph_of_grow_jax_has_no_cycle():
  graph = import_graph(ROOT, "grow_jax")
  assert len(graph) > 80 and "grow_jax.train.loop" in graph["grow_jax.growth.plan"]   # in-function imports count
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_a_cycle_closed_inside_a_function(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import thing\n")
  (pkg / "a.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text("thing = 1\n\ndef late():\n  from .. import a\n  return a\n")
  graph = import_graph(pkg, "pkg")
  assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.a"}}
  assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
  (pkg / "sub" / "b.py").write_text("thing = 1\n")
  assert find_cycle(import_graph(pkg, "pkg")) is None


def _fresh(code: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                        cwd=ROOT.parent)


def test_import_grow_jax_tables_does_not_import_jax():
  proc = _fresh("import sys, grow_jax, grow_jax.tables, grow_jax.errors, grow_jax.registry\n"
                "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'numpy'))))")
  assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
  proc = _fresh("import sys, grow_jax\ngrow_jax.forward\nprint('jax' in sys.modules)")   # the lazy surface loads it
  assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_the_top_level_surface_is_lazy_curated_and_has_the_extension_points():
  from grow_jax import data, evaluation, methods
  surface = set(grow_jax.__all__)
  assert {"register_method", "register_task", "register_evaluation", "Method", "Task", "EvalContext"} <= surface
  assert grow_jax.register_method is methods.register and grow_jax.register_task is data.register_task
  assert grow_jax.register_evaluation is evaluation.registry.register
  assert not surface & {"loglikelihood", "score_multiple_choice", "score_partial", "kl_divergence", "perplexity"}
  assert all(getattr(grow_jax, name) is not None for name in grow_jax.__all__)
  assert surface <= set(dir(grow_jax))
  try:
    grow_jax.no_such_name
  except AttributeError as e:
    assert str(e) == "module 'grow_jax' has no attribute 'no_such_name'"
  else:
    raise AssertionError("grow_jax.no_such_name resolved")


def test_the_params_alias_is_defined_once():
  defined = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                   if any(line.startswith("Params =") for line in p.read_text().splitlines()))
  assert defined == ["types.py"]
