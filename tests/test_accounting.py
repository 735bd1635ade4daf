"""Accounting from abstract shapes: G-Freeze on all 26 layers of Gemma 3 1B is ~62% of the base model."""

import jax
import optax
import numpy as np
import pytest

from grow_jax import methods, tree_paths
from grow_jax.methods import accounting
from grow_jax.growth import operators as growth
from grow_jax import model
from grow_jax.train import optim
from grow_jax.model.config import count_params, get_preset


def _account(name, mode, layers=None, grow=True):
  config = get_preset(name)
  if grow:
    config = growth.grow_config(config, layers=layers)
  abstract = model.abstract_params(config)
  return accounting.account(config, abstract, methods.trainable_labels(config, abstract, mode))


def test_gemma3_1b_g_freeze_all_layers_is_62_percent_of_base():
  a = _account("gemma3_1b", "g_freeze")
  assert a["trainable_params"] == 26 * 3 * 1152 * 6912 == 621_084_672
  assert a["base_params"] == count_params(get_preset("gemma3_1b")) == 999_885_952
  assert a["trainable_share_base"] == pytest.approx(0.621, abs=0.001)
  assert a["grown_params"] == a["trainable_params"]
  assert a["total_params"] == a["base_params"] + a["grown_params"]
  assert a["optimizer_state_bytes"] == 2 * 4 * a["trainable_params"] + 4
  assert a["added_flops_per_token"] == 26 * 6 * 1152 * 6912
  assert a["added_flops_share"] == pytest.approx(0.62, abs=0.01)


def test_targeted_and_g_train_and_sft():
  ten = _account("gemma3_1b", "g_freeze", layers=list(range(0, 26, 3))[:9] + [25])
  assert ten["trainable_params"] == 10 * 3 * 1152 * 6912
  g_train = _account("gemma3_1b", "g_train", layers=list(range(10)))
  assert g_train["trainable_params"] == 10 * (3 + 2) * 1152 * 6912
  sft = _account("gemma3_270m", "sft", grow=False)
  assert sft["trainable_share_base"] == 1.0 and sft["added_flops_per_token"] == 0
  assert sft["trainable_params"] == count_params(get_preset("gemma3_270m"))
  table = accounting.format_table({"1B g_freeze 10 layers": ten, "270M sft": sft})
  assert "| 1B g_freeze 10 layers | 1.2G | 238.9M | 23.9 |" in table


def test_optimizer_bytes_match_a_real_optimizer_state():
  config = growth.grow_config(get_preset("tiny", num_layers=2), layers=[0])
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), model.abstract_params(config))
  for mode in ("g_freeze", "g_train", "sft"):
    labels = methods.trainable_labels(config, params, mode)
    predicted = accounting.account(config, params, labels)["optimizer_state_bytes"]
    state = optim.make_optimizer(dict(learning_rate=1e-3, schedule="constant", grad_clip_norm=None), labels).init(
        params)
    moments = optim.state_bytes(state)["adam_moments"]
    counts = sum(s.count.nbytes for s in tree_paths.find_nodes(state, optax.ScaleByAdamState))
    assert moments + counts == predicted
