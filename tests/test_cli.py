"""One CLI framework (absl) and one config loader: the command lines that are also functions parse into their
own FlagValues (help 0, a bad or missing flag 2, as argparse did), and config files load as 'path.py[:arg]' with
typed 'a.b=value' overrides."""

import os

import pytest
from absl import flags

from grow_jax import cli, config_file
from grow_jax.errors import ConfigError
from grow_jax.growth import heatmaps, plan
from grow_jax.methods import accounting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags():
  fv = flags.FlagValues()
  flags.DEFINE_integer("n", 1, "a count", flag_values=fv)
  return fv


def test_parse_returns_positionals_help_and_bad_flags_exit_codes(capsys):
  fv = _flags()
  assert cli.parse("prog", fv, ["--n=3", "a", "b"]) == ["a", "b"] and fv.n == 3
  assert cli.parse("prog", _flags(), ["--help"]) == 0 and "--n: a count" in capsys.readouterr().out
  assert cli.parse("prog", _flags(), ["--n=x"]) == 2
  assert capsys.readouterr().err.startswith("prog: error: flag --n=x: ")
  assert cli.parse("prog", _flags(), ["a"], positional=False) == 2
  assert capsys.readouterr().err == "prog: error: unexpected arguments ['a']\n"


def test_the_former_argparse_clis_keep_their_flags_and_exit_codes(capsys, tmp_path):
  assert plan.main(["--compare=a.json"]) == 1                     # one plan: a ConfigError, as before
  assert plan.main(["--no_such_flag=1"]) == 2
  assert heatmaps.main([f"--plans={tmp_path / 'a.json'}"]) == 2   # --out is required
  assert "--out" in capsys.readouterr().err
  assert accounting.main(["--targeted=1", "tiny"]) == 0 and "g_freeze 1 layers" in capsys.readouterr().out


def test_a_config_file_loads_with_its_arg_and_typed_dotted_overrides():
  config = config_file.load_config(f"{ROOT}/configs/tiny.py:steps=4", ["train.mode=g_freeze", "batch_size=2",
                                                                       "optimizer.learning_rate=1e-3"])
  assert (config.total_steps, config.train.mode, config.batch_size) == (4, "g_freeze", 2)
  assert config.optimizer.learning_rate == 1e-3 and isinstance(config.batch_size, int)
  with pytest.raises(ConfigError, match=r"^--pilot_set='train.nope=1': expected key=value with a key of the config$"):
    config_file.load_config(f"{ROOT}/configs/tiny.py", ["train.nope=1"], override_flag="--pilot_set")
  with pytest.raises(ConfigError, match=r"^--study='missing.py:x': no study file at 'missing.py'$"):
    config_file.load_module("missing.py:x", flag="--study", what="study")
