"""Task branches: one base model that grows for task after task, each task's capacity its own switchable part.

Our reading (docs/method.md, "Task branches"). The paper grows once for one task: a layer's original MLP (branch
0) keeps its gate/up and half its down projection, and a copy takes the other half (growth/operators.py). Here
each task grows from branch 0 alone:

  grow_task(config, params, "B") splits branch 0 of every grown layer again: branch 0's down projection is
  halved and a copy of branch 0 (gate, up, down/2) is appended as B's branch. Existing task branches are not
  touched. On a layer that was not grown this is exactly `grow_mlp(factor=2)` (same leaves, same paths), so a
  model grown once for a task is the paper's model. The function is preserved (branch 0's y/2 becomes
  y/4 + y/4, exact in float32 since dividing by 2 is exact: every task growth is bit-exact).

  Shares. With tasks t_1..t_m grown on a layer in that order, task t_j's branch took 2^-j of the original down
  projection W and branch 0 keeps 2^-m. Switching tasks off gives each off task's share back to branch 0:

      branch 0 linear  <-  L_0 * (1 + sum over off tasks j of (1 - s_j) * 2^(m-j))
      branch j linear  <-  s_j * L_j   (s_j = 1: on, the branch as trained; s_j = 0: off, the branch removed)

  so with every task off branch 0 is L_0 * 2^m = W exactly (G-Freeze: L_0 frozen, noise-free growth) and the
  model IS the base model; switching off the most recently grown tasks t_(k+1)..t_m multiplies by 2^(m-k),
  exact too, so "B off" on a model grown for A then B gives back A's model bit for bit (G-Freeze trains only
  the newest task's branches, so A's are as A's training left them). Other subsets multiply L_0 by an integer
  that is not a power of two: one rounding. A scale 0 < s_j < 1 moves task j continuously between off and on
  (for one task this is `operators.dial` with s = 2 * alpha).

  G-Train also trains branch 0's gate/up (shared by every task), so its tasks are not separable: switching a
  task off restores its down-projection share but not branch 0's gate/up as they were before it. With
  `base_params` and every task of a layer off, branch 0 is restored from the base (the base model exactly).

Attention-head branches (growth/attention.py) carry no task names and are left as they are.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax.numpy as jnp

from grow_jax.errors import ConfigError
from grow_jax.growth import operators
from grow_jax.model.config import TASK_NAME, ModelConfig, parse_layers
from grow_jax.types import Params


# ---- reading a model's tasks -----------------------------------------------------------------------------
def task_names(config: ModelConfig) -> tuple[str, ...]:
  """The model's tasks in the order they were grown (() when no branch carries a task name)."""
  if config.mlp_branch_tasks is None:
    return ()
  order: list[str] = []
  for names in config.mlp_branch_tasks:
    for n in names:
      if n not in order:
        order.append(n)
  return tuple(sorted(order, key=lambda n: _first_position(config, n)))


def _first_position(config: ModelConfig, task: str) -> tuple[int, int]:
  """(position in its layers' growth order, first layer): tasks grown later sit later in every layer."""
  positions = [(names.index(task), i) for i, names in enumerate(config.mlp_branch_tasks) if task in names]
  return min(p for p, _ in positions), min(i for _, i in positions)


def task_layers(config: ModelConfig, task: str) -> tuple[int, ...]:
  """The layers that carry a branch of `task`."""
  check_task_names(config, [task], field="task")
  return tuple(i for i, names in enumerate(config.mlp_branch_tasks) if task in names)


def check_task_names(config: ModelConfig, names: Iterable[str], field: str = "active_tasks") -> None:
  known = task_names(config)
  if not known:
    raise ConfigError(f"{field}={sorted(names)!r}: the model has no task branches "
                      f"({'grown without task names: name them with growth.tasks.name_task' if config.is_grown else 'not grown'})")
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ConfigError(f"{field}: unknown task(s) {unknown}; the model's tasks are {list(known)}")


def describe(config: ModelConfig) -> str:
  """One line per task: its name, growth order and layers (what `python -m grow_jax.convert --list_tasks` prints)."""
  names = task_names(config)
  if not names:
    return "no task branches" + (" (grown without task names)" if config.is_grown else "")
  lines = []
  for k, name in enumerate(names, start=1):
    layers = task_layers(config, name)
    width = sum(config.layer_mlp_branches(i)[config.mlp_branch_tasks[i].index(name) + 1] for i in layers)
    lines.append(f"{k}. {name}: {len(layers)} layer(s) {','.join(map(str, layers))}; "
                 f"{3 * width * config.embed_dim:,} parameters")
  return "\n".join(lines)


# ---- growing ---------------------------------------------------------------------------------------------
def _check_new_name(config: ModelConfig, task: str) -> None:
  if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
    raise ConfigError(f"task={task!r}: expected a name of letters, digits, '_', '-' and '.' (at most 64)")
  if task in task_names(config):
    raise ConfigError(f"task={task!r}: the model already has a task of that name (its tasks: "
                      f"{list(task_names(config))}); choose another name")


