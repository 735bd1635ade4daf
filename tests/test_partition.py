"""Partition rules: first match wins, every leaf must match, presets label exactly the documented leaves.
All on abstract params (no weights, no compiles)."""

import jax
import pytest

from grow_jax import tree_paths
from grow_jax.methods import accounting
from grow_jax.growth import operators as growth
from grow_jax.methods import registry as methods
from grow_jax.methods import partition
from grow_jax.model.config import get_preset
from grow_jax.errors import ConfigError

CFG = get_preset("tiny")                                   # 7 layers
GROWN_CFG = growth.grow_config(CFG, layers=[2, 5])
ABSTRACT = accounting.abstract_params(CFG)
GROWN = accounting.abstract_params(GROWN_CFG)
ALL = set(tree_paths.flatten(GROWN))


def trainable(config, params, mode):
  return set(partition.trainable_paths(partition.trainable_labels(config, params, mode)))


def test_presets_label_exactly_the_documented_leaves():
  copies = {f"layer_{i}/mlp/grown_1/{n}" for i in (2, 5) for n in ("gating_einsum", "linear")}
  assert trainable(GROWN_CFG, GROWN, "sft") == ALL
  assert trainable(GROWN_CFG, GROWN, "l2sp") == ALL == trainable(GROWN_CFG, GROWN, "ewc")
  assert trainable(GROWN_CFG, GROWN, "g_freeze") == copies
  # G-Train: copies + original gate/up of the grown layers only; original down projections stay frozen.
  assert trainable(GROWN_CFG, GROWN, "g_train") == copies | {"layer_2/mlp/gating_einsum",
                                                             "layer_5/mlp/gating_einsum"}
  assert trainable(GROWN_CFG, GROWN, "mlp_only") == {p for p in ALL if "/mlp/" in p}
  labels = partition.trainable_labels(GROWN_CFG, GROWN, "g_freeze")
  assert jax.tree.structure(labels) == jax.tree.structure(jax.tree.map(lambda _: 0, GROWN))
  assert set(jax.tree.leaves(labels)) == {"trainable", "frozen"}


def test_lora_preset_trains_only_adapters():
  with_lora = {**ABSTRACT, "lora": {"layer_0": {"attn": {"q_einsum": {"w": {"a": ABSTRACT["final_norm"]["scale"],
                                                                           "b": ABSTRACT["final_norm"]["scale"]}}}}}}
  assert trainable(CFG, with_lora, "lora") == {"lora/layer_0/attn/q_einsum/w/a", "lora/layer_0/attn/q_einsum/w/b"}
  with pytest.raises(partition.PartitionError, match="needs LoRA adapters"):
    partition.trainable_labels(CFG, ABSTRACT, "lora")


def test_first_match_wins_and_regexes_fullmatch():
  rules = [(r"layer_0/.*", "frozen"), (r"layer_\d+/attn/.*", "trainable"), (r"layer", "trainable"),
           (r".*", "frozen")]
  got = trainable(CFG, ABSTRACT, rules)
  assert got == {p for p in tree_paths.flatten(ABSTRACT) if "/attn/" in p and not p.startswith("layer_0/")}


def test_unmatched_leaves_are_listed():
  with pytest.raises(partition.PartitionError) as e:
    partition.trainable_labels(CFG, ABSTRACT, [(r"layer_\d+/.*", "trainable")])
  msg = str(e.value)
  assert "2 leaves unmatched" in msg and "embedder/input_embedding" in msg and "final_norm/scale" in msg


def test_growth_modes_on_an_ungrown_model_raise():
  for mode in ("g_freeze", "g_train"):
    with pytest.raises(partition.PartitionError, match=f"mode '{mode}'.*no grown layers.*grow_mlp"):
      partition.trainable_labels(CFG, ABSTRACT, mode)


def test_unknown_mode_bad_label_nothing_trainable():
  with pytest.raises(ConfigError, match=r"unknown training mode 'gfreeze'.*'sft', 'g_freeze', 'g_train'"):
    partition.trainable_labels(CFG, ABSTRACT, "gfreeze")
  with pytest.raises(ConfigError, match=r"unknown training mode 'adapters'.*'lora'.*'custom'"):
    methods.setup_method("adapters", CFG, ABSTRACT, {})
  with pytest.raises(partition.PartitionError, match=r"labels \['train'\] are not allowed"):
    partition.trainable_labels(CFG, ABSTRACT, [(".*", "train")])
  with pytest.raises(partition.PartitionError, match="nothing would train"):
    partition.trainable_labels(CFG, ABSTRACT, [(".*", "frozen")])
  with pytest.raises(partition.PartitionError, match="bad regex"):
    partition.trainable_labels(CFG, ABSTRACT, [("(", "frozen")])


def test_setup_method_plain_modes_and_options():
  method = methods.setup_method("g_train", GROWN_CFG, GROWN, {"unrelated": 1})
  assert method.model_params(GROWN) is GROWN and method.anchor is None and method.fisher is None
  assert set(partition.trainable_paths(method.labels)) == trainable(GROWN_CFG, GROWN, "g_train")
  custom = methods.setup_method("custom", CFG, ABSTRACT, {"rules": [("final_norm/scale", "trainable"),
                                                                   (".*", "frozen")]})
  assert partition.trainable_paths(custom.labels) == ["final_norm/scale"]
  with pytest.raises(ConfigError, match=r"unknown method option\(s\) \['lora_rnak'\]"):
    methods.setup_method("lora", CFG, ABSTRACT, {"lora_rnak": 4})
  with pytest.raises(ConfigError, match="'ewc' needs reference_batches"):
    methods.setup_method("ewc", CFG, ABSTRACT, {})


def test_count():
  labels = partition.trainable_labels(GROWN_CFG, GROWN, "g_freeze")
  assert partition.count(GROWN, labels) == 2 * 3 * 64 * 128
  assert partition.count(GROWN) == sum(x.size for x in jax.tree.leaves(GROWN))
