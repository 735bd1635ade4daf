"""Gemma 3 text-decoder configuration: one frozen dataclass, presets, and shape helpers.

Parameter layout (DeepMind names, plain nested dicts; `'/'.join(keys)` gives a leaf's path):

    embedder/input_embedding                 (V, D)
    layer_{i}/pre_attention_norm/scale       (D,)
    layer_{i}/attn/q_einsum/w                (N, D, H)
    layer_{i}/attn/kv_einsum/w               (2, K, D, H)
    layer_{i}/attn/attn_vec_einsum/w         (N, H, D)
    layer_{i}/attn/_query_norm/scale         (H,)
    layer_{i}/attn/_key_norm/scale           (H,)
    layer_{i}/attn/grown_{j}/q_einsum/w      (N_j, D, H)   head branch j >= 1: added by attention growth
    layer_{i}/attn/grown_{j}/kv_einsum/w     (2, K_j, D, H)  only when the branch has its own kv heads
    layer_{i}/attn/grown_{j}/attn_vec_einsum/w  (N_j, H, D)
    layer_{i}/post_attention_norm/scale      (D,)
    layer_{i}/pre_ffw_norm/scale             (D,)
    layer_{i}/mlp/gating_einsum              (2, F, D)     branch 0: the original MLP
    layer_{i}/mlp/linear                     (F, D)
    layer_{i}/mlp/grown_{j}/gating_einsum    (2, F_j, D)   branch j >= 1: added by growth
    layer_{i}/mlp/grown_{j}/linear           (F_j, D)
    layer_{i}/post_ffw_norm/scale            (D,)
    final_norm/scale                         (D,)

Norm scales are stored as Gemma stores them: the norm multiplies by (1 + scale).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

from grow_jax.errors import ConfigError

LOCAL = "local"    # sliding-window attention, RoPE base `local_base_frequency`
GLOBAL = "global"  # full causal attention, RoPE base `global_base_frequency` (and `global_scale_factor`)

# Rematerialisation policies of the decoder layers (model/transformer.py `REMAT_POLICIES` maps each to a
# jax.checkpoint policy): "none" keeps every activation; the rest recompute inside each layer in the backward.
REMAT_NAMES = ("none", "full", "dots", "dots_no_batch", "minimal", "save_dot_with_context_except_mlp",
               "save_dot_except_mlpwi", "save_dot_except_mlp", "save_qkv_proj", "save_out_proj")
# Fields that say how the forward is computed, not what the model is: never serialised (`to_dict`), so
# checkpoint meta, params files and HF exports are the same whatever they are set to.
COMPUTE_FIELDS = ("remat", "scan_layers")
# A task branch's name (ModelConfig.mlp_branch_tasks; growth/tasks.py).
TASK_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")



@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Gemma 3 text decoder (hashable: usable as a jit static argument)."""

  vocab_size: int
  embed_dim: int              # D
  hidden_dim: int             # F, width of the original MLP branch of every layer
  num_layers: int
  num_heads: int              # N
  num_kv_heads: int           # K
  head_dim: int               # H
  query_pre_attn_scalar: float
  sliding_window: int
  local_base_frequency: float = 10_000.0
  global_base_frequency: float = 1_000_000.0
  global_scale_factor: float = 1.0          # linear RoPE scaling of global layers (Gemma 3 4B: 8)
  sliding_window_pattern: int = 6           # every 6th layer is global: 5 local : 1 global
  attention_types: tuple[str, ...] | None = None  # explicit per-layer override of the pattern
  rms_norm_eps: float = 1e-6
  final_logit_softcap: float | None = None
  attn_logit_softcap: float | None = None
  # Per-layer MLP branch widths: mlp_branches[i] = (F_0, F_1, ...), branch 0 the original MLP of layer i
  # (width may differ per layer), branches j >= 1 added by growth. None = every layer ((hidden_dim,)).
  mlp_branches: tuple[tuple[int, ...], ...] | None = None
  # Per-layer attention head branches: attn_branches[i] = ((N, K), (N_1, K_1), ...), branch 0 the original
  # heads (num_heads, num_kv_heads), branch j >= 1 added by attention growth with N_j query heads and K_j kv
  # heads of its own, or K_j = 0: its queries read branch 0's kv heads (query head n of the branch uses kv
  # head n // (N_j / K)). None = no head branches anywhere.
  attn_branches: tuple[tuple[tuple[int, int], ...], ...] | None = None
  # Task branches (growth/tasks.py): mlp_branch_tasks[i] = the task names of layer i's branches 1, 2, ... in the
  # order they were grown (() for a layer with one branch), each a copy of branch 0 that took half of branch
  # 0's share of the down projection. None = no branch carries a task name (grown by grow_mlp, or not grown).
  mlp_branch_tasks: tuple[tuple[str, ...], ...] | None = None
  param_dtype: str = "float32"
  dtype: str = "float32"                    # compute dtype of activations
  max_position_embeddings: int = 32_768
  bos_token_id: int = 2
  eos_token_id: int = 1
  pad_token_id: int = 0
  # Compute settings (COMPUTE_FIELDS; not architecture): per-layer rematerialisation (one of REMAT_NAMES)
  # and a jax.lax.scan over runs of layers of identical parameter shapes, in the cache-free forward.
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    positive = ("vocab_size", "embed_dim", "hidden_dim", "num_layers", "num_heads", "num_kv_heads",
                "head_dim", "sliding_window", "sliding_window_pattern")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"ModelConfig.{name}={value!r}: expected a positive integer")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
                        f"num_kv_heads={self.num_kv_heads}")
    if self.attention_types is not None:
      types = tuple(self.attention_types)
      object.__setattr__(self, "attention_types", types)
      if len(types) != self.num_layers or any(t not in (LOCAL, GLOBAL) for t in types):
        raise ConfigError(f"ModelConfig.attention_types={types!r}: expected {self.num_layers} entries "
                          f"each '{LOCAL}' or '{GLOBAL}'")
    if self.mlp_branches is not None:
      branches = tuple(tuple(int(f) for f in layer) for layer in self.mlp_branches)
      object.__setattr__(self, "mlp_branches", branches)
      if len(branches) != self.num_layers:
        raise ConfigError(f"ModelConfig.mlp_branches has {len(branches)} layers, expected "
                          f"num_layers={self.num_layers}")
      for i, layer in enumerate(branches):
        if not layer or any(f <= 0 for f in layer):
          raise ConfigError(f"ModelConfig.mlp_branches[{i}]={layer!r}: expected one or more positive widths")
    if self.attn_branches is not None:
      self._check_attn_branches()
    if self.mlp_branch_tasks is not None:
      self._check_mlp_branch_tasks()
    if self.remat not in REMAT_NAMES:
      raise ConfigError(f"ModelConfig.remat={self.remat!r}: expected one of {list(REMAT_NAMES)}")
    if not isinstance(self.scan_layers, bool):
      raise ConfigError(f"ModelConfig.scan_layers={self.scan_layers!r}: expected True or False")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r}: expected 'float32', 'bfloat16' "
                          "or 'float16'")

  def _check_attn_branches(self) -> None:
    branches = tuple(tuple((int(n), int(k)) for n, k in layer) for layer in self.attn_branches)
    object.__setattr__(self, "attn_branches", branches)
    if len(branches) != self.num_layers:
      raise ConfigError(f"ModelConfig.attn_branches has {len(branches)} layers, expected num_layers={self.num_layers}")
    for i, layer in enumerate(branches):
      if not layer or layer[0] != (self.num_heads, self.num_kv_heads):
        raise ConfigError(f"ModelConfig.attn_branches[{i}]={layer!r}: branch 0 must be (num_heads, num_kv_heads)="
                          f"{(self.num_heads, self.num_kv_heads)}")
      for j, (n, k) in enumerate(layer[1:], start=1):
        readers = k or self.num_kv_heads
        if n <= 0 or k < 0 or n % readers:
          raise ConfigError(f"ModelConfig.attn_branches[{i}][{j}]=({n}, {k}): expected N_j > 0 query heads, "
                            f"K_j >= 0 kv heads (0 = branch 0's {self.num_kv_heads}) dividing N_j")

  def _check_mlp_branch_tasks(self) -> None:
    tasks = tuple(tuple(layer) for layer in self.mlp_branch_tasks)
    object.__setattr__(self, "mlp_branch_tasks", tasks)
    if len(tasks) != self.num_layers:
      raise ConfigError(f"ModelConfig.mlp_branch_tasks has {len(tasks)} layers, expected num_layers={self.num_layers}")
    for i, names in enumerate(tasks):
      grown = len(self.layer_mlp_branches(i)) - 1
      if len(names) != grown:
        raise ConfigError(f"ModelConfig.mlp_branch_tasks[{i}]={list(names)}: expected {grown} task name(s), one "
                          f"per grown branch of mlp_branches[{i}]={self.layer_mlp_branches(i)}")
      if any(not isinstance(n, str) or not TASK_NAME.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"ModelConfig.mlp_branch_tasks[{i}]={list(names)}: expected distinct task names of "
                          f"letters, digits, '_', '-' and '.' (at most 64)")

  # ---- derived per-layer facts -------------------------------------------------------------------
  def attention_type(self, layer: int) -> str:
    if self.attention_types is not None:
      return self.attention_types[layer]
    return GLOBAL if (layer + 1) % self.sliding_window_pattern == 0 else LOCAL

  def layer_mlp_branches(self, layer: int) -> tuple[int, ...]:
    if self.mlp_branches is None:
      return (self.hidden_dim,)
    return self.mlp_branches[layer]

  def layer_mlp_width(self, layer: int) -> int:
    """Total MLP width of a layer (all branches merged)."""
    return sum(self.layer_mlp_branches(layer))

  def layer_branch_tasks(self, layer: int) -> tuple[str, ...] | None:
    """The task names of layer `layer`'s grown MLP branches 1, 2, ... (None: they carry none)."""
    if self.mlp_branch_tasks is None:
      return None if len(self.layer_mlp_branches(layer)) > 1 else ()
    return self.mlp_branch_tasks[layer]

  def layer_mlp_sum_order(self, layer: int) -> tuple[int, ...]:
    """The order the forward adds layer `layer`'s grown branches to branch 0: 1, 2, ..., or for task branches
    the newest first (m, ..., 1), so that branch 0 + the newest task's copy is summed first and each task growth
    is bit-exact (growth/tasks.py)."""
    grown = range(1, len(self.layer_mlp_branches(layer)))
    return tuple(reversed(grown)) if self.mlp_branch_tasks is not None else tuple(grown)

  def layer_attn_branches(self, layer: int) -> tuple[tuple[int, int], ...]:
    """((N, K), (N_1, K_1), ...): the layer's head branches, branch 0 the original heads."""
    if self.attn_branches is None:
      return ((self.num_heads, self.num_kv_heads),)
    return self.attn_branches[layer]

  @property
  def is_grown(self) -> bool:
    """Some layer's MLP has grown branches (attention growth: `attn_grown`)."""
    return any(len(self.layer_mlp_branches(i)) > 1 for i in range(self.num_layers))

  @property
  def attn_grown(self) -> bool:
    """Some layer has grown attention-head branches."""
    return any(len(self.layer_attn_branches(i)) > 1 for i in range(self.num_layers))

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  # ---- serialisation (checkpoint metadata, workdir config.json) ----------------------------------
  def to_dict(self) -> dict[str, Any]:
    """The architecture's fields (COMPUTE_FIELDS left out); `from_dict` accepts both."""
    d = dataclasses.asdict(self)
    for key in COMPUTE_FIELDS:
      del d[key]
    if d["mlp_branch_tasks"] is None:        # models without task branches serialise as they always have
      del d["mlp_branch_tasks"]
    else:
      d["mlp_branch_tasks"] = [list(x) for x in d["mlp_branch_tasks"]]
    for key in ("attention_types", "mlp_branches"):
      if d[key] is not None:
        d[key] = [list(x) if isinstance(x, (tuple, list)) else x for x in d[key]]
    if d["attn_branches"] is not None:
      d["attn_branches"] = [[list(b) for b in layer] for layer in d["attn_branches"]]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"ModelConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
    d = dict(d)
    if d.get("attention_types") is not None:
      d["attention_types"] = tuple(d["attention_types"])
    if d.get("mlp_branches") is not None:
      d["mlp_branches"] = tuple(tuple(x) for x in d["mlp_branches"])
    if d.get("attn_branches") is not None:
      d["attn_branches"] = tuple(tuple(tuple(b) for b in layer) for layer in d["attn_branches"])
    if d.get("mlp_branch_tasks") is not None:
      d["mlp_branch_tasks"] = tuple(tuple(x) for x in d["mlp_branch_tasks"])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---- presets ---------------------------------------------------------------------------------------
