"""LoRA adapters as extra leaves, merged into the base weights before the forward pass.

For a target weight W (a leaf path matching `targets`) viewed as a matrix from its input axes to its output
axes (per entry of its batch axes), the adapter is A: (batch, in, r) ~ normal(0, 1/sqrt(in)) and
B: (batch, r, out) = 0, and the model sees

    W' = W + scale * (A @ B)          (scale = lora_alpha / r; 1 when lora_alpha is None)

so the model is unchanged at init (B = 0 makes the update exactly zero). Adapters live in a separate
top-level subtree mirroring the target paths: params['lora'][...path...] = {'a': A, 'b': B}, i.e. leaf paths
`lora/layer_0/attn/q_einsum/w/a`. The `lora` method (below) trains exactly these leaves.

Axis conventions of Gemma's einsum weights (in -> out as the forward pass uses them):
  attn/q_einsum/w          (N, D, H)     in D, out (N, H)     == HF q_proj
  attn/kv_einsum/w         (2, K, D, H)  batch C, in D, out (K, H): separate k and v adapters as in HF
  attn/attn_vec_einsum/w   (N, H, D)     in (N, H), out D     == HF o_proj
  mlp/gating_einsum        (2, F, D)     batch gate|up, in D, out F: separate gate and up adapters
  mlp/linear               (F, D)        in F, out D          == HF down_proj
  other 2-D leaves                       in axis 0, out axis 1
"""

from __future__ import annotations

import functools
import math
import re
import string
from typing import Any

import jax
import jax.numpy as jnp

from grow_jax import tree_paths
from grow_jax.errors import ConfigError
from grow_jax.methods.base import Method, Option, register, trainable_count
from grow_jax.methods.partition import FROZEN, TRAINABLE
from grow_jax.types import Params


# q, kv, attn_vec and the MLP matrices (original and grown branches) of every layer.
DEFAULT_TARGETS = r"layer_\d+/(attn/(q_einsum|kv_einsum|attn_vec_einsum)/w|mlp/(grown_\d+/)?(gating_einsum|linear))"

# leaf-name suffix -> (batch axes, in axes, out axes)
_AXES = {
    "q_einsum/w": ((), (1,), (0, 2)),
    "kv_einsum/w": ((0,), (2,), (1, 3)),
    "attn_vec_einsum/w": ((), (0, 1), (2,)),
    "gating_einsum": ((0,), (2,), (1,)),
    "linear": ((), (0,), (1,)),
}


def _axes(path: str, ndim: int):
  for suffix, axes in _AXES.items():
    if path.endswith(suffix):
      return axes
  if ndim == 2:
    return (), (0,), (1,)
  raise ConfigError(f"LoRA target {path!r} has {ndim} dims and no known matrix layout; LoRA applies to "
                    f"{sorted(_AXES)} or 2-D leaves")


def _einsum_spec(ndim: int, axes) -> str:
  batch, ins, outs = axes
  letters = string.ascii_lowercase[:ndim]
  a = "".join(letters[i] for i in batch + ins) + "r"
  b = "".join(letters[i] for i in batch) + "r" + "".join(letters[i] for i in outs)
  return f"{a},{b}->{letters}"


