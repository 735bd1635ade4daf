"""Training task after task with the trainer (config.growth.task): G-Freeze grown for A from a base, then for B
from A's model, trains only the newest task's branches; with B off the result is A's trained model bit for bit,
with nothing on the base; each task leaves as a delta through `python -m grow_jax.convert`."""

import numpy as np
import pytest

from config_files import load_config
from grow_jax.errors import ConfigError
from grow_jax.formats import delta as delta_lib, params_file
from grow_jax.growth import tasks
from grow_jax.model.config import get_preset
from grow_jax.train import checkpointing, loop
from random_params import random_params
from task_models import assert_same_params, flat

pytestmark = pytest.mark.slow          # two trainer runs and a subprocess: ~3 min

BASE = get_preset("tiny", num_layers=3)


def stage(tmp_path, name, source, task, layers="all", mode="g_freeze"):
  config = load_config("tiny", f"mode={mode},steps=3,layers_n=3")
  config.growth.layers = layers
  config.init.source = source
  config.model.num_layers = None       # the source's own depth (the config file sets the random preset's)
  config.growth.task = task
  config.eval.tasks = ()
  workdir = tmp_path / name
  loop.train_and_evaluate(config, str(workdir))
  model_config, params, _ = checkpointing.load_trained_params(str(workdir))
  return model_config, params


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tasks")
  base = random_params(BASE)
  params_file.save_params_file(tmp / "base.safetensors", BASE, base)
  a_config, a_params = stage(tmp, "a", f"params:{tmp / 'base.safetensors'}", "A")
  params_file.save_params_file(tmp / "a.safetensors", a_config, a_params)
  b_config, b_params = stage(tmp, "b", f"params:{tmp / 'a.safetensors'}", "B", layers="0,2")
  return dict(tmp=tmp, base=base, a_config=a_config, a_params=a_params, b_config=b_config, b_params=b_params)


def test_each_stage_grows_its_task_and_trains_only_its_branches(trained):
  assert tasks.task_names(trained["a_config"]) == ("A",)
  assert trained["b_config"].mlp_branch_tasks == (("A", "B"), ("A",), ("A", "B"))
  a, b, base = flat(trained["a_params"]), flat(trained["b_params"]), flat(trained["base"])
  moved = sorted(k for k in a if k in base and not np.array_equal(a[k], base[k]))
  assert moved == [f"layer_{i}/mlp/linear" for i in range(3)]              # halved by growth, not trained
  assert not np.array_equal(a["layer_0/mlp/grown_1/linear"], base["layer_0/mlp/linear"] / 2)   # A trained
  moved = sorted(k for k in b if k in a and not np.array_equal(b[k], a[k]))
  assert moved == ["layer_0/mlp/linear", "layer_2/mlp/linear"]              # B's growth halved branch 0 there
  assert not np.array_equal(b["layer_0/mlp/grown_2/linear"], a["layer_0/mlp/linear"] / 2)      # B trained


def test_b_off_is_a_and_nothing_on_is_the_base(trained):
  config, params = tasks.select_tasks(trained["b_config"], trained["b_params"], ["A"])
  assert config == trained["a_config"]
  assert_same_params(params, trained["a_params"])
  config, params = tasks.select_tasks(trained["b_config"], trained["b_params"], [])
  assert config == BASE
  assert_same_params(params, trained["base"])


def test_deltas_of_both_stages_rebuild_b_on_the_base(trained):
  tmp = trained["tmp"]
  delta_lib.save_delta(tmp / "A.delta", trained["b_config"], trained["b_params"], "A", overwrite=True,
                       base=(BASE, trained["base"]))
  delta_lib.save_delta(tmp / "B.delta", trained["b_config"], trained["b_params"], "B", overwrite=True,
                       base=(trained["a_config"], trained["a_params"]))
  config, params = delta_lib.load_with_deltas(str(tmp / "base.safetensors"), [tmp / "A.delta", tmp / "B.delta"])
  assert config == trained["b_config"]
  assert_same_params(params, trained["b_params"])


def test_a_task_name_needs_a_run_that_grows_and_a_new_name(tmp_path, trained):
  params_file.save_params_file(tmp_path / "base.safetensors", BASE, trained["base"])
  with pytest.raises(ConfigError, match=r"growth.task='A': .*mode 'sft' grows no MLP"):
    stage(tmp_path, "sft", f"params:{tmp_path / 'base.safetensors'}", "A", mode="sft")
  with pytest.raises(ConfigError, match=r"task='A': the model already has a task of that name"):
    stage(tmp_path, "again", f"params:{trained['tmp'] / 'a.safetensors'}", "A")


def test_convert_writes_the_next_init_source_and_the_newest_tasks_delta(trained, tmp_path):
  """`python -m grow_jax.convert --src=<workdir> --dst=params:...` keeps branches and task names; `--dst=delta:...`
  saves the newest task checked against the run's init source; --list_tasks names them."""
  import subprocess
  import sys
  from grow_jax import convert
  wd = str(trained["tmp"] / "b")
  convert.convert(wd, f"params:{tmp_path / 'b.safetensors'}")
  config, params = params_file.load_params_file(tmp_path / "b.safetensors")
  assert config == trained["b_config"]
  assert_same_params(params, trained["b_params"])
  convert.convert(wd, f"delta:{tmp_path / 'B.delta'}")                       # checked against A's params file
  assert delta_lib.read_delta(tmp_path / "B.delta").base_hash == delta_lib.params_hash(trained["a_config"],
                                                                                      trained["a_params"])
  with pytest.raises(Exception, match=r"B.delta' exists; pass --overwrite"):
    convert.convert(wd, f"delta:{tmp_path / 'B.delta'}")
  with pytest.raises(ConfigError, match=r"without 'B' and later tasks the model is not the given base"):  # A's base
    convert.convert(wd, f"delta:{tmp_path / 'X.delta'}", base=str(trained["tmp"] / "base.safetensors"))
  out = subprocess.run([sys.executable, "-m", "grow_jax.convert", f"--src={trained['tmp'] / 'base.safetensors'}",
                        f"--deltas={trained['tmp'] / 'A.delta'},{tmp_path / 'B.delta'}", "--list_tasks"],
                       capture_output=True, text=True, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines()[-2:] == ["1. A: 3 layer(s) 0,1,2; 73,728 parameters",
                                          "2. B: 2 layer(s) 0,2; 49,152 parameters"]
