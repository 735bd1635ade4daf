"""Task branches (growth/tasks.py): a model grown for task A, trained, then grown for task B and trained computes,
with B switched off, A's model bit for bit, and with nothing switched on, the base model bit for bit (G-Freeze:
each stage trains only its own task's branches; float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grow_jax import model, tree_paths
from grow_jax.errors import ConfigError
from grow_jax.formats import params_file
from grow_jax.growth import operators, tasks
from random_params import random_params
from task_models import SMALL, assert_same_params, flat, grown_and_trained

FORWARD = jax.jit(model.forward, static_argnums=0)
TOKENS = np.random.default_rng(0).integers(3, SMALL.vocab_size, size=(2, 20)).astype(np.int32)


@pytest.fixture(scope="module")
def stages():
  return grown_and_trained()


def test_the_first_task_growth_is_the_papers_growth(stages):
  config, params = operators.grow_mlp(SMALL, stages["base"], factor=2)
  assert_same_params(stages["a_grown"], params)
  assert stages["a_config"] == config.replace(mlp_branch_tasks=(("A",),) * 3)
  assert tasks.task_names(stages["a_config"]) == ("A",)


@pytest.mark.slow
def test_growing_a_task_preserves_the_function_bit_exactly(stages):
  base_logits = FORWARD(SMALL, stages["base"], TOKENS)
  assert float(jnp.max(jnp.abs(FORWARD(stages["a_config"], stages["a_grown"], TOKENS) - base_logits))) == 0.0
  a_logits = FORWARD(stages["a_config"], stages["a_params"], TOKENS)
  assert float(jnp.max(jnp.abs(a_logits - base_logits))) > 1e-3          # A's training changed the model
  ab_grown_logits = FORWARD(stages["ab_config"], stages["ab_grown"], TOKENS)
  assert float(jnp.max(jnp.abs(ab_grown_logits - a_logits))) == 0.0


def test_task_b_grows_from_branch_0_and_leaves_a_untouched(stages):
  ab, a = flat(stages["ab_grown"]), flat(stages["a_params"])
  assert stages["ab_config"].mlp_branch_tasks == (("A", "B"), ("A",), ("A", "B"))
  assert tasks.task_names(stages["ab_config"]) == ("A", "B")
  assert tasks.task_layers(stages["ab_config"], "B") == (0, 2)
  for i in (0, 2):
    np.testing.assert_array_equal(ab[f"layer_{i}/mlp/grown_1/linear"], a[f"layer_{i}/mlp/grown_1/linear"])
    np.testing.assert_array_equal(ab[f"layer_{i}/mlp/linear"], a[f"layer_{i}/mlp/linear"] / 2)
    np.testing.assert_array_equal(ab[f"layer_{i}/mlp/grown_2/linear"], a[f"layer_{i}/mlp/linear"] / 2)
    np.testing.assert_array_equal(ab[f"layer_{i}/mlp/grown_2/gating_einsum"], a[f"layer_{i}/mlp/gating_einsum"])
  np.testing.assert_array_equal(ab["layer_1/mlp/linear"], a["layer_1/mlp/linear"])


def test_b_switched_off_is_a_model_bit_for_bit(stages):
  config, params = tasks.select_tasks(stages["ab_config"], stages["ab_params"], ["A"])
  assert config == stages["a_config"]
  assert_same_params(params, stages["a_params"])
  logits = FORWARD(config, params, TOKENS)
  assert float(jnp.max(jnp.abs(logits - FORWARD(stages["a_config"], stages["a_params"], TOKENS)))) == 0.0


def test_nothing_active_is_the_base_model_bit_for_bit(stages):
  for config, params in [(stages["ab_config"], stages["ab_params"]), (stages["a_config"], stages["a_params"])]:
    off, off_params = tasks.select_tasks(config, params, [])
    assert off == SMALL
    assert_same_params(off_params, stages["base"])
  assert float(jnp.max(jnp.abs(FORWARD(off, off_params, TOKENS) - FORWARD(SMALL, stages["base"], TOKENS)))) == 0.0


def test_all_active_is_the_trained_model_and_a_scale_of_one_changes_nothing(stages):
  for active in (None, ["A", "B"], {"A": 1.0, "B": 1.0}, {"B": 1}):
    config, params = tasks.select_tasks(stages["ab_config"], stages["ab_params"], active)
    assert config == stages["ab_config"]
    assert_same_params(params, stages["ab_params"])


def test_only_b_keeps_b_and_gives_a_share_back_to_branch_0(stages):
  config, params = tasks.select_tasks(stages["ab_config"], stages["ab_params"], ["B"])
  assert config.mlp_branch_tasks == (("B",), (), ("B",)) and config.mlp_branches == ((128, 128), (128,), (128, 128))
  got, trained = flat(params), flat(stages["ab_params"])
  # layer 0: branch 0 carried W/4; A's 1/2 comes back: W/4 * 3 = 3W/4, B's branch as trained
  np.testing.assert_array_equal(got["layer_0/mlp/linear"], trained["layer_0/mlp/linear"] * np.float32(3))
  np.testing.assert_array_equal(got["layer_0/mlp/grown_1/linear"], trained["layer_0/mlp/grown_2/linear"])
  np.testing.assert_array_equal(got["layer_1/mlp/linear"], flat(stages["base"])["layer_1/mlp/linear"])


def test_a_scale_between_off_and_on_is_the_dial(stages):
  """For a model with one task, scale s is operators.dial at alpha = s / 2."""
  for s in (0.0, 0.3, 1.0, 1.5):
    _, params = tasks.select_tasks(stages["a_config"], stages["a_params"], {"A": s})
    dialed = operators.dial(stages["a_config"], stages["a_params"], alpha=s / 2)
    if s == 0.0:    # off removes the branch; the dial zeroes it
      dialed = flat(dialed)
      assert not np.any(dialed["layer_0/mlp/grown_1/linear"])
      dialed = tree_paths.unflatten({k: v for k, v in dialed.items() if "grown_" not in k})
    for k, v in flat(dialed).items():
      np.testing.assert_allclose(flat(params)[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_base_params_restore_branch_0_where_every_task_is_off(stages):
  """After G-Train branch 0's gate/up trained too: the base's weights bring the base model back exactly."""
  moved = flat(stages["ab_params"])
  for i in range(3):
    moved[f"layer_{i}/mlp/gating_einsum"] = moved[f"layer_{i}/mlp/gating_einsum"] + 0.01
  moved = tree_paths.unflatten(moved)
  _, without = tasks.select_tasks(stages["ab_config"], moved, [])
  assert not np.array_equal(flat(without)["layer_0/mlp/gating_einsum"], flat(stages["base"])["layer_0/mlp/gating_einsum"])
  _, restored = tasks.select_tasks(stages["ab_config"], moved, [], base_params=stages["base"])
  assert_same_params(restored, stages["base"])


def test_task_names_survive_a_params_file(stages, tmp_path):
  params_file.save_params_file(tmp_path / "ab.safetensors", stages["ab_config"], stages["ab_params"])
  config, params = params_file.load_params_file(tmp_path / "ab.safetensors")
  assert config == stages["ab_config"]
  assert "mlp_branch_tasks" not in SMALL.to_dict()            # untasked models serialise as before
  assert tasks.describe(config).splitlines() == ["1. A: 3 layer(s) 0,1,2; 73,728 parameters",
                                                 "2. B: 2 layer(s) 0,2; 49,152 parameters"]


def test_a_model_grown_once_before_task_names_can_be_named():
  base = random_params(SMALL)
  config, params = operators.grow_mlp(SMALL, base, factor=2, layers="1")
  with pytest.raises(ConfigError, match=r"grow_task\('B'\): layers \[1\] carry grown branches without a task name"):
    tasks.grow_task(config, params, "B")
  with pytest.raises(ConfigError, match=r"no task branches \(grown without task names"):
    tasks.select_tasks(config.replace(), params, ["A"])
  named = tasks.name_task(config, "A")
  assert named.mlp_branch_tasks == ((), ("A",), ())
  assert tasks.grow_task(named, params, "B")[0].mlp_branch_tasks == (("B",), ("A", "B"), ("B",))


def test_bad_names_and_operations_are_one_line(stages):
  ab = stages["ab_config"]
  with pytest.raises(ConfigError, match=r"unknown task\(s\) \['C'\]; the model's tasks are \['A', 'B'\]"):
    tasks.select_tasks(ab, stages["ab_params"], ["A", "C"])
  with pytest.raises(ConfigError, match=r"task='A': the model already has a task of that name"):
    tasks.grow_task(ab, stages["ab_params"], "A")
  with pytest.raises(ConfigError, match=r"task='a b': expected a name of letters"):
    tasks.grow_task(ab, stages["ab_params"], "a b")
  with pytest.raises(ConfigError, match=r"grow_mlp: the model has task branches \['A', 'B'\]; grow one more with"):
    operators.grow_mlp(ab, stages["ab_params"], factor=2)
  with pytest.raises(ConfigError, match=r"active_tasks='A': expected a list of task names"):
    tasks.select_tasks(ab, stages["ab_params"], "A")
  with pytest.raises(ConfigError, match=r"active_tasks\['B'\]=nan: expected a finite number"):
    tasks.select_tasks(ab, stages["ab_params"], {"B": float("nan")})
  with pytest.raises(ConfigError, match=r"mlp_branch_tasks\[0\]=\['A', 'A'\]: expected distinct task names"):
    ab.replace(mlp_branch_tasks=(("A", "A"), ("A",), ("A", "B")))


def test_merging_for_export_drops_the_task_names(stages):
  merged, _ = operators.merge_branches(stages["ab_config"], stages["ab_params"], uniform=True)
  assert merged.mlp_branch_tasks is None and not merged.is_grown
