"""Meshes on real TPU slices (compile-only devices from libtpu: coords, process_index, slice_index) and hybrid
ICI x DCN meshes over slices or nodes; which rows of the global batch each process loads."""

import dataclasses
import functools
import importlib.util
import itertools
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils

from grow_jax.errors import ConfigError, ShardingError
from grow_jax.train import sharding

import processes

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed: pip install 'jax[tpu]==0.10.2' gives compile-only TPU topologies on CPU")


@functools.cache
def topology(name: str, num_slices: int = 1) -> tuple:
  # Several test processes may load libtpu at once (compile-only: no chip is opened).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  return tuple(topologies.get_topology_desc(name, platform="tpu", **kwargs).devices)


def splits(n: int):
  """Every (data, fsdp, tensor) of powers of two whose product is n."""
  k = int(math.log2(n))
  return [(2 ** a, 2 ** b, 2 ** (k - a - b)) for a in range(k + 1) for b in range(k + 1 - a)]


def cases():
  for name in ("v5e:4x4", "v5e:8x8", "v6e:4x4", "v6e:8x8", "v5p:2x2x2"):
    n = {"4x4": 16, "8x8": 64, "2x2x2": 8}[name.split(":")[1]]
    yield from ((name, s) for s in splits(n))


def is_box(devices) -> bool:
  """The chips form a contiguous block of the torus (neighbours on ICI)."""
  coords = np.array([d.coords for d in devices])
  return int(np.prod(coords.max(0) - coords.min(0) + 1)) == len(devices)


def groups(mesh, axes):
  """The device groups along `axes` (names), one row per group."""
  names = list(mesh.axis_names)
  order = [names.index(a) for a in names if a not in axes] + [names.index(a) for a in axes]
  size = math.prod(mesh.shape[a] for a in axes)
  return np.transpose(mesh.devices, order).reshape(-1, size)


def config(shape, **dcn):
  return dict(zip(sharding.MESH_AXES, shape), **dcn)


# ---- one slice ---------------------------------------------------------------------------------------------
def on_the_slice(monkeypatch, name):
  """As the trainer runs on the pod: every chip of the slice is jax.devices(), make_mesh(config.mesh)."""
  devices = topology(name)
  monkeypatch.setattr(jax, "devices", lambda *args: list(devices))
  return devices


@needs_libtpu
def test_v6e_8x8_with_fsdp_16_tensor_4_builds(monkeypatch):
  # The 8x8 torus has no axis of 16: one physical axis is split between fsdp and tensor.
  devices = on_the_slice(monkeypatch, "v6e:8x8")
  mesh = sharding.make_mesh(config((1, 16, 4)))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 4}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
  assert all(is_box(g) for g in groups(mesh, ["tensor"]))


@needs_libtpu
@pytest.mark.parametrize("name, shape", list(cases()), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_every_split_builds_and_keeps_model_parallel_groups_on_neighbouring_chips(monkeypatch, name, shape):
  devices = on_the_slice(monkeypatch, name)
  mesh = sharding.make_mesh(config(shape))
  assert tuple(mesh.shape.values()) == shape
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
  # A tensor group, and the fsdp x tensor group of one data replica (every collective but the gradient
  # all-reduce), is a contiguous block of chips: its rings run over ICI neighbours only.
  assert all(is_box(g) for g in groups(mesh, ["tensor"])), "tensor groups are scattered"
  assert all(is_box(g) for g in groups(mesh, ["fsdp", "tensor"])), "fsdp x tensor groups are scattered"


@needs_libtpu
def test_a_slice_is_not_split_over_the_data_centre_network():
  with pytest.raises(ShardingError, match=r"one TPU slice \(all ICI\); dcn_data and dcn_fsdp count slices"):
    sharding.make_mesh(config((2, 8, 1), dcn_data=2), topology("v5e:4x4"))


# ---- hybrid meshes: TPU multislice -------------------------------------------------------------------------
@needs_libtpu
def test_two_slices_data_over_dcn_matches_create_hybrid_device_mesh():
  devices = topology("v5e:4x4", num_slices=2)                     # 2 slices x 16 chips
  mesh = sharding.make_mesh(config((4, 4, 2), dcn_data=2), devices)
  expected = mesh_utils.create_hybrid_device_mesh((2, 4, 2), (2, 1, 1), list(devices),
                                                  allow_split_physical_axes=True)
  assert [d.id for d in mesh.devices.flat] == [d.id for d in expected.flat]
  # data crosses the slices; every model replica (fsdp x tensor) lies inside one slice.
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slice_of[:2] == 0).all() and (slice_of[2:] == 1).all()
  assert all(len({d.slice_index for d in g}) == 1 for g in groups(mesh, ["fsdp", "tensor"]))