def _unnamed_layers(config: ModelConfig) -> list[int]:
  return [i for i in range(config.num_layers) if config.layer_branch_tasks(i) is None]


def name_task(config: ModelConfig, task: str) -> ModelConfig:
  """Name the branches of a model grown once by `grow_mlp(factor=2)` (before task branches existed) as `task`.
  Only the config changes: the weights are already those of a task branch."""
  _check_new_name(config, task)
  unnamed = _unnamed_layers(config)
  if not unnamed:
    raise ConfigError("name_task: the model has no unnamed grown branches "
                      f"({'its tasks: ' + str(list(task_names(config))) if task_names(config) else 'not grown'})")
  for i in unnamed:
    widths = config.layer_mlp_branches(i)
    if len(widths) != 2 or widths[1] != widths[0]:
      raise ConfigError(f"name_task: layer {i} has MLP branches {widths}, not one copy of branch 0 (grown more "
                        "than once, or by a factor other than 2): its branches are not one task's")
  return config.replace(mlp_branch_tasks=tuple((task,) if i in unnamed else tuple(config.layer_branch_tasks(i))
                                               for i in range(config.num_layers)))


def grow_task_config(config: ModelConfig, task: str, *, layers=None) -> ModelConfig:
  """The config `grow_task` returns, without touching weights."""
  return _grow_task_config(config, task, layers)[0]


def _grow_task_config(config: ModelConfig, task: str, layers) -> tuple[ModelConfig, tuple[int, ...]]:
  _check_new_name(config, task)
  if _unnamed_layers(config):
    raise ConfigError(f"grow_task({task!r}): layers {_unnamed_layers(config)} carry grown branches without a task "
                      "name; name them first (growth.tasks.name_task(config, '<their task>'))")
  layer_ids = parse_layers(layers, config.num_layers)
  layer_ids = tuple(range(config.num_layers)) if layer_ids is None else layer_ids
  widths = [tuple(config.layer_mlp_branches(i)) for i in range(config.num_layers)]
  names = [tuple(config.layer_branch_tasks(i)) for i in range(config.num_layers)]
  for i in layer_ids:
    widths[i] = widths[i] + (widths[i][0],)
    names[i] = names[i] + (task,)
  return config.replace(mlp_branches=tuple(widths), mlp_branch_tasks=tuple(names)), layer_ids


def grow_task(config: ModelConfig, params: Params, task: str, *, layers=None, noise_scale: float = 0.0,
              seed: int = 0) -> tuple[ModelConfig, Params]:
  """Grow a branch for `task` on `layers` (None = all): branch 0's down projection is halved and a copy of branch
  0 appended, labelled `task`; other branches are untouched. Function-preserving, bit-exact in float32 without
  noise. `noise_scale` / `seed` as in `operators.grow_mlp` (zero-sum noise on branch 0 and the copy). Pure."""
  new_config, layer_ids = _grow_task_config(config, task, layers)
  # grow_mlp on the one-branch view of the grown layers: the paper's operator, noise rule included (it reads only
  # the layers it grows)
  old = {i: operators._layer_branches(config, params, i) for i in layer_ids}
  one = config.replace(attn_branches=None, mlp_branch_tasks=None,
                       mlp_branches=tuple((config.layer_mlp_branches(i)[0],) for i in range(config.num_layers)))
  view = {f"layer_{i}": {"mlp": dict(old[i][0])} for i in layer_ids}
  _, grown = operators.grow_mlp(one, view, factor=2, layers=list(layer_ids), noise_scale=noise_scale, seed=seed)
  new_mlps = {}
  for i in layer_ids:
    g = grown[f"layer_{i}"]["mlp"]
    new_mlps[i] = operators._set_branches(params[f"layer_{i}"]["mlp"], [operators._branch(g, 0), *old[i][1:],
                                                                        operators._branch(g, 1)])
  return new_config, operators._with_layer_mlps(params, new_mlps)


def newest_task_branches(config: ModelConfig) -> str | None:
  """A regex of the newest task's branch leaves (`layer_i/mlp/grown_j/{gating_einsum,linear}`): what G-Freeze
  trains on a model with task branches, so earlier tasks stay as their training left them. None: the model has
  no task names (every grown branch is the one task's)."""
  names = task_names(config)
  if not names:
    return None
  newest = names[-1]
  paths = "|".join(f"layer_{i}/mlp/grown_{config.mlp_branch_tasks[i].index(newest) + 1}"
                   for i in task_layers(config, newest))
  return rf"({paths})/(gating_einsum|linear)"