def adapter_shapes(path: str, shape: tuple[int, ...], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  batch, ins, outs = _axes(path, len(shape))
  bs = tuple(shape[i] for i in batch)
  return bs + tuple(shape[i] for i in ins) + (rank,), bs + (rank,) + tuple(shape[i] for i in outs)


def _check_rank(rank) -> int:
  if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
    raise ConfigError(f"lora_rank={rank!r}: expected a positive integer")
  return rank


def target_paths(params: Params, targets: str = DEFAULT_TARGETS) -> list[str]:
  """Paths of the base leaves matched (fullmatch) by the `targets` regex; error if none."""
  try:
    regex = re.compile(targets)
  except re.error as e:
    raise ConfigError(f"lora_targets={targets!r}: bad regex: {e}") from None
  base = {p: x for p, x in tree_paths.flatten(params).items() if not p.startswith("lora/")}
  paths = [p for p in base if regex.fullmatch(p)]
  if not paths:
    raise ConfigError(f"lora_targets={targets!r} matches no parameter (paths look like "
                      f"{sorted(base)[:3]}...)")
  return paths


def init(params: Params, *, rank: int, rng, targets: str = DEFAULT_TARGETS) -> Params:
  """`params` plus params['lora'] with A ~ normal(0, 1/sqrt(in)), B = 0 for every target leaf."""
  rank = _check_rank(rank)
  flat = tree_paths.flatten(params)
  paths = target_paths(params, targets)
  specs = []
  for path in paths:
    w = flat[path]
    a_shape, b_shape = adapter_shapes(path, tuple(w.shape), rank)
    fan_in = math.prod(w.shape[i] for i in _axes(path, w.ndim)[1])
    specs.append((a_shape, b_shape, fan_in, jnp.dtype(w.dtype).name))
  arrays = _init_arrays(rng, tuple(specs))
  adapters = {}
  for path, (a, b) in zip(paths, arrays):
    adapters[f"{path}/a"], adapters[f"{path}/b"] = a, b
  return {**params, "lora": tree_paths.unflatten(adapters)}


@functools.partial(jax.jit, static_argnums=1)
def _init_arrays(rng, specs):
  # One compiled program for all adapters (eager jax.random costs a compile per distinct shape).
  # One normal draw sliced into every A: a single threefry in the program keeps compilation fast.
  sizes = [math.prod(a_shape) for a_shape, *_ in specs]
  z = jax.random.normal(rng, (sum(sizes),), jnp.float32)
  out, start = [], 0
  for size, (a_shape, b_shape, fan_in, dtype) in zip(sizes, specs):
    a = z[start:start + size].reshape(a_shape) / math.sqrt(fan_in)
    out.append((a.astype(dtype), jnp.zeros(b_shape, dtype)))
    start += size
  return out


def split(params: Params) -> tuple[Params, Params]:
  """(base params, lora subtree or {})."""
  return {k: v for k, v in params.items() if k != "lora"}, params.get("lora", {})


def delta(path: str, w_shape: tuple[int, ...], a, b):
  """The weight update A @ B laid out like the base weight."""
  return jnp.einsum(_einsum_spec(len(w_shape), _axes(path, len(w_shape))), a, b)


def merge(params: Params, scale: float = 1.0) -> Params:
  """What model.forward sees: every adapted leaf W -> W + scale * A @ B, and no 'lora' subtree.

  Jit-able and differentiable (gradients reach A and B). Identity on params without adapters.
  """
  base, adapters = split(params)
  if not adapters:
    return base
  flat_adapters = tree_paths.flatten(adapters)
  paths = sorted({p.rsplit("/", 1)[0] for p in flat_adapters})
  out = base
  for path in paths:
    w = tree_paths.get(base, path)
    d = delta(path, tuple(w.shape), flat_adapters[f"{path}/a"], flat_adapters[f"{path}/b"])
    out = tree_paths.set_path(out, path, w + (jnp.asarray(scale, w.dtype) * d).astype(w.dtype))
  return out


def params_per_rank(params: Params, targets: str = DEFAULT_TARGETS) -> int:
  """Adapter parameters per unit of rank (works on abstract params)."""
  flat = tree_paths.flatten(params)
  total = 0
  for path in target_paths(params, targets):
    a_shape, b_shape = adapter_shapes(path, tuple(flat[path].shape), 1)
    total += math.prod(a_shape) + math.prod(b_shape)
  return total


def rank_for_count(params: Params, target_count: int, targets: str = DEFAULT_TARGETS) -> tuple[int, int]:
  """(rank, adapter parameter count) whose count is closest to target_count (rank >= 1)."""
  per = params_per_rank(params, targets)
  lo = max(1, target_count // per)
  rank = min((lo, lo + 1), key=lambda r: abs(r * per - target_count))
  return rank, rank * per


def scale_for(rank: int, lora_alpha: float | None) -> float:
  return 1.0 if lora_alpha is None else float(lora_alpha) / rank


# ---- the method ---------------------------------------------------------------------------------------
def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


@register
class LoRA(Method):
  """Rank-r adapters on `lora_targets` (B = 0: the model is unchanged at init); the base weights are frozen.

  match_params_of: 'g_freeze' | 'g_train' | 'mlp_only' | an int — pick the rank whose adapter count is closest
  to that method's trainable count on this model grown by `match_factor` at the layers the run grows
  (Context.growth_layers: the trainer's config.growth.layers or growth plan; all by default), or on the model
  itself if it is already grown; lora_alpha: scale = alpha / rank (None: scale 1).
  """

  name = "lora"
  description = "rank-r adapters (B = 0 at init) on q/kv/attn_vec/gating/linear; the base weights are frozen"
  options = {
      "lora_rank": Option(8, help="adapter rank (unless match_params_of picks it)"),
      "lora_alpha": Option(None, type=float, help="scale = lora_alpha / rank (None: 1)"),
      "lora_targets": Option(DEFAULT_TARGETS, config=False, help="fullmatch regex of the adapted leaves"),
      "match_params_of": Option(None, type=str, help="pick the rank matching this method's trainable count"),
      "match_factor": Option(2, check=_positive_int, expected="a positive integer", config=False,
                             help="the growth factor the matched method is counted at"),
  }

  @classmethod
  def check_options(cls, options):
    super().check_options(options)
    if options["match_params_of"] is None:
      _check_rank(options["lora_rank"])

  def resolve(self, params):
    base, _ = split(params)
    targets, target = self.opts["lora_targets"], self.opts["match_params_of"]
    self.match: dict[str, Any] = {}
    if target is not None:
      count = target if isinstance(target, int) and not isinstance(target, bool) else trainable_count(
          target, self.model_config, base, self.opts["match_factor"], self.context.growth_layers)
      self.rank, n = rank_for_count(base, count, targets)
      self.match = {"match_params_of": target, "target_count": count, "lora_count": n,
                    "relative_gap": (n - count) / count}
    else:
      self.rank = _check_rank(self.opts["lora_rank"])
    self.scale = scale_for(self.rank, self.opts["lora_alpha"])

  def rules(self, config):
    return [(r"lora/.*", TRAINABLE), (".*", FROZEN)]

  def init_params(self, params, rng):
    if "lora" in params:
      return params
    return init(params, rank=self.rank, rng=rng, targets=self.opts["lora_targets"])

  def model_params(self, params):
    return merge(params, self.scale)

  def info(self):
    return {"lora_rank": self.rank, "lora_scale": self.scale, **self.match}


__all__ = ["LoRA", "DEFAULT_TARGETS", "init", "merge", "split", "delta", "target_paths", "params_per_rank",
           "rank_for_count", "adapter_shapes", "scale_for"]
