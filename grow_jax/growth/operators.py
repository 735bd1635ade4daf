"""Function-preserving growth of Gemma 3, as pure functions over the param pytree.

MLP growth (the paper's operator; GeGLU `y = (gelu_tanh(x Wg) * (x Wu)) Wd`, leaves in model_config.py):

  grow_mlp(config, params, factor=k) keeps every existing branch of a grown layer at its path with its down
  projection divided by k (`linear / k`) and appends k - 1 copies of it as new branches `mlp/grown_j/...`
  (gate, up and down copied with the same neuron pairing, so each copy computes exactly what the original
  computes). The layer's output is the sum of k identical terms h @ (Wd / k), i.e. h @ Wd.

  Why it is bit-exact for k = 2 (and any power of two) in float32: the model computes each branch as its own
  matmuls and sums branches in order. Dividing by 2 is exact, and a matmul whose weight is scaled by a power
  of two returns exactly the scaled result (same shapes -> same accumulation order; scaling commutes with
  rounding barring underflow). So branch 0 and the copy each give exactly y/2 and y/2 + y/2 == y. A single
  concatenated wide matmul would only be close (~1e-6). tests/test_growth.py asserts max|Δlogits| == 0.0.
  For k = 3, Wd/3 is rounded: preservation holds to float rounding.

  Growing again (our reading, composable): a layer with branches B_0..B_m grown by k divides *every* existing
  branch's linear by k and appends k - 1 copies of each existing branch, in order: new branch
  (m + 1) * c + b is copy c of branch b (c = 1..k-1). Total width is multiplied by k and the function is
  preserved: after two factor-2 growths a layer has 4 branches, each carrying Wd/4. They are summed as
  ((y/4 + y/4) + y/4) + y/4 and the partial sum 3y/4 can round (by at most half an ulp of y, which only a
  tie can turn into a changed y), so a second growth (like k = 4) is not guaranteed bit-exact; the tests
  measure 0.0 on the tiny model and assert float-rounding closeness.

  Symmetry breaking: `noise_scale > 0` adds zero-sum noise to the down projections of each group of k
  branches that share weights (the branch and its k - 1 copies): for k = 2, Wd/2 + N and Wd/2 - N; for k > 2,
  N_c = Z_c - mean(Z). The sum is unchanged (up to rounding), so the model matches the original to float
  rounding. N has standard deviation `noise_scale * rms(Wd / k)` per layer and branch. Note the original
  branch receives +N too (as in `Wd/2 + N`): `dial(alpha=0)` then needs `base_params` to be exact.

Other operators: `merge_branches` (fold branches into one wider MLP, zero-pad to one width for HF export),
`dial` (move continuously between the original and the trained grown model), `clone_divergence`
(symmetry-trap metric for logging). Attention-head growth is growth/attention.py.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import jax
import jax.numpy as jnp

from grow_jax.model.config import ModelConfig, mlp_branch_prefix, parse_layers
from grow_jax.errors import ConfigError
from grow_jax.types import Params


# ---- helpers -----------------------------------------------------------------------------------------
def _check_factor(factor, what: str = "factor") -> int:
  if not isinstance(factor, bool) and isinstance(factor, numbers.Integral) and factor >= 2:
    return int(factor)
  raise ConfigError(f"{what}={factor!r}: expected an integer >= 2 (the width multiplier; 2 is the paper's)")


def _branch(mlp: Params, j: int) -> Params:
  """The {'gating_einsum', 'linear'} dict of branch j of a layer's mlp dict."""
  node = mlp if j == 0 else mlp[f"grown_{j}"]
  return {"gating_einsum": node["gating_einsum"], "linear": node["linear"]}


def _set_branches(mlp: Params, branches: Sequence[Params]) -> Params:
  """A layer's mlp dict holding exactly `branches` (branch 0 at mlp/, branch j at mlp/grown_j/)."""
  out = {k: v for k, v in mlp.items() if not k.startswith("grown_") and k not in ("gating_einsum", "linear")}
  out["gating_einsum"] = branches[0]["gating_einsum"]
  out["linear"] = branches[0]["linear"]
  for j, b in enumerate(branches[1:], start=1):
    out[f"grown_{j}"] = {"gating_einsum": b["gating_einsum"], "linear": b["linear"]}
  return out


