"""experiments/dial_sweep.py on a tiny trained G-Freeze run: >= 6 alphas scored by registry evaluations
(ByteTokenizer plumbing), alpha = 0 the base model exactly, JSON + PNG written."""

import importlib.util
import json
import os

import pytest

from config_files import ROOT, load_config
from grow_jax.train import loop

_spec = importlib.util.spec_from_file_location("dial_sweep", os.path.join(ROOT, "experiments", "dial_sweep.py"))
dial_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dial_sweep)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("dial") / "gf")
  config = load_config("tiny", "mode=g_freeze,steps=3,layers_n=1,seq_len=16,lr=0.03")
  config.eval.tasks = ()
  loop.train_and_evaluate(config, wd)
  return wd


@pytest.mark.slow
def test_dial_sweep_scores_each_alpha_and_writes_json_and_png(trained, tmp_path):
  out = str(tmp_path / "dial")
  multiples = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
  result = dial_sweep.run(trained, new_task="smoke_ppl/perplexity", retention="smoke_kl/kl", tokenizer="bytes",
                          multiples=multiples, limit=2, batch_size=2, max_len=64, out=out)
  rows = result["rows"]
  assert result["k"] == 2 and [r["multiple"] for r in rows] == list(multiples)
  assert [r["alpha"] for r in rows] == [m / 2 for m in multiples]
  kl = [r["smoke_kl/kl"] for r in rows]
  print(f"\n[dial] KL(base ‖ model) by alpha x k: {dict(zip(multiples, kl))}")
  assert abs(kl[0]) < 1e-6 and kl[4] > 1e-4            # alpha 0: the base model; 1/k: the trained one
  assert json.loads(open(out + ".json").read())["rows"] == rows
  assert os.path.getsize(out + ".png") > 1000


@pytest.mark.slow
def test_dial_sweep_of_a_params_file_equals_the_workdirs(trained, tmp_path):
  from grow_jax import formats
  from grow_jax.formats import params_file
  from grow_jax.train.checkpointing import load_trained_params
  from grow_jax.train.trained import run_config
  run = run_config(trained)
  params_file.save_params_file(str(tmp_path / "gf.safetensors"), *load_trained_params(trained)[:2])
  params_file.save_params_file(str(tmp_path / "base.safetensors"), *formats.load_checkpoint(
      run["init"]["source"], seed=run["seed"], num_layers=run["model"]["num_layers"]))
  kwargs = dict(new_task="smoke_ppl/perplexity", retention="smoke_kl/kl", tokenizer="bytes", multiples=(0.0, 1.0),
                limit=2, batch_size=2, max_len=64)
  from_file = dial_sweep.run(str(tmp_path / "gf.safetensors"), base=str(tmp_path / "base.safetensors"), **kwargs)
  assert from_file["rows"] == dial_sweep.run(trained, **kwargs)["rows"]
  with pytest.raises(dial_sweep.ConfigError, match="is a params file, which does not name its starting weights"):
    dial_sweep.run(str(tmp_path / "gf.safetensors"), **kwargs)


@pytest.mark.slow
def test_dial_sweep_errors_are_one_line(trained, capsys):
  assert dial_sweep.main([f"--workdir={trained}", "--new_task=smoke_ppl", "--retention=smoke_kl/kl",
                          "--tokenizer=bytes"]) == 1
  assert "--new_task='smoke_ppl': expected '<evaluation entry>/<metric>'" in capsys.readouterr().err
  assert dial_sweep.main([f"--workdir={trained}", "--new_task=nope/x", "--retention=smoke_kl/kl",
                          "--tokenizer=bytes"]) == 1
  assert "unknown ['nope']" in capsys.readouterr().err