@needs_libtpu
def test_two_slices_fsdp_over_dcn():
  devices = topology("v5e:4x4", num_slices=2)
  mesh = sharding.make_mesh(config((1, -1, 4), dcn_fsdp=2), devices)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 4}
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slice_of[:, :4] == 0).all() and (slice_of[:, 4:] == 1).all()
  assert all(len({d.slice_index for d in g}) == 1 for g in groups(mesh, ["tensor"]))


@needs_libtpu
@pytest.mark.parametrize("mesh_config, message", [
    (config((2, 16, 1)), r"span 2 slices, so dcn_data \* dcn_fsdp must be 2"),
    (config((4, 8, 1), dcn_data=4), r"config.mesh=data=4,fsdp=8,tensor=1,dcn_data=4,dcn_fsdp=1: the devices span "
                                    r"2 slices, so dcn_data \* dcn_fsdp must be 2"),
    (config((1, 32, 1), dcn_data=2), r"config.mesh.dcn_data=2 does not divide config.mesh.data=1"),
    (config((2, 16, 1), dcn_data=0), r"config.mesh.dcn_data=0: expected a positive integer"),
    (config((2, 16, 1), dcn_tensor=2), r"config.mesh has unknown keys \['dcn_tensor'\]"),
])
def test_hybrid_sizes_that_do_not_fit_the_slices_are_config_errors(mesh_config, message):
  with pytest.raises(ConfigError, match=message):
    sharding.make_mesh(mesh_config, topology("v5e:4x4", num_slices=2))


# ---- hybrid meshes: GPU clusters (a node = consecutive processes) -----------------------------------------
@dataclasses.dataclass(frozen=True)
class FakeGpu:
  """What mesh building reads from a GPU device."""
  id: int
  process_index: int
  platform: str = "gpu"
  device_kind: str = "NVIDIA H100 80GB HBM3"