_PRESETS: dict[str, dict[str, Any]] = {
    # google/gemma-3-270m
    "gemma3_270m": dict(vocab_size=262_144, embed_dim=640, hidden_dim=2048, num_layers=18, num_heads=4,
                        num_kv_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    # google/gemma-3-1b-pt
    "gemma3_1b": dict(vocab_size=262_144, embed_dim=1152, hidden_dim=6912, num_layers=26, num_heads=4,
                      num_kv_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    # google/gemma-3-4b-pt, text decoder only (global RoPE linearly scaled by 8)
    "gemma3_4b": dict(vocab_size=262_208, embed_dim=2560, hidden_dim=10_240, num_layers=34, num_heads=8,
                      num_kv_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                      global_scale_factor=8.0, max_position_embeddings=131_072),
    # A random model for tests: 7 layers so both attention kinds and a second local block appear,
    # a short window so sequences longer than it exercise the sliding mask.
    "tiny": dict(vocab_size=512, embed_dim=64, hidden_dim=128, num_layers=7, num_heads=4, num_kv_heads=2,
                 head_dim=16, query_pre_attn_scalar=16, sliding_window=8, max_position_embeddings=1024),
}


def preset_names() -> list[str]:
  return sorted(_PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
  """A named architecture, e.g. `get_preset('gemma3_1b', dtype='bfloat16')`."""
  key = name.replace("-", "_").lower()
  if key not in _PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; expected one of {preset_names()}")
  return ModelConfig(**{**_PRESETS[key], **overrides})


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Path -> shape of every leaf, computed from the config alone (no weights)."""
  D, F, N, K, H, V = (config.embed_dim, config.hidden_dim, config.num_heads, config.num_kv_heads,
                      config.head_dim, config.vocab_size)
  del F
  shapes = {"embedder/input_embedding": (V, D), "final_norm/scale": (D,)}
  for i in range(config.num_layers):
    p = f"layer_{i}"
    shapes.update({
        f"{p}/pre_attention_norm/scale": (D,),
        f"{p}/attn/q_einsum/w": (N, D, H),
        f"{p}/attn/kv_einsum/w": (2, K, D, H),
        f"{p}/attn/attn_vec_einsum/w": (N, H, D),
        f"{p}/attn/_query_norm/scale": (H,),
        f"{p}/attn/_key_norm/scale": (H,),
        f"{p}/post_attention_norm/scale": (D,),
        f"{p}/pre_ffw_norm/scale": (D,),
        f"{p}/post_ffw_norm/scale": (D,),
    })
    for j, (n, k) in enumerate(config.layer_attn_branches(i)[1:], start=1):
      shapes[f"{p}/attn/grown_{j}/q_einsum/w"] = (n, D, H)
      if k:
        shapes[f"{p}/attn/grown_{j}/kv_einsum/w"] = (2, k, D, H)
      shapes[f"{p}/attn/grown_{j}/attn_vec_einsum/w"] = (n, H, D)
    for j, width in enumerate(config.layer_mlp_branches(i)):
      prefix = f"{p}/mlp" if j == 0 else f"{p}/mlp/grown_{j}"
      shapes[f"{prefix}/gating_einsum"] = (2, width, D)
      shapes[f"{prefix}/linear"] = (width, D)
  return shapes


def abstract_params(config: ModelConfig, dtype: str | None = None) -> dict[str, Any]:
  """ShapeDtypeStructs of every parameter from `param_shapes` (no tracing, no memory; full-size presets fine)."""
  import jax
  import jax.numpy as jnp
  from grow_jax import tree_paths
  dt = jnp.dtype(dtype or config.param_dtype)
  return tree_paths.unflatten({p: jax.ShapeDtypeStruct(s, dt) for p, s in param_shapes(config).items()})


def mlp_branch_prefix(layer: int, branch: int) -> str:
  """Path prefix of an MLP branch's leaves: branch 0 is the original MLP."""
  return f"layer_{layer}/mlp" if branch == 0 else f"layer_{layer}/mlp/grown_{branch}"


def count_params(config: ModelConfig) -> int:
  total = 0
  for shape in param_shapes(config).values():
    n = 1
    for s in shape:
      n *= s
    total += n
  return total


def parse_layers(spec: str | Sequence[int] | None, num_layers: int, field: str = "layers") -> tuple[int, ...] | None:
  """'0,3,5' or [0, 3, 5] -> (0, 3, 5), checked against the layer count; None/'' / 'all' -> None."""
  if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
    return None
  if isinstance(spec, str):
    try:
      layers = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
      raise ConfigError(f"{field}={spec!r}: expected comma-separated layer indices like '0,3,5'") from None
  else:
    layers = tuple(int(s) for s in spec)
  bad = [l for l in layers if not 0 <= l < num_layers]
  if bad:
    raise ConfigError(f"{field}={list(layers)}: indices {bad} out of range 0..{num_layers - 1}")
  if len(set(layers)) != len(layers):
    raise ConfigError(f"{field}={list(layers)}: repeated layer indices")
  return layers