def _layer_branches(config: ModelConfig, params: Params, i: int) -> list[Params]:
  widths = config.layer_mlp_branches(i)
  mlp = params[f"layer_{i}"]["mlp"]
  missing = [f"grown_{j}" for j in range(1, len(widths)) if f"grown_{j}" not in mlp]
  if missing:
    raise ConfigError(f"layer_{i}/mlp lacks branches {missing} that config.mlp_branches[{i}]={widths} lists")
  branches = [_branch(mlp, j) for j in range(len(widths))]
  for j, (b, w) in enumerate(zip(branches, widths)):
    if tuple(b["linear"].shape) != (w, config.embed_dim):
      raise ConfigError(f"{mlp_branch_prefix(i, j)}/linear has shape {tuple(b['linear'].shape)}, expected "
                        f"{(w, config.embed_dim)} from config.mlp_branches")
  extra = sorted(k for k in mlp if k.startswith("grown_") and int(k.split("_")[1]) >= len(widths))
  if extra:
    raise ConfigError(f"layer_{i}/mlp has branches {extra} that config.mlp_branches[{i}]={widths} does not list")
  return branches


def _with_layer_mlps(params: Params, new_mlps: dict[int, Params]) -> Params:
  out = dict(params)
  for i, mlp in new_mlps.items():
    layer = dict(out[f"layer_{i}"])
    layer["mlp"] = mlp
    out[f"layer_{i}"] = layer
  return out


def _copy(x):
  # A distinct buffer per leaf: a donated params tree must not hold one buffer twice.
  return jnp.array(x, copy=True)


def _rms(x):
  return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


# ---- MLP growth --------------------------------------------------------------------------------------
def grow_mlp(config: ModelConfig, params: Params, *, factor: int = 2, layers=None, noise_scale: float = 0.0,
             seed: int = 0) -> tuple[ModelConfig, Params]:
  """Grow the MLP of `layers` (None = all; a list or '0,3,5') by `factor`, preserving the function.

  Returns (config with updated mlp_branches, params). Pure: works under jit / jax.eval_shape.
  See the module docstring for the exact rule, the composition of repeated growth and the noise.
  """
  factor = _check_factor(factor)
  new_config, layer_ids = _grow_config(config, factor, layers)
  if not isinstance(noise_scale, (int, float)) or isinstance(noise_scale, bool) or noise_scale < 0:
    raise ConfigError(f"noise_scale={noise_scale!r}: expected a float >= 0 (0 = exact copies)")
  root = jax.random.key(seed)
  new_mlps = {}
  for i in layer_ids:
    branches = _layer_branches(config, params, i)
    m = len(branches)
    groups = []  # groups[b] = [branch b, copy 1 of b, ..., copy k-1 of b]
    for b, br in enumerate(branches):
      linear = br["linear"]
      down = linear / jnp.asarray(factor, linear.dtype)
      downs = [down] + [_copy(down) for _ in range(factor - 1)]
      if noise_scale > 0:
        key = jax.random.fold_in(jax.random.fold_in(root, i), b)
        std = noise_scale * _rms(down)
        if factor == 2:
          n = (jax.random.normal(key, down.shape, jnp.float32) * std).astype(down.dtype)
          downs = [down + n, down - n]
        else:
          z = jax.random.normal(key, (factor,) + down.shape, jnp.float32) * std
          z = z - jnp.mean(z, axis=0, keepdims=True)
          downs = [down + z[c].astype(down.dtype) for c in range(factor)]
      gating = br["gating_einsum"]
      groups.append([{"gating_einsum": gating if c == 0 else _copy(gating), "linear": downs[c]}
                     for c in range(factor)])
    new = [groups[b][c] for c in range(factor) for b in range(m)]
    new_mlps[i] = _set_branches(params[f"layer_{i}"]["mlp"], new)
  return new_config, _with_layer_mlps(params, new_mlps)


