"""The one place that turns parameter-tree positions into '/'-joined paths, and back.

Params are plain nested dicts (`{'layer_0': {'mlp': {'linear': ...}}}`); a leaf's path is its keys joined
with '/', e.g. `layer_0/mlp/linear`. Growth, partition rules, LoRA targets and accounting all speak paths,
so they all go through these helpers.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
from grow_jax.types import Params


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(key_path: Iterable[Any]) -> str:
  """'/'-joined path of a `jax.tree_util` key path (DictKey, GetAttrKey, SequenceKey)."""
  return "/".join(_key_name(k) for k in key_path)


def flatten_items(tree) -> list[tuple[str, Any]]:
  """[(path, leaf)] in leaf order, for any pytree (optimizer states: attribute names and indices too)."""
  return [(path_str(kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict -> {path: leaf}, in the tree's (sorted-key) leaf order."""
  return dict(flatten_items(tree))


def unflatten(flat: Mapping[str, Any]) -> Params:
  """{path: leaf} -> nested dict (the inverse of `flatten` for dict trees)."""
  out: Params = {}
  for path, leaf in flat.items():
    keys = path.split("/")
    node = out
    for k in keys[:-1]:
      child = node.setdefault(k, {})
      if not isinstance(child, dict):
        raise ValueError(f"unflatten: path {path!r} passes through leaf {k!r}")
      node = child
    if keys[-1] in node:
      raise ValueError(f"unflatten: duplicate path {path!r}")
    node[keys[-1]] = leaf
  return out


def map_with_path(fn: Callable[[str, Any], Any], tree, *rest):
  """`jax.tree.map` whose function also receives the leaf's path as first argument."""
  return jax.tree_util.tree_map_with_path(lambda kp, x, *r: fn(path_str(kp), x, *r), tree, *rest)


def get(tree: Mapping[str, Any], path: str):
  node = tree
  for k in path.split("/"):
    node = node[k]
  return node


def set_path(tree: Mapping[str, Any], path: str, value) -> Params:
  """A copy of `tree` (dicts along the path copied, leaves shared) with `path` set to `value`."""
  keys = path.split("/")

  def rec(node, i):
    node = dict(node) if node is not None else {}
    if i == len(keys) - 1:
      node[keys[i]] = value
    else:
      node[keys[i]] = rec(node.get(keys[i]), i + 1)
    return node

  return rec(tree, 0)


def find_nodes(tree, types: type | tuple[type, ...]) -> list:
  """Every node of `tree` that is an instance of `types`, in flatten order (e.g. optax states inside an
  optimizer state: `find_nodes(opt_state, optax.ScaleByAdamState)`)."""
  found = []

  def visit(x):
    if isinstance(x, types):
      found.append(x)
      return True
    return False

  jax.tree_util.tree_flatten(tree, is_leaf=visit)
  return found
