"""Delta files (formats/delta.py): a task's branches saved alone round-trip to the trained model bit for bit on
the exact base they were grown on, stack in growth order, and are refused, naming both hashes, on any other."""

import numpy as np
import pytest

from grow_jax import tree_paths
from grow_jax.errors import CheckpointError, ConfigError
from grow_jax.formats import delta as delta_lib, params_file
from grow_jax.growth import operators, tasks
from random_params import random_params
from task_models import SMALL, assert_same_params, flat, grown_and_trained


@pytest.fixture(scope="module")
def stages():
  return grown_and_trained()


def test_deltas_rebuild_the_trained_model_bit_for_bit_in_growth_order(stages, tmp_path):
  a = delta_lib.save_delta(tmp_path / "a.delta", stages["ab_config"], stages["ab_params"], "A")
  b = delta_lib.save_delta(tmp_path / "b.delta", stages["ab_config"], stages["ab_params"], "B")
  assert (a.task, a.layers, a.base_tasks, b.layers, b.base_tasks) == ("A", (0, 1, 2), (), (0, 2), ("A",))
  assert a.base_hash == delta_lib.params_hash(SMALL, stages["base"])
  assert b.base_hash == delta_lib.params_hash(stages["a_config"], stages["a_params"])
  config, params = SMALL, stages["base"]
  for path in (tmp_path / "a.delta", tmp_path / "b.delta"):
    config, params = delta_lib.apply_delta(config, params, path)
  assert config == stages["ab_config"]
  assert_same_params(params, stages["ab_params"])
  # only the task's branches are stored: 3 layers x (gate/up + down) for A, 2 for B
  assert sorted(delta_lib.read_delta(tmp_path / "b.delta").leaves) == [
      "layer_0/gating_einsum", "layer_0/linear", "layer_2/gating_einsum", "layer_2/linear"]


def test_a_delta_on_another_base_is_refused_naming_both_hashes(stages, tmp_path):
  delta_lib.save_delta(tmp_path / "b.delta", stages["ab_config"], stages["ab_params"], "B")
  want = delta_lib.params_hash(stages["a_config"], stages["a_params"])
  got = delta_lib.params_hash(SMALL, stages["base"])
  with pytest.raises(ConfigError, match=rf"delta '.*b.delta' \(task 'B'\) extends base {want} \(tasks \['A'\]\) but "
                                        rf"was given {got} \(tasks \[\]\)"):
    delta_lib.apply_delta(SMALL, stages["base"], tmp_path / "b.delta")
  nudged = flat(stages["a_params"])
  nudged["final_norm/scale"] = np.nextafter(nudged["final_norm/scale"], np.float32(9))   # one ulp
  with pytest.raises(ConfigError, match=rf"extends base {want} .* but was given (?!{want})"):
    delta_lib.apply_delta(stages["a_config"], tree_paths.unflatten(nudged), tmp_path / "b.delta")


def test_a_bfloat16_delta_is_half_the_size_and_rounds_only_the_branches(stages, tmp_path):
  delta_lib.save_delta(tmp_path / "f32.delta", stages["ab_config"], stages["ab_params"], "B")
  delta_lib.save_delta(tmp_path / "bf16.delta", stages["ab_config"], stages["ab_params"], "B", dtype="bfloat16")
  f32, bf16 = (tmp_path / "f32.delta").stat().st_size, (tmp_path / "bf16.delta").stat().st_size
  assert bf16 < 0.55 * f32
  config, params = delta_lib.apply_delta(stages["a_config"], stages["a_params"], tmp_path / "bf16.delta")
  got, want = flat(params), flat(stages["ab_params"])
  for key in want:
    if "/grown_2/" in key:
      np.testing.assert_allclose(got[key], want[key], rtol=2 ** -8, atol=1e-30)
      assert got[key].dtype == np.float32
    else:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_what_is_not_a_delta_is_refused_at_save_against_its_base(stages, tmp_path):
  a_model = (stages["a_config"], stages["a_params"])
  delta_lib.save_delta(tmp_path / "b.delta", stages["ab_config"], stages["ab_params"], "B", base=a_model)
  gtrained = flat(stages["ab_params"])
  gtrained["layer_0/mlp/gating_einsum"] = gtrained["layer_0/mlp/gating_einsum"] + 0.01   # G-Train's up moved
  with pytest.raises(ConfigError, match=r"save_delta\('B'\): leaf layer_0/mlp/gating_einsum differs from the base "
                                        r"the task was grown on; the method trained more"):
    delta_lib.save_delta(tmp_path / "x.delta", stages["ab_config"], tree_paths.unflatten(gtrained), "B", base=a_model)
  base = random_params(SMALL)
  noisy_config, noisy = tasks.grow_task(SMALL, base, "A", noise_scale=0.1)
  with pytest.raises(ConfigError, match=r"leaf layer_0/mlp/linear differs from the base"):
    delta_lib.save_delta(tmp_path / "x.delta", noisy_config, noisy, "A", base=(SMALL, base))
  with pytest.raises(ConfigError, match=r"without 'B' and later tasks the model is not the given base \(tasks \['A'\] "
                                        r"vs \[\]"):
    delta_lib.save_delta(tmp_path / "x.delta", stages["ab_config"], stages["ab_params"], "B", base=(SMALL, base))
  assert not (tmp_path / "x.delta").exists()


