"""grow_jax.aot for NVIDIA GPUs: the trainer's programs compiled for H100 / H200 on a machine with no GPU, through
the CUDA plugin's compile-only devices (an XLA GPU target description instead of a driver)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from config_files import load_config
from grow_jax import aot
from grow_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cuda_plugin() -> str:
  """The installed CUDA plugin's module, or ''."""
  if importlib.util.find_spec("jax_plugins") is None:
    return ""
  return next((f"jax_plugins.xla_cuda{v}" for v in (13, 12) if importlib.util.find_spec(f"jax_plugins.xla_cuda{v}")),
              "")


needs_plugin = pytest.mark.skipif(
    not _cuda_plugin(), reason="jax_plugins.xla_cuda13 / xla_cuda12 are not importable: jax-cuda13-plugin (or "
    "jax-cuda12-plugin) is not installed; compile-only CUDA devices need pip install -e '.[gpu]'")


def _tiny(arg="mode=g_freeze,batch=16,accum=2,seq_len=64"):
  config = load_config("tiny", arg)
  config.unlock()
  config.mesh.data, config.mesh.fsdp = 1, -1
  return config


def test_gpu_names_resolve_to_hosts_devices_and_chips():
  assert aot.resolve_topology("h100") == ("h100", aot.CHIPS["h100"])
  assert aot.resolve_topology("8xH100") == ("8xh100", aot.CHIPS["h100"])
  assert aot.resolve_topology("1x8xh200") == ("8xh200", aot.CHIPS["h200"])
  assert aot.gpu_topology("2x8xh100") == aot.GpuTopology("h100", hosts=2, per_host=8)
  assert aot.gpu_topology("v5e-16") is None and aot.gpu_topology("0xh100") is None
  for bad in ("h300", "2x2x8xh100", "xh100"):
    with pytest.raises(ConfigError, match=rf"--topology='{bad}'.*or GPUs h100, 8xh100, 2x8xh200"):
      aot.resolve_topology(bad)


def test_target_descriptions_are_xlas_hopper_specs():
  h100, h200 = aot.gpu_target_config("h100"), aot.gpu_target_config("h200")
  assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in h100 and "device_memory_size: 84942979072" in h100
  assert 'device_description_str: "NVIDIA H200 141GB HBM3e"' in h200 and "memory_bandwidth: 4800000000000" in h200
  assert "feature_extension: ACCELERATED_FEATURES" in h100          # sm_90a: Hopper's wgmma kernels
  core = aot.gpu_target_config("h100", extended=False)
  assert "cuda_compute_capability { major: 9 }" in core and "matrix_unit_description" not in core


@pytest.mark.skipif(bool(_cuda_plugin()), reason="the CUDA plugin is installed here: this checks the error without it")
def test_without_the_cuda_plugin_the_error_says_what_to_install():
  with pytest.raises(ConfigError, match=r"--topology='8xh100': no compile-only CUDA devices: .*"
                                        r"the CUDA plugin is not installed: pip install -e '\.\[gpu\]'"):
    aot.topology_devices("8xh100")


@needs_plugin
def test_compile_only_h100s_have_the_hosts_the_topology_names():
  devices = aot.topology_devices("2x4xh100")
  assert len(devices) == 8 and {d.device_kind for d in devices} == {"NVIDIA H100 80GB HBM3"}
  assert [d.process_index for d in devices] == [0] * 4 + [1] * 4
  assert devices[0].client.runtime_type == "compile_only_runtime"


@needs_plugin
def test_the_train_step_compiles_for_two_hosts_of_h100s_with_per_device_figures():
  devices = aot.topology_devices("2x4xh100")
  report = aot.fit(_tiny(), devices, aot.CHIPS["h100"], topology="2x4xh100", programs=("train_step",))
  assert report.num_devices == 8 and report.num_hosts == 2 and report.mesh == "data=1,fsdp=8,tensor=1"
  train = report.program("train_step")
  assert train.fits and train.argument_bytes > 0 and train.temp_bytes > 0
  assert train.alias_bytes > 0                       # the donated state is aliased into the new state
  assert train.flops > 0 and train.bytes_accessed > 0  # from the CPU client's HLO cost analysis (gpu_cost_analysis)
  assert report.fits and report.step_time_estimate() is not None


@needs_plugin
def test_the_command_line_compiles_for_an_h200_without_jax_platforms_set(tmp_path):
  # No JAX_PLATFORMS: the plugin's driver check (which needs a GPU) must not run; aot starts the CPU backend only.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = tmp_path / "fit.json"
  run = subprocess.run([sys.executable, "-m", "grow_jax.aot", "--config=configs/tiny.py:mode=sft",
                        "--topology=h200", "--programs=train_step", f"--json={out}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "on h200 (1 x NVIDIA H200 SXM, 1 hosts" in run.stdout and "verdict: FITS" in run.stdout
  stored = json.loads(out.read_text())
  assert stored["topology"] == "h200" and stored["programs"][0]["flops"] > 0
