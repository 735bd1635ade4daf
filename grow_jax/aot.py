r"""Will this run fit on that slice? Compiles the trainer's own programs for a real chip, on any machine.

    python -m grow_jax.aot --config=configs/paper_1b.py:mode=g_freeze --topology=v5e-16
    python -m grow_jax.aot --config=configs/paper_4b.py:mode=sft,accum=4 --topology=v6e:8x8 --config.model.remat=full
    python -m grow_jax.aot --config=configs/paper_1b.py --topology=v5p-8 --json=fit.json
    JAX_PLATFORMS=cpu python -m grow_jax.aot --config=configs/paper_1b.py --topology=8xh100     # the gpu extra

With `libtpu` installed (the `aot` extra: `pip install -e ".[aot]"`), `jax.experimental.topologies` gives
compile-only TPU devices with the slice's real host layout (every device's `process_index`) on a machine with no
TPU, and `jax.jit(...).lower(...).compile()` produces the program XLA would run on the slice. This module builds,
abstractly (no weights, no data), exactly what `grow_jax.train.loop` would jit for the config: the mesh
(`sharding.make_mesh` on the slice's devices), the method bound to the grown model's shapes, the optimizer
state and its shardings (`setup.build(..., abstract=True)`), the train step with its accumulation, remat and
donation (`setup.jit_train_step`), and the evaluation programs (the held-out loss step, log-likelihood scoring
at `eval.batch_size x eval.max_len`, greedy generation). It reports per device: XLA's memory analysis
(arguments, outputs, temporaries; the peak against the chip's HBM), the compiled FLOPs and bytes of a train step,
a roofline step-time estimate max(FLOPs / peak bf16, bytes / HBM bandwidth) — an estimate, not a measurement —
and the compile time. A program that does not fit is reported with XLA's own out-of-memory figures.

NVIDIA targets (`--topology=h100`, `h200`, `8xh100`, `2x8xh200`: GPUs per host x hosts) need JAX's CUDA plugin
(the `gpu` extra) but no GPU: the plugin builds compile-only devices from XLA's H100 / H200 target descriptions
(see `gpu_topology_devices`). There, memory is judged against 90% of the GPU's memory (the share JAX
preallocates under launch/slurm.sbatch), and FLOPs come from XLA's cost analysis of the compiled module run by
the CPU client (matmuls handed to cuBLAS are not counted: measured 9% low at 64 x 512 on 8 x H100).
For scanned layers (the paper configs' default) the FLOPs come from the same step lowered unrolled (XLA counts a
loop body once) and the bytes from the compiled program: the memory term of the estimate is then a lower bound.

The model's shapes come from the init source's config.json when it is readable here (`hf:<dir>`), else from the
Gemma 3 preset its path names (`gemma-3-1b-pt` -> `gemma3_1b`), else `--shapes_from=random:<preset>`.
MaxText's `train_compile.py` is the same idea for its trainer. Exit status 1 with one line for bad input; a
program that does not fit is a result (exit status 0 unless --fail_if_not_fit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any, Sequence

_log = logging.getLogger(__name__)


# ---- chips -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Chip:
  """Public vendor figures per chip (one JAX device): HBM, dense bf16 peak, HBM bandwidth; `usable` is the share
  of HBM a run may fill: 1 on TPU (XLA's TPU compiler itself refuses a program over the HBM it can use), 0.9 on
  NVIDIA GPUs (JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION of the memory: 0.75 by default, 0.9 as
  launch/slurm.sbatch sets it)."""
  name: str
  hbm_gib: float
  bf16_tflops: float
  hbm_tb_per_s: float
  usable: float = 1.0


# Vendor datasheets (Cloud TPU system architecture pages; NVIDIA H100/H200 SXM datasheets).
CHIPS = {
    "v4": Chip("TPU v4", 32.0, 275.0, 1.2),
    "v5e": Chip("TPU v5e", 16.0, 197.0, 0.819),
    "v5p": Chip("TPU v5p", 95.0, 459.0, 2.765),
    "v6e": Chip("TPU v6e", 32.0, 918.0, 1.64),
    # nvidia-smi's totals: H100 SXM 81559 MiB, H200 SXM 143771 MiB.
    "h100": Chip("NVIDIA H100 SXM", 81559 / 1024, 989.0, 3.35, usable=0.9),
    "h200": Chip("NVIDIA H200 SXM", 143771 / 1024, 989.0, 4.8, usable=0.9),
}

# Slice names as Cloud TPU sells them -> the topology jax.experimental.topologies understands. v4 / v5p names
# count TensorCores (2 per chip), v5e / v6e names count chips.
TOPOLOGY_ALIASES = {
    "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8",
    "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8",
    "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4",
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
}


def resolve_topology(name: str) -> tuple[str, Chip]:
  """'v5e-16' or 'v5e:4x4' -> ('v5e:4x4', the chip); anything else one clear error."""
  from grow_jax.errors import ConfigError
  gpu = gpu_topology(name)
  if gpu:
    return gpu.name, CHIPS[gpu.chip]
  topology = TOPOLOGY_ALIASES.get(name.strip().lower(), name.strip().lower())
  generation, sep, shape = topology.partition(":")
  if not sep or generation not in CHIPS or not re.fullmatch(r"\d+(x\d+)+", shape):
    raise ConfigError(f"--topology={name!r}: expected a slice such as v5e-16, v6e-64, v5p-8 or a topology such as "
                      f"v5e:4x4, v6e:8x8, v5p:2x2x2, or GPUs h100, 8xh100, 2x8xh200 (chips {sorted(CHIPS)}; "
                      f"names: {', '.join(sorted(TOPOLOGY_ALIASES))})")
  return topology, CHIPS[generation]


def topology_devices(topology: str) -> list[Any]:
  """The compile-only devices of a TPU topology (needs libtpu: the `aot` extra) or of GPUs (gpu_topology)."""
  from grow_jax.errors import ConfigError
  gpu = gpu_topology(topology)
  if gpu:
    return gpu_topology_devices(gpu)
  # Compile-only use: several processes may load libtpu at once (its lock file would refuse the second), and
  # there is no TPU VM metadata server to ask for the worker layout.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(topology, platform="tpu").devices)
  except Exception as e:        # libtpu missing, or a topology libtpu does not know
    first = (str(e).strip().splitlines() or [repr(e)])[0]
    hint = (" (libtpu is not installed: pip install -e '.[aot]')" if "tpu" in first.lower() and
            ("unknown backend" in first.lower() or "not found" in first.lower() or "no module" in first.lower())
            else "")
    raise ConfigError(f"--topology={topology!r}: no compile-only TPU devices: {first}{hint}") from None


# ---- NVIDIA GPUs: compile-only CUDA devices ----------------------------------------------------------
# `--topology=h100` (one GPU), `8xh100` (one host of 8), `2x8xh100` (2 hosts of 8); the same with h200. The CUDA
# plugin (`pip install -e ".[gpu]"`) builds compile-only devices from a GpuTargetConfigProto (XLA's
# PJRT_GpuDeviceTopology_Create with the options `target_config` and `topology`, as jax's own
# tests/aot_test.py::test_deviceless_aot_compile does), so no GPU and no driver are needed to compile.
@dataclasses.dataclass(frozen=True)
class GpuTopology:
  chip: str                    # a key of CHIPS: h100 | h200
  hosts: int
  per_host: int

  @property
  def name(self) -> str:
    if self.hosts == 1:
      return self.chip if self.per_host == 1 else f"{self.per_host}x{self.chip}"
    return f"{self.hosts}x{self.per_host}x{self.chip}"


def gpu_topology(name: str) -> GpuTopology | None:
  """'h100' -> 1 host of 1; '8xh100' -> 1 host of 8; '2x8xh200' -> 2 hosts of 8 H200s; not a GPU name -> None."""
  *counts, chip = name.strip().lower().split("x")
  if chip not in GPU_TARGETS or len(counts) > 2 or not all(c.isdigit() and int(c) > 0 for c in counts):
    return None
  counts = [1] * (2 - len(counts)) + [int(c) for c in counts]
  return GpuTopology(chip, hosts=counts[0], per_host=counts[1])


# XLA's device descriptions (xla/backends/gpu/target_config/specs/h100_sxm.txtpb and h200.txtpb at the XLA
# commit jax 0.10.2 was built from, less `collective_memory_granularity`, a field that XLA does not know yet).
_HOPPER_CORE = {"threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 49152,
                "shared_memory_per_core": 233472, "threads_per_core_limit": 2048, "core_count": 132,
                "fpus_per_core": 128, "block_dim_limit_x": 2147483647, "block_dim_limit_y": 65535,
                "block_dim_limit_z": 65535, "l2_cache_size": 52428800, "clock_rate_ghz": 1.98,
                "shared_memory_per_block_optin": 232448, "registers_per_core_limit": 65536,
                "registers_per_block_limit": 65536}
# Newer fields (sm_90a, the per-dtype unit rates XLA's cost models read, NVLink): an older plugin that cannot
# parse them gets the core fields alone.
_HOPPER_SCALAR = ((4, 64, 1), (8, 64, 1), (10, 128, 2), (11, 128, 1), (12, 64, 1), (16, 128, 2))
_HOPPER_MATRIX = ((2, 1024), (6, 1024), (10, 512), (11, 256), (12, 32), (16, 512), (19, 1024), (20, 1024),
                  (23, 1024), (24, 1024), (25, 1024), (28, 1024), (29, 1024), (33, 1024), (35, 1024), (36, 1024))
GPU_TARGETS = {
    "h100": {"name": "NVIDIA H100 80GB HBM3", "memory_bandwidth": 3352320000000, "device_memory_size": 84942979072},
    "h200": {"name": "NVIDIA H200 141GB HBM3e", "memory_bandwidth": 4800000000000,
             "device_memory_size": 151397597184},
}


def gpu_target_config(chip: str, *, extended: bool = True) -> str:
  """The GpuTargetConfigProto text of one GPU (a key of GPU_TARGETS) for the CUDA plugin's compile-only devices."""
  spec = GPU_TARGETS[chip]
  fields = {**_HOPPER_CORE, "memory_bandwidth": spec["memory_bandwidth"],
            "device_memory_size": spec["device_memory_size"]}
  lines = [f"  {k}: {v}" for k, v in fields.items()]
  if not extended:
    lines.append("  cuda_compute_capability { major: 9 }")
  else:
    rate = lambda key, clock, units, ops: (f"    rate_infos {{ key: {key} value {{ clock_rate_ghz: {clock} "
                                            f"units_per_core: {units} ops_per_clock: {ops} }} }}")
    lines += ["  cuda_compute_capability { major: 9 feature_extension: ACCELERATED_FEATURES }",
              "  scalar_unit_description {", *(rate(k, 1.98, u, o) for k, u, o in _HOPPER_SCALAR), "  }",
              "  matrix_unit_description {",
              *(rate(k, 1.98 if k == 12 else 1.8295201, 4, o) for k, o in _HOPPER_MATRIX), "  }",
              "  thread_dim_limit_x: 1024", "  thread_dim_limit_y: 1024", "  thread_dim_limit_z: 64",
              '  device_vendor: "NVIDIA Corporation"', '  platform_version: "Compute Capability 9.0a"',
              "  device_address_bits: 64", "  pcie_bandwidth: 34359738368", "  ecc_enabled: true",
              f'  name: "{spec["name"]}"', "  device_interconnect_info { active_links: 18 }"]
  return "\n".join(["gpu_device_info {", *lines, "}", 'platform_name: "CUDA"', "dnn_version_info { major: 9 minor: 10 }",
                    f'device_description_str: "{spec["name"]}"', ""])


def gpu_topology_devices(topology: GpuTopology) -> list[Any]:
  """Compile-only CUDA devices of `topology` (needs the CUDA plugin: the `gpu` extra), on any machine."""
  import importlib.util
  import jax
  from jax._src import xla_bridge
  from jax.experimental import topologies
  from grow_jax.errors import ConfigError
  # The plugin checks the installed CUDA libraries against the driver when CUDA is among the platforms JAX
  # starts, which fails where there is no GPU; a compile-only run needs no GPU backend: start the CPU one only.
  if not jax.config.jax_platforms and not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", "cpu")
  shape = f"1x{topology.hosts}x{topology.per_host}"    # partitions x hosts per partition x devices per host
  error = ""
  for extended in (True, False):
    try:
      return list(topologies.get_topology_desc(platform="cuda", topology=shape,
                                               target_config=gpu_target_config(topology.chip, extended=extended)
                                               ).devices)
    except Exception as e:      # the plugin missing or not started, or a description it cannot parse
      error = (str(e).strip().splitlines() or [repr(e)])[0]
      if "GpuTargetConfigProto" not in error:
        break
  plugin = importlib.util.find_spec("jax_plugins") and any(
      importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (13, 12))
  hint = ("" if "not implemented" not in error else
          " (the CUDA plugin is not installed: pip install -e '.[gpu]')" if not plugin else
          " (JAX started without the CUDA plugin, whose driver check needs a GPU: set JAX_PLATFORMS=cpu)")
  raise ConfigError(f"--topology={topology.name!r}: no compile-only CUDA devices: {error}{hint}")


def gpu_cost_analysis(compiled) -> dict[str, float]:
  """XLA's HLO cost analysis of a compiled program's optimized per-device module, run by the CPU client: the
  CUDA plugin does not implement cost_analysis() for compile-only executables ('GetCostAnalysis is not
  supported'). The FLOPs of a matmul that XLA hands to a library call (cuBLAS, cuDNN; also inside a custom
  fusion) are not counted: for Gemma 3 1B G-Freeze (unscanned) 1.5% below the TPU-compiled figure at 8x128 on
  one H100, 9% below the one-H200 figure (x8) at 64x512 on 8 H100s. {} (no FLOPs, no roofline estimate) where this
  jaxlib cannot run it."""
  try:
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    module = compiled.runtime_executable().hlo_modules()[0]
    return dict(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module))
  except Exception as e:        # private jaxlib API: a later jax may move it
    _log.warning("no cost analysis of the compiled program: %s", _last_line(e))
    return {}


