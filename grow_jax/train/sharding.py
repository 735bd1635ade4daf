"""Device mesh, path-regex sharding rules, and global batches.

Mesh axes (all `AxisType.Auto`, so ordinary sharded matmuls compile without annotations):
    data    pure data parallelism (parameters replicated)
    fsdp    data parallelism whose members also split the parameters and optimizer state (ZeRO-3 style)
    tensor  Megatron-style tensor parallelism: attention heads and MLP hidden units split across devices

Batches are split over ('data', 'fsdp'); each process loads the rows its devices address (`batch_blocks`).
Parameters follow `PARAM_RULES`: the first regex that matches a leaf's whole path ('/'-joined dict keys,
`re.fullmatch` as every path rule in grow_jax) gives its PartitionSpec; a leaf no rule matches is an error
naming it, and so is a dimension that its mesh axes do not divide. Optimizer states are sharded like the
parameter whose path and shape they carry (Adam moments), scalars (step counters) are replicated on the mesh.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from grow_jax import tree_paths
from grow_jax.errors import ShardingError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")



# ---- mesh --------------------------------------------------------------------------------------------
# config.mesh: the sizes of the mesh axes (data, fsdp, tensor; one may be -1 = fill) and how many slices or
# nodes the data and fsdp axes span over the slow data-centre network (dcn_data, dcn_fsdp; default 1 = one
# slice). Each axis of size s with dcn size k is k outer blocks of s / k devices inside a slice / node: the
# gradient all-reduce of 'data' (or the parameter all-gathers of 'fsdp') cross the slow network, while
# 'tensor' and the rest of 'fsdp' stay on the fast interconnect (TPU ICI, NVLink), as MaxText's ici_* x dcn_*.
DCN_KEYS = {"data": "dcn_data", "fsdp": "dcn_fsdp"}


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves the -1 entry of {'data', 'fsdp', 'tensor'} so the product is `num_devices`."""
  unknown = sorted(set(mesh_config) - set(MESH_AXES) - set(DCN_KEYS.values()))
  if unknown:
    raise ShardingError(f"config.mesh has unknown keys {unknown}; expected {list(MESH_AXES)} and "
                        f"{list(DCN_KEYS.values())}")
  sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}
  described = ",".join(f"{a}={s}" for a, s in sizes.items())
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ShardingError(f"config.mesh={described}: expected positive sizes with at most one -1 (fill)")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ShardingError(f"config.mesh={described}: {num_devices} devices are not divisible by {known}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ShardingError(f"config.mesh={described} needs {math.prod(sizes.values())} devices; "
                        f"there are {num_devices} (use -1 on one axis to fill)")
  return sizes


