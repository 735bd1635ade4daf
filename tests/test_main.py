"""The command line and bad input: one-line errors naming the field, before heavy work, nothing written."""

import os
import subprocess
import sys

import pytest

from config_files import load_config
from grow_jax.data import synthetic
from grow_jax.train import loop as train
from grow_jax.errors import ConfigError, DataError, GrowJaxError, ShardingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, workdir):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "grow_jax.main", *args, f"--workdir={workdir}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("grow_jax.main: error:")]
  return proc.returncode, lines, proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/tiny.py", "--config.optimizer.lr=3"], "unknown config key 'optimizer.lr'"),
    (["--config=configs/tiny.py:bogus=1"], "unknown config arg 'bogus'"),
    (["--config=configs/tiny.py:steps=abc"], "config arg steps='abc': expected int"),
    (["--config=configs/tiny.py", "--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--config=configs/missing.py"], "configs/missing.py"),
])
@pytest.mark.slow
def test_cli_config_errors_are_one_line(tmp_path, args, expected):
  rc, lines, stderr = _cli(*args, workdir=tmp_path / "wd")
  assert rc == 2, stderr[-2000:]
  assert len(lines) == 1 and expected in lines[0], stderr[-2000:]
  assert "Traceback" not in stderr
  assert not (tmp_path / "wd").exists()


def _config(arg=""):
  return load_config("tiny", arg)


def _fails(config, tmp_path, error, *fragments):
  workdir = tmp_path / "wd"
  with pytest.raises(error) as e:
    train.train_and_evaluate(config, str(workdir))
  for f in fragments:
    assert f in str(e.value), str(e.value)
  assert "\n" not in str(e.value)
  assert not workdir.exists()          # rejected before anything is written
  assert isinstance(e.value, GrowJaxError)


def test_batch_size_not_divisible_by_data_parallel_size(tmp_path):
  config = _config("batch=12")          # 8 fake devices: data=8
  _fails(config, tmp_path, ShardingError, "batch_size=12", "data=8,fsdp=1,tensor=1")


def test_missing_init_checkpoint(tmp_path):
  config = _config()
  config.init.source = f"hf:{tmp_path}/no_such_model"
  config.model.num_layers = None        # architecture overrides are for random:<preset> sources only
  _fails(config, tmp_path, ConfigError, "config.init.source=", "no_such_model", "does not exist")


def test_unknown_random_preset(tmp_path):
  config = _config()
  config.init.source = "random:huge"
  _fails(config, tmp_path, ConfigError, "unknown model preset 'huge'")


def test_empty_dataset(tmp_path):
  config = _config()
  config.data.num_examples = 0
  _fails(config, tmp_path, ConfigError, "config.data.num_examples=0", "empty")
  with pytest.raises(DataError, match="config.data.num_examples=0: the synthetic split 'train' is empty"):
    synthetic.SyntheticSource(split="train", global_batch_size=8, seq_len=16, vocab_size=64, num_examples=0)


def test_bad_values_name_the_field(tmp_path):
  config = _config()
  config.train.mode = "g_frozen"
  _fails(config, tmp_path, ConfigError, "config.train.mode='g_frozen'", "g_freeze")
  config = _config()
  config.mesh.tensor = 3
  _fails(config, tmp_path, ShardingError, "config.mesh=", "tensor=3")
  config = _config()
  config.optimizer.schedule = "exp"
  _fails(config, tmp_path, ConfigError, "schedule='exp'")


@pytest.mark.slow
def test_eval_hook_gets_forward_ready_params(tmp_path):
  config = _config("mode=lora,steps=2,layers_n=1,seq_len=16")
  config.eval.tasks = ()
  seen = []

  def probe(params):
    seen.append(params)
    return {"lora_merged": float("lora" not in params)}

  out = train.train_and_evaluate(config, str(tmp_path / "wd"), eval_fns={"probe": probe})
  assert len(seen) == 1 and out["eval/probe/lora_merged"] == 1.0 and out["step"] == 2
  with open(tmp_path / "wd" / "metrics.jsonl") as f:
    assert '"eval/probe/lora_merged": 1.0' in f.read()
