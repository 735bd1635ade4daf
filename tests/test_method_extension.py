"""A method is one file: it declares its options (the trainer's config gains them from the registry), its setup
is a hook the trainer calls without knowing the method, and nothing under grow_jax/train/ names a method's
option. A method written outside the package trains like a built-in; so does the built-in g_freeze_down, which
is one file too."""

import importlib
import pathlib
import re
import sys

import numpy as np
import pytest

from config_files import load_config
from grow_jax import methods, model, tree_paths
from grow_jax.errors import ConfigError
from grow_jax.growth import operators as growth
from grow_jax.methods import partition
from grow_jax.train import checkpointing, config as config_lib, loop, setup as setup_lib, sharding

ROOT = pathlib.Path(__file__).resolve().parent.parent


def mentions(text: str, names) -> list[str]:
  """The names that occur in `text` as whole words."""
  return [n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text)]


def test_no_method_option_name_appears_in_the_trainer():
  names = sorted(methods.declared_options())            # from the registry: a new method's options count too
  assert {"lora_rank", "lora_alpha", "match_params_of", "l2sp_coef", "ewc_coef", "ewc_batches"} <= set(names)
  assert mentions("c.train.lora_rank = 16", names) == ["lora_rank"]     # the scan finds a use ...
  assert mentions("growth_layers_spec(config)", ["growth_layers"]) == []    # ... as a whole word only
  hits = [f"{path.relative_to(ROOT)}:{number}: {found}"
          for path in sorted((ROOT / "grow_jax" / "train").rglob("*.py"))
          for number, line in enumerate(path.read_text().splitlines(), 1)
          if (found := mentions(line, names))]
  assert hits == [], "the trainer names a method's option"


def test_the_trainers_config_gains_every_methods_config_options_at_their_defaults():
  config = config_lib.base_config()
  for name, option in methods.config_options().items():
    assert name in config.train and config.train[name] == option.default
  # The keys committed study records identify runs by, unchanged.
  assert {k: config.train[k] for k in ("lora_rank", "lora_alpha", "l2sp_coef", "ewc_coef", "ewc_batches",
                                       "ewc_normalize", "match_params_of")} == dict(
      lora_rank=8, lora_alpha=None, l2sp_coef=0.01, ewc_coef=0.01, ewc_batches=4, ewc_normalize="mean",
      match_params_of=None)
  assert "custom_rules" not in config.train                 # config=False: the Python API only


def _changed(config, workdir) -> set[str]:
  """The leaves a run changed: its trained params against the init weights grown as the config says."""
  _, start = setup_lib.init_params(config, sharding.make_mesh(config.mesh))
  _, trained, _ = checkpointing.load_trained_params(str(workdir))
  start, trained = tree_paths.flatten(start), tree_paths.flatten(trained)
  assert set(start) == set(trained)
  return {p for p in start if not np.array_equal(np.asarray(start[p]), np.asarray(trained[p]))}


@pytest.mark.slow
def test_g_freeze_down_trains_only_the_copies_down_projections(tmp_path):
  cfg = model.get_preset("tiny")
  grown_cfg = growth.grow_config(cfg, layers=[2, 5])
  grown = model.abstract_params(grown_cfg)
  labels = methods.trainable_labels(grown_cfg, grown, "g_freeze_down")
  assert set(partition.trainable_paths(labels)) == {"layer_2/mlp/grown_1/linear", "layer_5/mlp/grown_1/linear"}
  assert methods.growth_factor("g_freeze_down") == 2
  # A third of G-Freeze's count: F x D of 3 F x D per grown layer.
  assert 3 * methods.trainable_count("g_freeze_down", cfg, model.abstract_params(cfg)) == \
      methods.trainable_count("g_freeze", cfg, model.abstract_params(cfg))
  with pytest.raises(partition.PartitionError, match="'g_freeze_down'.*no grown layers"):
    methods.trainable_labels(cfg, model.abstract_params(cfg), "g_freeze_down")

  config = load_config("tiny", "mode=g_freeze_down,steps=3,layers_n=2,seq_len=16")
  config.eval.tasks = ()
  out = loop.train_and_evaluate(config, str(tmp_path / "wd"))
  assert out["step"] == 3 and np.isfinite(out["loss"])
  assert _changed(config, tmp_path / "wd") == {"layer_0/mlp/grown_1/linear", "layer_1/mlp/grown_1/linear"}


PLUGIN = '''
"""A method from outside grow_jax: only the norm scales train, their updates scaled by an option; `prepare`
records what the trainer handed it."""
import optax

from grow_jax import methods

PREPARED = []


@methods.register
class NormsOnly(methods.Method):
  name = "norms_only_plugin"
  description = "only the norm scales train"
  options = {"norms_step_scale": methods.Option(1.0, check=lambda v: v > 0, expected="a number > 0")}

  def rules(self, config):
    return [(r"(.*/)?[^/]*norm/scale", "trainable"), (".*", "frozen")]

  def prepare(self, params):
    PREPARED.append((methods.base.is_abstract(params), self.context.growth_layers))
    return None

  def optimizer_transforms(self, prepared=None):
    return [optax.scale(self.opts["norms_step_scale"])]
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
  (tmp_path / "norms_only_plugin.py").write_text(PLUGIN)
  monkeypatch.syspath_prepend(str(tmp_path))
  module = importlib.import_module("norms_only_plugin")
  yield module
  methods.base.unregister("norms_only_plugin")
  sys.modules.pop("norms_only_plugin", None)


@pytest.mark.slow
def test_a_method_from_outside_the_package_is_one_file_and_trains(plugin, tmp_path):
  assert "norms_only_plugin" in methods.names()
  config = load_config("tiny", "steps=2,layers_n=2,seq_len=16")
  assert config.train.norms_step_scale == 1.0             # its option is a config key, at its default
  config.train.mode = "norms_only_plugin"
  config.train.norms_step_scale = -1.0
  with pytest.raises(ConfigError, match=r"config.train.norms_step_scale=-1.0: expected a number > 0"):
    config_lib.check(config)
  config.train.norms_step_scale = 0.5
  config.eval.tasks = ()
  out = loop.train_and_evaluate(config, str(tmp_path / "wd"))
  assert out["step"] == 2 and np.isfinite(out["loss"])
  # The trainer binds it the one way, on shapes (the restore target) and then once on the weights, and tells it
  # the run's growth.
  assert plugin.PREPARED[-1] == (False, "all") and set(plugin.PREPARED[:-1]) == {(True, "all")}
  meta = checkpointing.Checkpointer(str(tmp_path / "wd" / "checkpoints"), read_only=True).read_meta(2)
  assert meta["method"]["name"] == "norms_only_plugin" and meta["method"]["options"] == {"norms_step_scale": 0.5}
  changed = _changed(config, tmp_path / "wd")
  assert changed and all(p.endswith("norm/scale") for p in changed)