def unrolled_cost(lowered, num_devices: int) -> dict[str, float]:
  """FLOPs and bytes per device from XLA's HLO cost analysis of a lowered (not compiled) program, run by the CPU
  client, divided by the device count. For scanned layers: XLA's cost analysis counts a while loop's body once,
  so the scanned program's own figures miss all layers but one; the same step lowered with the layers unrolled
  counts every layer (measured on a 4-layer model on v5e:2x2: within 5% of the compiled unrolled program's
  per-device FLOPs, below it). {} where this jaxlib cannot run it."""
  try:
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    ir = lowered.compiler_ir("hlo")
    module = ir.get_hlo_module() if hasattr(ir, "get_hlo_module") else ir
    cost = dict(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module))
  except Exception as e:        # private jaxlib API: a later jax may move it
    _log.warning("no cost analysis of the unrolled program: %s", _last_line(e))
    return {}
  return {"flops": float(cost.get("flops", 0.0)) / num_devices,
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)) / num_devices}


# ---- the abstract run --------------------------------------------------------------------------------
_GEMMA_SIZES = {"270m": "gemma3_270m", "1b": "gemma3_1b", "4b": "gemma3_4b"}


def shapes_source(config, shapes_from: str = "") -> str:
  """The source whose *config* gives the model's shapes: --shapes_from, else the init source when its
  config.json is readable here, else the Gemma 3 preset its path names."""
  from grow_jax import files
  from grow_jax.errors import ConfigError
  if shapes_from:
    return shapes_from
  source = str(config.init.source)
  if source.startswith("hf:"):
    path = os.path.expanduser(source[3:])
    if files.as_path(path).joinpath("config.json").exists():
      return source
    found = re.search(r"gemma-?3-(270m|1b|4b)", source.lower())
    if found:
      return f"random:{_GEMMA_SIZES[found.group(1)]}"
    raise ConfigError(f"config.init.source={source!r}: no config.json readable here and no Gemma 3 size in its "
                      "name: pass --shapes_from=random:<preset> (e.g. random:gemma3_1b) or hf:<a local copy>")
  return source