def _grow_config(config: ModelConfig, factor, layers) -> tuple[ModelConfig, tuple[int, ...]]:
  factor = _check_factor(factor)
  if config.mlp_branch_tasks is not None:
    # tasks.task_names' order (growth order), computed here: growth/tasks.py builds on this module, not back
    grown = config.mlp_branch_tasks
    names = sorted({n for layer in grown for n in layer},
                   key=lambda n: (min(layer.index(n) for layer in grown if n in layer),
                                  min(i for i, layer in enumerate(grown) if n in layer)))
    raise ConfigError(f"grow_mlp: the model has task branches {names}; grow one more "
                      "with growth.tasks.grow_task (config.growth.task), which keeps each task switchable")
  layer_ids = parse_layers(layers, config.num_layers)
  if layer_ids is None:
    layer_ids = tuple(range(config.num_layers))
  widths = [config.layer_mlp_branches(i) for i in range(config.num_layers)]
  for i in layer_ids:
    widths[i] = tuple(widths[i]) * factor
  return config.replace(mlp_branches=tuple(widths)), layer_ids


def grow_config(config: ModelConfig, *, factor: int = 2, layers=None) -> ModelConfig:
  """The config `grow_mlp` would return, without touching weights (for accounting / abstract shapes)."""
  return _grow_config(config, factor, layers)[0]


def grown_layers(config: ModelConfig) -> tuple[int, ...]:
  """Indices of layers whose MLP has more than one branch."""
  return tuple(i for i in range(config.num_layers) if len(config.layer_mlp_branches(i)) > 1)


# ---- merging (export) --------------------------------------------------------------------------------
def merge_branches(config: ModelConfig, params: Params, *, uniform: bool = False) -> tuple[ModelConfig, Params]:
  """Fold each layer's branches into one wider MLP (concatenated along F, branch order kept).

  The GeGLU is a sum over hidden units, so concatenating branches computes the same function (to float
  rounding: one wide matmul instead of a sum of branch matmuls). With `uniform=True` every layer is
  zero-padded to the widest layer's width: a padded unit has zero gate and up rows (gelu(0) * 0 = 0) and a
  zero down row, so it contributes exactly 0. The result has one branch per layer (config.is_grown False);
  when all widths agree the config is the standard one (hidden_dim = width, mlp_branches = None), which is
  what `hf_format.config_to_hf` / `params_to_hf` need.
  """
  merged = {}
  widths = []
  for i in range(config.num_layers):
    branches = _layer_branches(config, params, i)
    if len(branches) == 1:
      merged[i] = branches[0]
    else:
      merged[i] = {"gating_einsum": jnp.concatenate([b["gating_einsum"] for b in branches], axis=1),
                   "linear": jnp.concatenate([b["linear"] for b in branches], axis=0)}
    widths.append(merged[i]["linear"].shape[0])
  if uniform:
    width = max(widths)
    for i, w in enumerate(widths):
      if w < width:
        g, l = merged[i]["gating_einsum"], merged[i]["linear"]
        merged[i] = {"gating_einsum": jnp.pad(g, ((0, 0), (0, width - w), (0, 0))),
                     "linear": jnp.pad(l, ((0, width - w), (0, 0)))}
    widths = [width] * config.num_layers
  new_mlps = {i: _set_branches(params[f"layer_{i}"]["mlp"], [merged[i]]) for i in range(config.num_layers)}
  if len(set(widths)) == 1:
    new_config = config.replace(hidden_dim=widths[0], mlp_branches=None, mlp_branch_tasks=None)
  else:
    new_config = config.replace(mlp_branches=tuple((w,) for w in widths), mlp_branch_tasks=None)
  return new_config, _with_layer_mlps(params, new_mlps)