def gpu_cluster(nodes, gpus_per_node, processes_per_node):
  per_process = gpus_per_node // processes_per_node
  return [FakeGpu(i, i // per_process) for i in range(nodes * gpus_per_node)]


@pytest.mark.parametrize("processes_per_node", [1, 8])
def test_data_over_nodes_fsdp_and_tensor_inside_a_node(processes_per_node):
  devices = gpu_cluster(4, 8, processes_per_node)
  mesh = sharding.make_mesh(config((4, 4, 2), dcn_data=4), devices)
  node = np.vectorize(lambda d: d.id // 8)(mesh.devices)
  assert (node == np.arange(4)[:, None, None]).all()            # data index i: node i
  assert sorted(d.id for d in mesh.devices.flat) == list(range(32))


def test_data_and_fsdp_over_nodes():
  mesh = sharding.make_mesh(config((2, 8, 2), dcn_data=2, dcn_fsdp=2), gpu_cluster(4, 8, 1))
  node = np.vectorize(lambda d: d.id // 8)(mesh.devices)
  assert (node[:, :4] == np.array([[0], [2]])[:, :, None]).all()
  assert (node[:, 4:] == np.array([[1], [3]])[:, :, None]).all()


@pytest.mark.parametrize("nodes, mesh_config, message", [
    (3, config((2, 12, 1), dcn_data=2), r"dcn_data \* dcn_fsdp = 2 nodes do not divide the 3 processes"),
    (4, config((1, 16, 2), dcn_fsdp=32), r"config.mesh.dcn_fsdp=32 does not divide config.mesh.fsdp=16"),
])
def test_gpu_cluster_sizes_that_do_not_fit_are_config_errors(nodes, mesh_config, message):
  with pytest.raises(ConfigError, match=message):
    sharding.make_mesh(mesh_config, gpu_cluster(nodes, 8, 1))


# ---- which rows of the global batch each process loads -----------------------------------------------------
def shards_of(mesh):
  """{process: the data x fsdp shards its devices address}."""
  out = {}
  for (i, j, _), d in np.ndenumerate(mesh.devices):
    out.setdefault(d.process_index, set()).add(i * mesh.shape["fsdp"] + j)
  return out


def test_one_process_loads_the_whole_batch():
  assert sharding.batch_blocks(sharding.make_mesh(config((2, 2, 2)))) == (0, 1)


@needs_libtpu
@pytest.mark.parametrize("shape, blocks", [((1, 4, 4), 2), ((2, 2, 4), 2), ((1, 2, 8), 2), ((1, 1, 16), 1), ((1, 16, 1), 4),
                                           ((4, 4, 1), 4), ((2, 8, 1), 4)])
def test_processes_that_address_the_same_rows_share_a_block(monkeypatch, shape, blocks):
  # v5e 4x4: 4 hosts of 2x2 chips. tensor=4 lies along a torus axis of 4, across two hosts.
  on_the_slice(monkeypatch, "v5e:4x4")
  mesh = sharding.make_mesh(config(shape))
  shards = shards_of(mesh)
  got = {p: sharding.batch_blocks(mesh, process_index=p) for p in range(4)}
  assert {n for _, n in got.values()} == {blocks}
  for p, q in itertools.combinations(range(4), 2):
    assert (got[p][0] == got[q][0]) == (shards[p] == shards[q])
  # blocks are numbered in the order of their first shard
  firsts = sorted((min(shards[p]), b) for p, (b, _) in got.items())
  assert [b for _, b in firsts] == sorted(b for _, b in firsts)


@needs_libtpu
def test_processes_that_share_some_rows_but_not_all_are_an_error():
  devices = sorted(topology("v5e:4x4"), key=lambda d: d.id)
  by_process = {p: [d for d in devices if d.process_index == p] for p in range(4)}
  layout = [[0, 0], [0, 1], [0, 1], [1, 1], [2, 2], [2, 2], [3, 3], [3, 3]]   # fsdp shard -> (process, process)
  taken = {p: iter(ds) for p, ds in by_process.items()}
  array = np.array([[next(taken[p]) for p in row] for row in layout], dtype=object).reshape(1, 8, 2)
  mesh = jax.sharding.Mesh(array, sharding.MESH_AXES)
  with pytest.raises(ShardingError, match=r"processes 0 and 1 address overlapping but different batch shards "
                                          r"\(\[0, 1, 2\] and \[1, 2, 3\]\)"):
    sharding.batch_blocks(mesh, process_index=0)


# ---- real processes: each process a node of the hybrid mesh -----------------------------------------------
NODE = r"""
import json, sys
import jax, numpy as np
jax.distributed.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
from jax.experimental import multihost_utils
from grow_jax.train import sharding
mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2, dcn_data=2))
block, blocks = sharding.batch_blocks(mesh)
rows = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)[block * 4:(block + 1) * 4]   # this block of a global batch
batch = sharding.global_batch({"tokens": rows}, mesh, accum=2)["tokens"]
print("RESULT", json.dumps({"data_process": [[d.process_index for d in m.flat] for m in mesh.devices],
                  "block": [block, blocks],
                  "batch": multihost_utils.process_allgather(batch, tiled=True).tolist()}))
"""


@pytest.mark.slow
def test_two_processes_as_two_nodes_data_crosses_them(tmp_path):
  port = processes.free_port()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONPATH=root)
  procs = [subprocess.Popen([sys.executable, "-c", NODE, str(port), str(i)], env=env, cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = processes.finish(procs)
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  for i, (out, _) in enumerate(outs):
    got = processes.tagged(out, "RESULT")
    assert got["data_process"] == [[0] * 4, [1] * 4]          # data index i: node (process) i
    assert got["block"] == [i, 2]
    # the global batch is the same rows whatever the process count: microbatch a holds rows a, a + 2, ...
    expected = np.arange(24).reshape(8, 3)
    np.testing.assert_array_equal(got["batch"], np.stack([expected[0::2], expected[1::2]]))