@dataclasses.dataclass
class ProgramReport:
  """One compiled program's figures, per device."""
  name: str
  fits: bool
  compile_s: float
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  peak_bytes: int = 0              # arguments + outputs - aliased (donated) + temporaries
  flops: float = 0.0
  bytes_accessed: float = 0.0
  error: str = ""                  # XLA's out-of-memory line when it does not fit
  cost_source: str = "compiled"    # where flops / bytes_accessed come from (see `unrolled_cost`)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes)}
  out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  return out


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis() or gpu_cost_analysis(compiled)
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


_OOM = re.compile(r"(RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds? .*(HBM|hbm|memory)|Exceeded hbm capacity)")


def compile_program(name: str, jitted, *args) -> ProgramReport:
  """Lowers and compiles `jitted(*args)` (abstract args); an out-of-memory compile is a report, not an error."""
  t = time.time()
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:  # XLA raises XlaRuntimeError / ValueError with RESOURCE_EXHAUSTED when it won't fit
    text = str(e)
    if not _OOM.search(text):
      raise
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    keep = [l for l in lines if "memory" in l.lower() or "hbm" in l.lower() or "exhausted" in l.lower()]
    return ProgramReport(name, False, time.time() - t, error=" ".join(keep[:3])[:600] or lines[0][:600])
  seconds = time.time() - t
  return ProgramReport(name, True, seconds, **_memory(compiled), **_cost(compiled))