# ---- choosing the active tasks ---------------------------------------------------------------------------
def task_scales(config: ModelConfig, active: Iterable[str] | Mapping[str, float] | None) -> dict[str, float]:
  """{task: scale} for every task of the model from `active`: None = every task on (1.0); a list of names = those
  on, the rest off (0.0); a mapping = those scales (unlisted tasks on)."""
  names = task_names(config)
  if active is None:
    return {n: 1.0 for n in names}
  if isinstance(active, str):
    raise ConfigError(f"active_tasks={active!r}: expected a list of task names, not one string")
  if isinstance(active, Mapping):
    check_task_names(config, active)
    out = {n: 1.0 for n in names}
    for n, s in active.items():
      if isinstance(s, bool) or not isinstance(s, (int, float)) or not jnp.isfinite(s):
        raise ConfigError(f"active_tasks[{n!r}]={s!r}: expected a finite number (0 = off, 1 = as trained)")
      out[n] = float(s)
    return out
  active = list(active)
  if active:
    check_task_names(config, active)
  elif not names:
    return {}
  return {n: 1.0 if n in active else 0.0 for n in names}


def parse_active(spec: str | None, field: str = "--active_tasks") -> list[str] | dict[str, float] | None:
  """A command line's active tasks: '' (every task as trained) -> None; 'none' -> [] (the base model);
  'A,B' -> ['A', 'B']; 'A=1,B=0.5' -> {'A': 1.0, 'B': 0.5} (unlisted tasks stay as trained)."""
  spec = (spec or "").strip()
  if not spec:
    return None
  if spec == "none":
    return []
  parts = [p.strip() for p in spec.split(",") if p.strip()]
  if not any("=" in p for p in parts):
    return parts
  out = {}
  for p in parts:
    name, sep, value = p.partition("=")
    try:
      out[name.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep:
      raise ConfigError(f"{field}={spec!r}: expected 'none', 'A,B' or 'A=<scale>,B=<scale>' (scale a number: "
                        "0 off, 1 as trained)")
  return out


def select_tasks(config: ModelConfig, params: Params, active: Iterable[str] | Mapping[str, float] | None = None, *,
                 base_params: Params | None = None) -> tuple[ModelConfig, Params]:
  """The model with only the `active` tasks' branches on (see the module docstring for the rule): a list of task
  names, a {task: scale} mapping (0 = off, 1 = as trained, between: partly), or None (all as trained). Off
  branches are removed from the config and params; with nothing active the result has the base's config.
  `base_params`: the ungrown model's weights; a layer with every task off then gets branch 0 back from it
  exactly (needed after G-Train, which trains branch 0's gate/up). Pure."""
  scales = task_scales(config, active)
  if not scales:
    return config, params
  new_mlps, widths, names = {}, [], []
  for i in range(config.num_layers):
    layer_tasks = config.layer_branch_tasks(i)
    if layer_tasks is None:
      raise ConfigError(f"select_tasks: layer {i} has grown branches without task names "
                        "(growth.tasks.name_task names a model grown once)")
    branches = operators._layer_branches(config, params, i)
    m = len(layer_tasks)
    if m == 0:
      widths.append(config.layer_mlp_branches(i)), names.append(())
      continue
    l0 = branches[0]["linear"]
    multiplier = 1 + sum((1.0 - scales[t]) * 2 ** (m - j) for j, t in enumerate(layer_tasks, start=1))
    kept = [j for j, t in enumerate(layer_tasks, start=1) if scales[t] != 0.0]
    if not kept and base_params is not None:
      base_mlp = base_params[f"layer_{i}"]["mlp"]
      first = {"gating_einsum": jnp.asarray(base_mlp["gating_einsum"], branches[0]["gating_einsum"].dtype),
               "linear": jnp.asarray(base_mlp["linear"], l0.dtype)}
      if first["linear"].shape != l0.shape or first["gating_einsum"].shape != branches[0]["gating_einsum"].shape:
        raise ConfigError(f"select_tasks: base_params layer_{i}/mlp has shapes {first['linear'].shape}, "
                          f"{first['gating_einsum'].shape}; expected {l0.shape}, "
                          f"{branches[0]['gating_einsum'].shape} (the ungrown model's MLP)")
    else:
      first = {"gating_einsum": branches[0]["gating_einsum"],
               "linear": l0 if multiplier == 1 else l0 * jnp.asarray(multiplier, l0.dtype)}
    out = [first]
    for j in kept:
      s = scales[layer_tasks[j - 1]]
      b = branches[j]
      out.append(b if s == 1.0 else {"gating_einsum": b["gating_einsum"],
                                     "linear": b["linear"] * jnp.asarray(s, b["linear"].dtype)})
    new_mlps[i] = operators._set_branches(params[f"layer_{i}"]["mlp"], out)
    widths.append(tuple(config.layer_mlp_branches(i)[j] for j in [0, *kept]))
    names.append(tuple(layer_tasks[j - 1] for j in kept))
  grown = any(len(w) > 1 for w in widths)
  new_config = config.replace(mlp_branches=tuple(widths) if grown or config.mlp_branches is not None and any(
      w[0] != config.hidden_dim for w in widths) else None, mlp_branch_tasks=tuple(names) if grown else None)
  return new_config, operators._with_layer_mlps(params, new_mlps)


__all__ = ["task_names", "task_layers", "describe", "name_task", "grow_task", "grow_task_config", "task_scales",
           "parse_active", "select_tasks", "check_task_names", "newest_task_branches"]
