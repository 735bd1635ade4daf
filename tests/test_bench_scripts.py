"""The benchmark / device-check scripts of experiments/ run end to end at tiny size (smoke tests: their
numbers are not checked, only that every code path runs and the comparisons they report hold)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # every test here: the benchmark and device-check scripts, run end to end

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}      # one CPU device, as a user runs them
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_bench_vs_torch_quick(tmp_path):
  out = tmp_path / "bench.md"
  proc = subprocess.run([sys.executable, "experiments/bench_vs_torch.py", "--quick", f"--out={out}"], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  table = out.read_text()
  for row in ("SFT step s", "greedy generate B=1: tokens/s", "greedy generate B=2: identical rows"):
    assert row in table, table
  # Same weights, batch, loss and optimizer: the losses agree at the first and the last step.
  first, last = map(float, re.search(r"Δ (\S+) / (\S+) \|", table).groups())
  assert first < 1e-4 and last < 1e-4, table


def test_device_check_dry_run(tmp_path):
  proc = subprocess.run(["bash", "experiments/device_check.sh", str(tmp_path), "--dry-run"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((tmp_path / "device_check.json").read_text())
  assert result["dry_run"]
  assert result["checks"]["growth"]["highest"] == 0.0                  # growth is exact on CPU
  assert result["checks"]["parity"]["default"]["max_abs"] == 0.0       # CPU against CPU
  modes = {r["mode"]: r for r in result["modes"]}
  assert set(modes) == {"sft", "lora"}
  for mode, r in modes.items():
    assert "error" not in r and "skipped" not in r, r
    assert r["batch"] >= 2 and r["step_s"] > 0 and r["flops_per_token"] > 0, r
    assert r["predicted_bytes"] <= 0.98 * (64 << 20), r               # fits the pretend 64 MiB device
  assert modes["lora"]["flops_parts_per_token"]["weight_grad"] < modes["sft"]["flops_parts_per_token"]["weight_grad"]
  assert "| lora |" in (tmp_path / "device_check.md").read_text()
  decode = result["checks"]["decode"]
  assert decode["same_tokens"] and decode["cpu permutations"]["weight_copies"] == 0 < decode["as stored"]["weight_copies"]