@dataclasses.dataclass
class FitReport:
  """Every program of one config on one slice."""
  config_arg: str
  topology: str
  chip: Chip
  num_devices: int
  num_hosts: int
  mesh: str
  model: str
  method: str
  trainable: int
  total_params: int
  batch: str
  remat: str
  scan_layers: bool
  target_capacity: int
  programs: list[ProgramReport]

  @property
  def hbm_bytes(self) -> float:
    """The HBM one device's programs may use."""
    return self.chip.hbm_gib * self.chip.usable * 2**30

  @property
  def fits(self) -> bool:
    return all(p.fits and p.peak_bytes <= self.hbm_bytes for p in self.programs)

  def program(self, name: str) -> ProgramReport | None:
    return next((p for p in self.programs if p.name == name), None)

  def step_time_estimate(self) -> tuple[float, str] | None:
    """Roofline estimate of one train step (seconds, the bound) from the compiled train step's cost."""
    p = self.program("train_step")
    if p is None or not p.fits or not p.flops:
      return None
    compute = p.flops / (self.chip.bf16_tflops * 1e12)
    memory = p.bytes_accessed / (self.chip.hbm_tb_per_s * 1e12)
    return (compute, "compute") if compute >= memory else (memory, "memory")

  def to_json(self) -> dict[str, Any]:
    out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("programs", "chip")}
    out["chip"] = dataclasses.asdict(self.chip)
    out["programs"] = [p.to_json() for p in self.programs]
    out["fits"] = self.fits
    estimate = self.step_time_estimate()
    out["step_time_estimate_s"] = estimate[0] if estimate else None
    out["step_time_bound"] = estimate[1] if estimate else None
    return out

  def describe(self) -> str:
    from grow_jax import tables
    gib = lambda b: f"{b / 2**30:.2f}"
    rows = []
    for p in self.programs:
      if p.fits:
        verdict = "fits" if p.peak_bytes <= self.hbm_bytes else "over HBM"
        rows.append([p.name, verdict, gib(p.argument_bytes), gib(p.temp_bytes), gib(p.peak_bytes),
                     f"{p.flops / 1e12:.3g}" if p.flops else "-", f"{p.compile_s:.1f}"])
      else:
        rows.append([p.name, "does not fit", "-", "-", "-", "-", f"{p.compile_s:.1f}"])
    lines = [f"{self.config_arg} on {self.topology} ({self.num_devices} x {self.chip.name}, {self.num_hosts} hosts, "
             f"{self.chip.hbm_gib:.1f} GiB HBM each); mesh {self.mesh}; model {self.model}; method {self.method} "
             f"({self.trainable / 1e6:.1f}M of {self.total_params / 1e6:.1f}M parameters train); batch {self.batch}; "
             f"remat {self.remat}, scan_layers {self.scan_layers}; target_capacity {self.target_capacity}",
             tables.markdown(["program", "verdict", "args GiB", "temp GiB", "peak GiB", "TFLOP/device",
                              "compile s"], rows)]
    for p in self.programs:
      if not p.fits:
        lines.append(f"{p.name}: {p.error}")
    estimate = self.step_time_estimate()
    if estimate:
      lines.append(f"train step roofline estimate (not a measurement): {estimate[0] * 1e3:.0f} ms, "
                   f"{estimate[1]}-bound ({self.chip.bf16_tflops:.0f} TFLOP/s bf16, "
                   f"{self.chip.hbm_tb_per_s:.2f} TB/s HBM)")
    lines.append("verdict: " + ("FITS" if self.fits else "DOES NOT FIT"))
    return "\n".join(lines)