def dcn_shape(mesh_config: Mapping[str, int], sizes: Mapping[str, int]) -> dict[str, int]:
  """How many slices / nodes each mesh axis spans (config.mesh.dcn_*; 1 for 'tensor'), checked against the
  resolved axis sizes `sizes`."""
  dcn = {a: 1 for a in MESH_AXES}
  for axis, key in DCN_KEYS.items():
    value = mesh_config.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ShardingError(f"config.mesh.{key}={value!r}: expected a positive integer (the number of slices or "
                          f"nodes the {axis!r} axis spans; 1 = inside one slice / node)")
    if sizes[axis] % value:
      raise ShardingError(f"config.mesh.{key}={value} does not divide config.mesh.{axis}={sizes[axis]}: each of "
                          f"the {value} slices / nodes must hold an equal part of the {axis!r} axis")
    dcn[axis] = int(value)
  return dcn


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices), laid out on the hardware.

  Inside a slice / node, jax.experimental.mesh_utils.create_device_mesh places the axes on the physical
  topology (TPU ICI torus: 'tensor' first on the best-connected chips), splitting a physical axis where the
  sizes require it (allow_split_physical_axes: (1, 16, 4) on a v6e 8x8, whose axes are 8 and 8). With
  config.mesh.dcn_data / dcn_fsdp > 1 the mesh is hybrid, as mesh_utils.create_hybrid_device_mesh builds it:
  one such mesh per slice (TPU multislice, devices' slice_index) or per group of consecutive processes (GPU
  and CPU clusters: a node), placed as the outer blocks of the data / fsdp axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  dcn = dcn_shape(mesh_config, sizes)
  ici = {a: sizes[a] // dcn[a] for a in MESH_AXES}
  described = ",".join(f"{a}={s}" for a, s in sizes.items()) + "".join(
      f",{k}={dcn[a]}" for a, k in DCN_KEYS.items())
  granules = _granules(devices, math.prod(dcn.values()), described)
  per_granule = [_physical_mesh(tuple(ici[a] for a in MESH_AXES), g, described) for g in granules]
  order = np.arange(len(granules)).reshape(tuple(dcn[a] for a in MESH_AXES))
  blocks = np.vectorize(lambda i: per_granule[i], otypes=[object])(order)
  array = np.block(blocks.tolist()) if len(granules) > 1 else per_granule[0]
  return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _granules(devices: Sequence[Any], count: int, described: str) -> list[list[Any]]:
  """The devices in `count` groups joined by the slow network: TPU slices (slice_index) when the devices span
  several, else groups of consecutive processes (a node of a GPU cluster: its processes are consecutive
  under SLURM's block distribution and torchrun-style launchers). Every group has the same device count."""
  slices = sorted({getattr(d, "slice_index", 0) for d in devices})
  if len(slices) > 1:
    if count != len(slices):
      raise ShardingError(f"config.mesh={described}: the devices span {len(slices)} slices, so dcn_data * "
                          f"dcn_fsdp must be {len(slices)} (the slices are joined by the data-centre network)")
    groups = [[d for d in devices if d.slice_index == s] for s in slices]
  elif count == 1:
    return [list(devices)]
  else:
    if devices[0].platform == "tpu":
      raise ShardingError(f"config.mesh={described}: the devices form one TPU slice (all ICI); dcn_data and "
                          "dcn_fsdp count slices of a multislice job: expected 1")
    processes = sorted({d.process_index for d in devices})
    if len(processes) % count:
      raise ShardingError(f"config.mesh={described}: dcn_data * dcn_fsdp = {count} nodes do not divide the "
                          f"{len(processes)} processes (each node holds the same number of processes)")
    per = len(processes) // count
    node = {p: i // per for i, p in enumerate(processes)}
    groups = [[d for d in devices if node[d.process_index] == g] for g in range(count)]
  if len({len(g) for g in groups}) > 1:
    raise ShardingError(f"config.mesh={described}: the slices / nodes hold unequal device counts "
                        f"{sorted(len(g) for g in groups)}; expected the same count in each")
  return groups


def _physical_mesh(shape: tuple[int, ...], devices: Sequence[Any], described: str) -> np.ndarray:
  try:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (AssertionError, NotImplementedError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ShardingError(f"config.mesh={described}: {len(devices)} {devices[0].device_kind} devices cannot be "
                        f"laid out as {'x'.join(map(str, shape))}: {first}") from None


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def describe(mesh: Mesh) -> str:
  return ",".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)


# ---- parameter rules ---------------------------------------------------------------------------------
# Megatron layout: heads and MLP hidden units over 'tensor' (column-parallel in, row-parallel out), the model
# dim D over 'fsdp'. K (kv heads) is 1 on Gemma 3 270M/1B, so kv stays replicated over 'tensor' (MQA style).
# Grown head branches (attn/grown_j/, growth/attention.py) are split like the original heads.
# LoRA factors are small (rank r): replicated.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"embedder/input_embedding", P("tensor", "fsdp")),                        # (V, D)
    (r"layer_\d+/attn(/grown_\d+)?/q_einsum/w", P("tensor", "fsdp", None)),                 # (N, D, H)
    (r"layer_\d+/attn(/grown_\d+)?/kv_einsum/w", P(None, None, "fsdp", None)),              # (2, K, D, H)
    (r"layer_\d+/attn(/grown_\d+)?/attn_vec_einsum/w", P("tensor", None, "fsdp")),          # (N, H, D)
    (r"layer_\d+/mlp(/grown_\d+)?/gating_einsum", P(None, "tensor", "fsdp")),  # (2, F, D)
    (r"layer_\d+/mlp(/grown_\d+)?/linear", P("tensor", "fsdp")),               # (F, D)
    (r"(.*/)?[^/]*norm/scale", P()),                                           # (D,) (H,)
    (r"lora/.*", P()),                                                         # LoRA factors: small
)


def spec_for(path: str, rules: Iterable[tuple[str, P]] = PARAM_RULES) -> P:
  for pattern, spec in rules:
    if re.fullmatch(pattern, path):
      return spec
  raise ShardingError(f"no sharding rule matches parameter {path!r}; add a (regex, PartitionSpec) rule "
                      "to grow_jax.train.sharding.PARAM_RULES")


def check_spec(path: str, shape: Sequence[int], spec: P, mesh: Mesh) -> None:
  """Raises ShardingError naming the leaf, dim and axis size when a sharded dim is not divisible."""
  if len(spec) > len(shape):
    raise ShardingError(f"{path}: PartitionSpec {spec} has {len(spec)} entries for a rank-{len(shape)} leaf "
                        f"of shape {tuple(shape)}")
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    size = math.prod(mesh.shape[a] for a in names)
    if shape[dim] % size:
      raise ShardingError(f"{path}: dim {dim} of shape {tuple(shape)} has size {shape[dim]}, not divisible by "
                          f"mesh axis {'x'.join(names)!r} of size {size} (mesh {describe(mesh)})")


def param_shardings(abstract_params, mesh: Mesh, rules: Iterable[tuple[str, P]] = PARAM_RULES):
  """NamedSharding for every leaf of a params tree (arrays or ShapeDtypeStructs), checked against the mesh."""
  rules = tuple(rules)

  def one(path, leaf):
    spec = spec_for(path, rules)
    check_spec(path, leaf.shape, spec, mesh)
    return NamedSharding(mesh, spec)

  return tree_paths.map_with_path(one, abstract_params)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def like_params_shardings(abstract_tree, params_shardings, abstract_params, mesh: Mesh):
  """Shardings for a tree that holds parameter-shaped leaves (optimizer state, EWC Fisher, anchors).

  A leaf whose path ends with a parameter's path and has that parameter's shape gets the parameter's
  sharding; every other leaf (step counters, scalars, factored statistics) is replicated on the mesh.
  """
  by_path = {}
  for (path, sh), (_, ab) in zip(tree_paths.flatten_items(params_shardings), tree_paths.flatten_items(abstract_params)):
    by_path[path] = (tuple(ab.shape), sh)
  rep = replicated(mesh)

  def one(path, leaf):
    parts = path.split("/")
    for i in range(len(parts)):     # longest suffix first
      hit = by_path.get("/".join(parts[i:]))
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return rep

  return tree_paths.map_with_path(one, abstract_tree)


# ---- batches -----------------------------------------------------------------------------------------
def batch_sharding(mesh: Mesh, rank: int = 3, batch_dim: int = 1) -> NamedSharding:
  """Batches (A microbatches, B, T): split B over ('data', 'fsdp')."""
  spec = [None] * rank
  spec[batch_dim] = BATCH_AXES
  return NamedSharding(mesh, P(*spec))


def check_batch_size(batch_size: int, grad_accum_steps: int, mesh: Mesh, process_count: int | None = None, *,
                     field: str = "batch_size") -> None:
  """The batch splits into grad_accum_steps microbatches whose rows divide over data x fsdp.

  process_count is not used: which rows each process loads follows from the mesh (`batch_blocks`), and a
  microbatch that data x fsdp divides also divides into those blocks. It is accepted for older callers.
  """
  del process_count
  if grad_accum_steps < 1:
    raise ShardingError(f"grad_accum_steps={grad_accum_steps}: expected a positive integer")
  if batch_size % grad_accum_steps:
    raise ShardingError(f"{field}={batch_size} is not divisible by grad_accum_steps={grad_accum_steps}")
  micro = batch_size // grad_accum_steps
  dp = data_parallel_size(mesh)
  if micro % dp:
    raise ShardingError(f"{field}={batch_size} / grad_accum_steps={grad_accum_steps} = {micro} rows per "
                        f"microbatch is not divisible by the data-parallel size data*fsdp={dp} "
                        f"(mesh {describe(mesh)}); expected a multiple of {dp * grad_accum_steps}")


def batch_blocks(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
  """(block, blocks): the global batch is `blocks` equal blocks of rows, and this process loads block `block`.

  Processes whose devices address the same batch rows (a tensor or fsdp group spanning hosts: tensor=4 on a
  v5e 4x4, whose hosts hold 2x2 chips) form one block and load the same rows; when every process addresses
  rows of its own, blocks is the process count and block the process index. Block b is rows
  [b * B / blocks, (b + 1) * B / blocks) of the global batch the data pipeline builds (the same whatever the
  process count); `global_batch` places them on the rows of the array its devices address.
  """
  rows = _process_rows(mesh)
  pi = jax.process_index() if process_index is None else process_index
  if pi not in rows:
    raise ShardingError(f"process {pi} has no device in the mesh {describe(mesh)}; expected every process to "
                        "hold part of the mesh")
  blocks = sorted(set(rows.values()), key=min)
  return blocks.index(rows[pi]), len(blocks)


@functools.lru_cache(maxsize=32)
def _process_rows(mesh: Mesh) -> dict[int, frozenset[int]]:
  """{process index: the data x fsdp shards (batch row blocks) its devices address}, checked to form equal,
  disjoint blocks."""
  dp = data_parallel_size(mesh)
  rows: dict[int, set[int]] = {}
  for device, index in batch_sharding(mesh, rank=1, batch_dim=0).devices_indices_map((dp,)).items():
    rows.setdefault(device.process_index, set()).update(range(dp)[index[0]])
  out = {p: frozenset(r) for p, r in rows.items()}
  distinct = sorted(set(out.values()), key=min)
  for i, a in enumerate(distinct):
    for b in distinct[i + 1:]:
      if a & b or len(a) != len(b):
        pa, pb = (min(p for p, r in out.items() if r == x) for x in (a, b))
        raise ShardingError(f"mesh {describe(mesh)}: processes {pa} and {pb} address overlapping but different "
                            f"batch shards ({sorted(a)} and {sorted(b)}); expected processes to share all their "
                            "batch rows or none (lay the mesh out with sharding.make_mesh)")
  return out


def to_microbatches(local_batch: Mapping[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """(B, T) -> (A, B/A, T): microbatch a holds rows a, a + A, a + 2A, ... of the batch.

  Interleaving keeps each process's rows a contiguous block of every microbatch, so the same global batch
  gives the same microbatches whatever the process count.
  """
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    b = v.shape[0]
    if b % accum:
      raise ShardingError(f"local batch of {b} rows is not divisible by grad_accum_steps={accum}")
    out[k] = np.swapaxes(v.reshape(b // accum, accum, *v.shape[1:]), 0, 1)
  return out


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, accum: int = 1) -> dict[str, jax.Array]:
  """This process's block of rows (`batch_blocks`) -> global (A, B, T) arrays sharded over ('data', 'fsdp')
  (multi-host safe); processes of one block pass the same rows."""
  micro = to_microbatches(local_batch, accum)
  blocks = len(set(_process_rows(mesh).values()))
  out = {}
  for k, v in micro.items():
    sharding = batch_sharding(mesh, v.ndim)
    shape = (v.shape[0], v.shape[1] * blocks, *v.shape[2:])
    out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
  return out


def put_global(tree, shardings):
  """Host arrays (the same full value on every process) -> global sharded arrays (multi-host safe)."""
  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(one, tree, shardings)