# ---- dial --------------------------------------------------------------------------------------------
def dial(config: ModelConfig, params: Params, alpha: float, base_params: Params | None = None) -> Params:
  """Move each grown layer continuously between the original model (alpha=0) and the trained one.

  Our reading. In a layer with k branches (branch 0 the original, 1..k-1 the copies; k = 2 after one
  factor-2 growth) let u = k * alpha, so alpha is the share of the down projection each copy carries
  (alpha = 1/k is the trained model as it is, alpha = 1/2 for k = 2). With W* the original full down
  projection — `base_params`' layer_i/mlp/linear if given, else k * (branch 0's linear), exact for k a power
  of two and equal to the original when branch 0's down projection was frozen and noise-free:

      branch 0 linear   <- (1 - u) * W* + u * L_0
      branch j linear   <- u * L_j                   (j >= 1)
      branch 0 gating   <- (1 - u) * G* + u * G_0    (only with base_params: restores G-Train's gate/up)

  alpha = 0 zeroes the copies exactly and restores W* (and G*), so the logits equal the original model's
  bit for bit (given frozen original leaves or base_params); alpha = 1/k returns the trained leaves exactly;
  values between interpolate, values above 1/k extrapolate (copies amplified). Layers with one branch and
  all non-MLP leaves are returned unchanged (pass base_params' other leaves yourself if they trained).
  """
  out_mlps = {}
  for i in grown_layers(config):
    branches = _layer_branches(config, params, i)
    k = len(branches)
    u = float(k) * float(alpha)
    l0, g0 = branches[0]["linear"], branches[0]["gating_einsum"]
    if base_params is not None:
      base_mlp = base_params[f"layer_{i}"]["mlp"]
      w_star, g_star = jnp.asarray(base_mlp["linear"], l0.dtype), jnp.asarray(base_mlp["gating_einsum"], g0.dtype)
      if w_star.shape != l0.shape or g_star.shape != g0.shape:
        raise ConfigError(f"dial: base_params layer_{i}/mlp has shapes {w_star.shape}, {g_star.shape}; expected "
                          f"{l0.shape}, {g0.shape} (the ungrown model's original branch)")
    else:
      w_star, g_star = l0 * jnp.asarray(k, l0.dtype), None
    a, b = jnp.asarray(1.0 - u, l0.dtype), jnp.asarray(u, l0.dtype)
    new = [{"gating_einsum": g0 if g_star is None else a * g_star + b * g0, "linear": a * w_star + b * l0}]
    new += [{"gating_einsum": br["gating_einsum"], "linear": b * br["linear"]} for br in branches[1:]]
    out_mlps[i] = _set_branches(params[f"layer_{i}"]["mlp"], new)
  return _with_layer_mlps(params, out_mlps)


# ---- symmetry-trap metric ----------------------------------------------------------------------------
def clone_divergence(config: ModelConfig, params: Params) -> dict[str, jax.Array]:
  """Per grown layer, how far apart its closest pair of same-width branches is: a flat dict of scalars

      'clone_div/layer_{i}/{gate,up,down}' = min over branch pairs a < b of ||W_b - W_a|| / ||W_a||

  (Frobenius norms, float32). After one growth this is simply copy vs original. 0 means some copy is still an
  exact clone of another branch (the symmetry trap: identical copies get identical updates under SFT).
  Jit-able with `config` static.
  """
  out = {}
  for i in grown_layers(config):
    widths = config.layer_mlp_branches(i)
    branches = _layer_branches(config, params, i)
    mats = [{"gate": b["gating_einsum"][0], "up": b["gating_einsum"][1], "down": b["linear"]} for b in branches]
    pairs = [(a, b) for a in range(len(widths)) for b in range(a + 1, len(widths)) if widths[a] == widths[b]]
    if not pairs:
      continue
    for name in ("gate", "up", "down"):
      rel = [jnp.linalg.norm((mats[b][name] - mats[a][name]).astype(jnp.float32))
             / (jnp.linalg.norm(mats[a][name].astype(jnp.float32)) + 1e-30) for a, b in pairs]
      out[f"clone_div/layer_{i}/{name}"] = jnp.min(jnp.stack(rel))
  return out


__all__ = ["grow_mlp", "grow_config", "merge_branches", "dial", "clone_divergence", "grown_layers"]