PROGRAMS = ("train_step", "eval_step", "score", "generate")


def _abstract(shape, dtype, sharding):
  import jax
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def train_batch(config, mesh):
  """The abstract (A, B/A, T) training batch with the trainer's batch sharding."""
  import jax.numpy as jnp
  from grow_jax.train import sharding
  A = config.grad_accum_steps
  shape = (A, config.batch_size // A, config.data.seq_len)
  sh = sharding.batch_sharding(mesh)
  return {"tokens": _abstract(shape, jnp.int32, sh), "loss_mask": _abstract(shape, jnp.float32, sh),
          "positions": _abstract(shape, jnp.int32, sh), "segment_ids": _abstract(shape, jnp.int32, sh),
          "input_mask": _abstract(shape, jnp.bool_, sh)}


def fit(config, devices: Sequence[Any], chip: Chip, *, topology: str, config_arg: str = "", shapes_from: str = "",
        target_capacity: int | None = None, programs: Sequence[str] = PROGRAMS) -> FitReport:
  """Compiles `programs` of `config` for `devices` (compile-only or real) and reports their figures."""
  import jax
  import jax.numpy as jnp
  from grow_jax import formats
  from grow_jax.errors import ConfigError
  from grow_jax.evaluation import scoring
  from grow_jax.model import generation
  from grow_jax.model.config import abstract_params
  from grow_jax.train import config as config_lib, setup as setup_lib, sharding, step as step_lib

  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    raise ConfigError(f"--programs: unknown {unknown}; expected some of {list(PROGRAMS)}")
  config_lib.check(config)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  hosts = len({d.process_index for d in devices})
  sharding.check_batch_size(config.batch_size, config.grad_accum_steps, mesh, hosts)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init.source = shapes_source(config, shapes_from)
  base = formats.load_config(config.init.source, **config_lib.model_overrides(config))
  mc = setup_lib.grown_model_config(config, base)
  setup, _ = setup_lib.build(config, mc, abstract_params(mc), mesh, abstract=True)
  capacity = target_capacity if target_capacity is not None else max(config.train.target_capacity, 0)
  params_abs = setup.abstract_state["params"]
  labels = setup.method.labels
  flat_params = jax.tree.leaves(params_abs)
  total = sum(math.prod(x.shape) for x in flat_params)
  trainable = sum(math.prod(x.shape) for x, l in zip(flat_params, jax.tree.leaves(labels)) if l == "trainable")

  reports = []
  if "train_step" in programs:
    step = setup_lib.jit_train_step(config, setup, mesh, capacity)
    report = compile_program("train_step", step, setup.abstract_state, train_batch(config, mesh))
    if mc.scan_layers and report.fits:
      unrolled = dataclasses.replace(setup, model_config=dataclasses.replace(mc, scan_layers=False))
      lowered = setup_lib.jit_train_step(config, unrolled, mesh, capacity).lower(setup.abstract_state,
                                                                                 train_batch(config, mesh))
      cost = unrolled_cost(lowered, len(devices))
      if cost:     # bytes stay the compiled program's: the unoptimised module's (no fusion) overcount them
        report.flops = cost["flops"]
        report.cost_source = ("FLOPs: the same step lowered with the layers unrolled (HLO cost analysis, not "
                              "compiled); bytes: the compiled program's, a scanned loop body counted once (a lower "
                              "bound)")
    reports.append(report)

  model_params_abs = jax.eval_shape(setup.method.model_params, params_abs)
  param_sh = sharding.param_shardings(model_params_abs, mesh)
  model_params_abs = jax.tree.map(lambda x, s: _abstract(x.shape, x.dtype, s), model_params_abs, param_sh)
  rep = sharding.replicated(mesh)
  if "eval_step" in programs:
    # The held-out loss (evaluation/registry.py): make_eval_step over one microbatch of eval.batch_size rows.
    ev = jax.jit(step_lib.make_eval_step(mc, loss_chunk=config.train.loss_chunk, target_capacity=capacity,
                                         groups=sharding.data_parallel_size(mesh)), out_shardings=rep)
    eval_cfg = config.copy_and_resolve_references()
    with eval_cfg.unlocked():
      eval_cfg.grad_accum_steps, eval_cfg.batch_size = 1, config.eval.batch_size
    reports.append(compile_program("eval_step", ev, model_params_abs, train_batch(eval_cfg, mesh)))
  B, T = config.eval.batch_size, config.eval.max_len
  if "score" in programs:
    # Log-likelihood scoring (multiple choice, perplexity): host batches, i.e. replicated inputs.
    ints = _abstract((B, T), jnp.int32, rep)
    reports.append(compile_program("score", _bind(scoring._target_logprobs, config=mc, chunk=min(64, T)),
                                   model_params_abs, ints,
                                   _abstract((B, T), jnp.bool_, rep), ints, ints))
  if "generate" in programs:
    P = T - config.eval.max_new_tokens
    reports.append(compile_program("generate", *_generate_args(generation, mc, model_params_abs, B, P,
                                                                config.eval.max_new_tokens, rep)))
  return FitReport(config_arg=config_arg, topology=topology, chip=chip, num_devices=len(devices), num_hosts=hosts,
                   mesh=sharding.describe(mesh), model=_model_name(base), method=setup.method.name,
                   trainable=trainable, total_params=total,
                   batch=f"{config.batch_size}x{config.data.seq_len}, accum {config.grad_accum_steps}",
                   remat=str(getattr(mc, "remat", "none")), scan_layers=bool(getattr(mc, "scan_layers", False)),
                   target_capacity=capacity, programs=reports)


class _bind:
  """A jitted function with its static keyword arguments bound, still `.lower()`-able."""

  def __init__(self, fn, **static):
    self.fn, self.static = fn, static

  def lower(self, *args):
    return self.fn.lower(*args, **self.static)


def _generate_args(generation, mc, params, B, P, max_new_tokens, rep):
  import jax
  import jax.numpy as jnp
  fn = _bind(generation._decode, config=mc, max_new_tokens=max_new_tokens, top_k_bucket=None, greedy=True)
  key = jax.eval_shape(lambda: jax.random.key(0))
  args = (params, _abstract((B, P), jnp.int32, rep), _abstract((B, P), jnp.bool_, rep),
          _abstract(key.shape, key.dtype, rep), _abstract((), jnp.float32, rep), _abstract((), jnp.int32, rep),
          _abstract((), jnp.int32, rep), _abstract((), jnp.int32, rep), _abstract((B,), jnp.bool_, rep))
  return fn, *args


def _model_name(mc) -> str:
  return f"{mc.num_layers} layers, d={mc.embed_dim}, F={mc.hidden_dim}"


# ---- command line ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m grow_jax.aot ...` (absl flags on the global FLAGS, as grow_jax.main)."""
  from absl import flags
  from ml_collections import config_flags
  fl = flags.FLAGS
  if "topology" not in fl:
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/paper_1b.py:mode=g_freeze.",
                                    lock_config=True)
    flags.DEFINE_string("topology", None, "A TPU slice (v5e-16, v6e-64, v5p-8), a TPU topology (v5e:4x4), or "
                        "NVIDIA GPUs (h100, h200, 8xh100, 2x8xh200).")
    flags.DEFINE_string("shapes_from", "", "Source whose config gives the shapes (default: the init source, or the "
                        "Gemma 3 preset its path names).")
    flags.DEFINE_integer("target_capacity", None, "Static target capacity (default: config.train.target_capacity; "
                         "-1 (measured on data) is compiled as 0: every position, the worst case).")
    flags.DEFINE_list("programs", list(PROGRAMS), f"Programs to compile: {', '.join(PROGRAMS)}.")
    flags.DEFINE_string("json", "", "Also write the report as JSON to this file.")
    flags.DEFINE_bool("fail_if_not_fit", False, "Exit status 3 when a program does not fit.")
  argv = list(sys.argv if argv is None else argv)
  from grow_jax.errors import GrowJaxError
  try:
    fl(argv)
  except Exception as e:
    print(f"grow_jax.aot: error: {_last_line(e)}", file=sys.stderr)
    return 2
  if not fl.config or not fl.topology:
    print("grow_jax.aot: error: --config and --topology are required", file=sys.stderr)
    return 2
  logging.getLogger().setLevel(logging.WARNING)
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  overrides = [a for a in argv if a.startswith("--config.")]
  try:
    topology, chip = resolve_topology(fl.topology)
    devices = topology_devices(topology)
    report = fit(fl.config, devices, chip, topology=topology, config_arg=" ".join([config_arg, *overrides]),
                 shapes_from=fl.shapes_from, target_capacity=fl.target_capacity, programs=fl.programs)
  except GrowJaxError as e:
    print(f"grow_jax.aot: error: {e}", file=sys.stderr)
    return 1
  print(report.describe())
  if fl.json:
    from grow_jax import files
    files.write_text(fl.json, json.dumps(report.to_json(), indent=1, sort_keys=True) + "\n")
  return 3 if fl.fail_if_not_fit and not report.fits else 0


def _last_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[-1] if lines else repr(e)


if __name__ == "__main__":
  sys.exit(main())
