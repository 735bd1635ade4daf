"""grow_jax.aot: the trainer's own programs compiled for real TPU chips on this CPU machine (compile-only
devices from libtpu), with per-device memory, FLOPs and a clear verdict when a program does not fit."""

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
topologies = pytest.importorskip("jax.experimental.topologies")


def _devices(topology):
  try:
    return aot.topology_devices(topology)
  except ConfigError as e:
    pytest.skip(f"no compile-only TPU devices here ({e}); the aot extra installs libtpu: pip install -e '.[aot]'")


def test_slice_names_resolve_to_topologies_and_chips():
  assert aot.resolve_topology("v5e-16") == ("v5e:4x4", aot.CHIPS["v5e"])
  assert aot.resolve_topology("v6e-64")[0] == "v6e:8x8"
  assert aot.resolve_topology("v5p-8")[0] == "v5p:2x2x1"      # v5p names count TensorCores: 4 chips
  assert aot.resolve_topology("v6e:2x4")[0] == "v6e:2x4"
  with pytest.raises(ConfigError, match=r"--topology='v7x-9'.*expected a slice such as v5e-16"):
    aot.resolve_topology("v7x-9")


def test_shapes_come_from_the_preset_the_source_names_when_its_config_is_not_here(tmp_path):
  config = load_config("paper_1b", "")
  config.unlock()
  config.init.source = f"hf:{tmp_path}/gemma-3-1b-pt"
  assert aot.shapes_source(config) == "random:gemma3_1b"
  config.init.source = f"hf:{tmp_path}/my-model"
  with pytest.raises(ConfigError, match="--shapes_from=random:<preset>"):
    aot.shapes_source(config)
  assert aot.shapes_source(config, "random:gemma3_4b") == "random:gemma3_4b"


@pytest.mark.slow
def test_the_trainers_programs_compile_for_a_v5e_slice_with_per_device_figures():
  devices = _devices("v5e:2x2")
  config = load_config("tiny", "mode=g_freeze,batch=8,accum=2,seq_len=64")
  config.unlock()
  config.mesh.data, config.mesh.fsdp = 1, -1
  report = aot.fit(config, devices, aot.CHIPS["v5e"], topology="v5e:2x2", config_arg="tiny")
  assert [p.name for p in report.programs] == list(aot.PROGRAMS)
  assert report.num_devices == 4 and report.mesh == "data=1,fsdp=4,tensor=1"
  assert report.method == "g_freeze" and 0 < report.trainable < report.total_params
  train = report.program("train_step")
  assert train.fits and train.argument_bytes > 0 and train.temp_bytes > 0 and train.flops > 0
  assert train.alias_bytes > 0                       # the donated state is aliased into the new state
  assert report.fits and report.step_time_estimate() is not None
  text = report.describe()
  assert "verdict: FITS" in text and "roofline estimate (not a measurement)" in text
  assert json.loads(json.dumps(report.to_json()))["programs"][0]["name"] == "train_step"


@pytest.mark.slow
def test_a_program_that_does_not_fit_is_a_verdict_with_xlas_figures_not_a_crash():
  devices = _devices("v5e:2x2")
  # A tiny model with a 262k-token vocabulary and long rows: the logits alone need far more than 16 GiB.
  config = load_config("tiny", "mode=sft,batch=64,seq_len=8192")
  config.unlock()
  config.model.vocab_size = 262144
  config.mesh.data, config.mesh.fsdp = 1, -1
  report = aot.fit(config, devices, aot.CHIPS["v5e"], topology="v5e:2x2", programs=("train_step",))
  train = report.program("train_step")
  assert not report.fits
  assert not train.fits and ("memory" in train.error.lower() or "hbm" in train.error.lower())
  assert "verdict: DOES NOT FIT" in report.describe()


def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "grow_jax.aot", *args], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_the_command_line_prints_the_verdict_and_writes_json(tmp_path):
  _devices("v5e:2x2")
  out = tmp_path / "fit.json"
  run = _cli("--config=configs/tiny.py:mode=sft", "--topology=v5e-4", "--config.mesh.data=1",
             "--config.mesh.fsdp=-1", "--programs=train_step,eval_step", f"--json={out}")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "verdict: FITS" in run.stdout and "mesh data=1,fsdp=4,tensor=1" in run.stdout
  stored = json.loads(out.read_text())
  assert stored["topology"] == "v5e:2x2" and stored["fits"] and len(stored["programs"]) == 2


@pytest.mark.slow
def test_bad_topology_is_one_line():
  run = _cli("--config=configs/tiny.py", "--topology=h300")
  assert run.returncode == 1
  err = [l for l in run.stderr.strip().splitlines() if l.startswith("grow_jax.aot")]
  assert err == [l for l in run.stderr.strip().splitlines() if "error" in l.lower()]
  assert len(err) == 1 and err[0].startswith("grow_jax.aot: error: --topology='h300'")


@pytest.mark.slow
def test_scanned_layers_are_costed_as_every_layer_not_the_loop_body_once():
  """XLA's cost analysis counts a scanned loop's body once: the scanned step's FLOPs come from the same step
  lowered with the layers unrolled, and agree with the compiled unrolled program's."""
  devices = _devices("v5e:2x2")
  flops = {}
  for scan in (False, True):
    config = load_config("tiny", "mode=g_freeze,batch=8,seq_len=64,layers_n=4")
    config.unlock()
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.model.scan_layers, config.model.remat = scan, "full"
    report = aot.fit(config, devices, aot.CHIPS["v5e"], topology="v5e:2x2", programs=("train_step",))
    train = report.program("train_step")
    flops[scan] = train.flops
    assert (train.cost_source == "compiled") == (not scan)
    assert not scan or train.cost_source.startswith("FLOPs: the same step lowered with the layers unrolled")
  assert abs(flops[True] - flops[False]) / flops[False] < 0.1