def test_bad_arguments_and_files_are_one_line(stages, tmp_path):
  with pytest.raises(ConfigError, match=r"unknown task\(s\) \['C'\]"):
    delta_lib.save_delta(tmp_path / "c.delta", stages["ab_config"], stages["ab_params"], "C")
  with pytest.raises(ConfigError, match=r"dtype='int8': expected one of \['float32', 'bfloat16'\]"):
    delta_lib.save_delta(tmp_path / "c.delta", stages["ab_config"], stages["ab_params"], "B", dtype="int8")
  delta_lib.save_delta(tmp_path / "b.delta", stages["ab_config"], stages["ab_params"], "B")
  with pytest.raises(ConfigError, match=r"b.delta' exists; pass overwrite=True"):
    delta_lib.save_delta(tmp_path / "b.delta", stages["ab_config"], stages["ab_params"], "B")
  params_file.save_params_file(tmp_path / "model.safetensors", SMALL, stages["base"])
  with pytest.raises(CheckpointError, match=r"model.safetensors' is not a grow_jax delta file"):
    delta_lib.read_delta(tmp_path / "model.safetensors")
  grown_config, grown = operators.grow_mlp(SMALL, stages["base"], factor=2)
  with pytest.raises(ConfigError, match=r"task=\['A'\]: the model has no task branches \(grown without task names"):
    delta_lib.save_delta(tmp_path / "n.delta", grown_config, grown, "A")


def test_a_source_loads_with_its_deltas(stages, tmp_path):
  params_file.save_params_file(tmp_path / "base.safetensors", SMALL, stages["base"])
  delta_lib.save_delta(tmp_path / "a.delta", stages["ab_config"], stages["ab_params"], "A")
  delta_lib.save_delta(tmp_path / "b.delta", stages["ab_config"], stages["ab_params"], "B")
  for source in (str(tmp_path / "base.safetensors"), f"params:{tmp_path / 'base.safetensors'}"):
    config, params = delta_lib.load_with_deltas(source, [tmp_path / "a.delta", tmp_path / "b.delta"])
    assert config == stages["ab_config"]
    assert_same_params(params, stages["ab_params"])
  # a params file is a checkpoint source like any other: task branches and names included
  params_file.save_params_file(tmp_path / "ab.safetensors", stages["ab_config"], stages["ab_params"])
  from grow_jax.formats import sources
  assert sources.load_config(f"params:{tmp_path / 'ab.safetensors'}") == stages["ab_config"]
  assert_same_params(sources.load_checkpoint(str(tmp_path / "ab.safetensors"))[1], stages["ab_params"])
  with pytest.raises(ConfigError, match=r"task 'B'\) extends base"):
    delta_lib.load_with_deltas(str(tmp_path / "base.safetensors"), [tmp_path / "b.delta"])


@pytest.mark.slow
def test_evaluate_applies_deltas_and_chooses_the_active_tasks(stages, tmp_path):
  """grow_jax.evaluate --deltas=a,b --active_tasks=A scores A's model; 'none' the base; a bad spec is one line."""
  from grow_jax import evaluate
  params_file.save_params_file(tmp_path / "base.safetensors", SMALL, stages["base"])
  params_file.save_params_file(tmp_path / "a.safetensors", stages["a_config"], stages["a_params"])
  for task in ("A", "B"):
    delta_lib.save_delta(tmp_path / f"{task}.delta", stages["ab_config"], stages["ab_params"], task)
  deltas = [str(tmp_path / "A.delta"), str(tmp_path / "B.delta")]

  def ppl(checkpoint, **kw):
    return evaluate.run(checkpoint, ["smoke_ppl"], tokenizer="bytes", max_len=32, **kw)["smoke_ppl"]["perplexity"]

  base = str(tmp_path / "base.safetensors")
  assert ppl(base, deltas=deltas, active_tasks="A") == ppl(str(tmp_path / "a.safetensors"))
  assert ppl(base, deltas=deltas, active_tasks="none") == ppl(base)
  assert ppl(base, deltas=deltas) != ppl(base, deltas=deltas, active_tasks="A=1,B=0.5")
  with pytest.raises(ConfigError, match=r"--active_tasks='A=x': expected 'none', 'A,B' or 'A=<scale>,B=<scale>'"):
    ppl(base, deltas=deltas, active_tasks="A=x")
