"""Methods and partition rules: first match wins, every leaf must match, each method labels exactly the leaves
its docstring names; a method is one registered class, bound to a model. All on abstract params."""

import jax
import jax.numpy as jnp
import pytest

from grow_jax import methods, model, tree_paths
from grow_jax.errors import ConfigError
from grow_jax.growth import operators as growth
from grow_jax.methods import partition

CFG = model.get_preset("tiny")                             # 7 layers
GROWN_CFG = growth.grow_config(CFG, layers=[2, 5])
ABSTRACT = model.abstract_params(CFG)
GROWN = model.abstract_params(GROWN_CFG)
ALL = set(tree_paths.flatten(GROWN))


def trainable(config, params, mode):
  return set(partition.trainable_paths(methods.trainable_labels(config, params, mode)))


def test_methods_label_exactly_the_documented_leaves():
  copies = {f"layer_{i}/mlp/grown_1/{n}" for i in (2, 5) for n in ("gating_einsum", "linear")}
  assert trainable(GROWN_CFG, GROWN, "sft") == ALL
  assert trainable(GROWN_CFG, GROWN, "l2sp") == ALL == trainable(GROWN_CFG, GROWN, "ewc")
  assert trainable(GROWN_CFG, GROWN, "g_freeze") == copies
  # G-Train: copies + original gate/up of the grown layers only; original down projections stay frozen.
  assert trainable(GROWN_CFG, GROWN, "g_train") == copies | {"layer_2/mlp/gating_einsum",
                                                             "layer_5/mlp/gating_einsum"}
  assert trainable(GROWN_CFG, GROWN, "mlp_only") == {p for p in ALL if "/mlp/" in p}
  # G-Freeze + the grown layers' post-feed-forward norm scales (which rescale original and copies together).
  assert trainable(GROWN_CFG, GROWN, "g_freeze_norms") == copies | {"layer_2/post_ffw_norm/scale",
                                                                    "layer_5/post_ffw_norm/scale"}
  assert methods.growth_factor("g_freeze_norms") == 2
  labels = methods.trainable_labels(GROWN_CFG, GROWN, "g_freeze")
  assert jax.tree.structure(labels) == jax.tree.structure(jax.tree.map(lambda _: 0, GROWN))
  assert set(jax.tree.leaves(labels)) == {"trainable", "frozen"}


def test_lora_adds_adapters_and_trains_only_them():
  method = methods.create("lora", {"lora_rank": 2}, CFG, ABSTRACT)
  trained = jax.eval_shape(lambda p: method.init_params(p, jax.random.key(0)), ABSTRACT)
  paths = set(partition.trainable_paths(method.labels))
  assert paths and all(p.startswith("lora/") for p in paths)
  assert paths == {p for p in tree_paths.flatten(trained) if p.startswith("lora/")}
  assert "lora/layer_0/attn/q_einsum/w/a" in paths
  assert method.info() == {"lora_rank": 2, "lora_scale": 1.0}


def test_first_match_wins_and_regexes_fullmatch():
  rules = [(r"layer_0/.*", "frozen"), (r"layer_\d+/attn/.*", "trainable"), (r"layer", "trainable"),
           (r".*", "frozen")]
  got = trainable(CFG, ABSTRACT, rules)
  assert got == {p for p in tree_paths.flatten(ABSTRACT) if "/attn/" in p and not p.startswith("layer_0/")}


def test_unmatched_leaves_are_listed():
  with pytest.raises(partition.PartitionError) as e:
    methods.trainable_labels(CFG, ABSTRACT, [(r"layer_\d+/.*", "trainable")])
  msg = str(e.value)
  assert "2 leaves unmatched" in msg and "embedder/input_embedding" in msg and "final_norm/scale" in msg


def test_growth_methods_on_an_ungrown_model_raise():
  for mode in ("g_freeze", "g_train"):
    with pytest.raises(partition.PartitionError, match=f"mode '{mode}'.*no grown layers.*grow_mlp"):
      methods.trainable_labels(CFG, ABSTRACT, mode)


def test_unknown_mode_bad_label_nothing_trainable():
  # the known modes are listed in registration order, which depends on what imported the methods first
  with pytest.raises(ConfigError, match=r"unknown training mode 'gfreeze'; known training modes: \[") as e:
    methods.trainable_labels(CFG, ABSTRACT, "gfreeze")
  assert all(f"'{m}'" in str(e.value) for m in ("sft", "g_freeze", "g_train"))
  with pytest.raises(ConfigError, match=r"unknown training mode 'adapters'; known training modes: \[") as e:
    methods.setup_method("adapters", CFG, ABSTRACT, {})
  assert all(f"'{m}'" in str(e.value) for m in ("custom", "lora"))
  with pytest.raises(partition.PartitionError, match=r"labels \['train'\] are not allowed"):
    methods.trainable_labels(CFG, ABSTRACT, [(".*", "train")])
  with pytest.raises(partition.PartitionError, match="nothing would train"):
    methods.trainable_labels(CFG, ABSTRACT, [(".*", "frozen")])
  with pytest.raises(partition.PartitionError, match="bad regex"):
    methods.trainable_labels(CFG, ABSTRACT, [("(", "frozen")])


def test_setup_method_options_are_the_methods_own():
  bound = methods.setup_method("g_train", GROWN_CFG, GROWN, {"lora_rank": 4})       # another method's: ignored
  assert bound.model_params(GROWN) is GROWN and bound.prepared is None and bound.optimizer_transforms() == []
  assert set(partition.trainable_paths(bound.labels)) == trainable(GROWN_CFG, GROWN, "g_train")
  custom = methods.setup_method("custom", CFG, ABSTRACT, {"custom_rules": [("final_norm/scale", "trainable"),
                                                                          (".*", "frozen")]})
  assert partition.trainable_paths(custom.labels) == ["final_norm/scale"]
  # A name no registered method declares is a typo, whatever its prefix.
  with pytest.raises(ConfigError, match=r"unknown method option\(s\) \['lora_rnak'\] \(did you mean \['lora_rank'\]"):
    methods.setup_method("lora", CFG, ABSTRACT, {"lora_rnak": 4})
  with pytest.raises(ConfigError, match=r"unknown method option\(s\) \['unrelated'\]"):
    methods.setup_method("g_train", GROWN_CFG, GROWN, {"unrelated": 1})
  with pytest.raises(ConfigError, match=r"custom_rules=None: expected a list of \(path_regex"):
    methods.setup_method("custom", CFG, ABSTRACT, {})
  # EWC prepares its Fisher on reference batches: on shapes it needs none (the restore target) ...
  assert jax.tree.leaves(methods.setup_method("ewc", CFG, ABSTRACT, {}).prepared)[0].dtype == jnp.float32
  real = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), ABSTRACT)
  with pytest.raises(ConfigError, match="'ewc' needs reference_batches"):       # ... on weights it does
    methods.setup_method("ewc", CFG, real, {})


def test_options_are_declared_once_and_checked_by_their_method():
  declared = methods.declared_options()
  assert {"lora_rank", "match_params_of", "l2sp_coef", "ewc_coef", "ewc_batches", "custom_rules"} <= set(declared)
  assert set(methods.config_options()) == {k for k, o in declared.items() if o.config}
  assert "custom_rules" not in methods.config_options()               # a list of rules: the Python API only
  with pytest.raises(ConfigError, match=r"ewc_normalize='sum': expected None, 'mean' or 'max'"):
    methods.checked_options("ewc", {"ewc_normalize": "sum"})
  with pytest.raises(ConfigError, match=r"l2sp_coef=-1: expected a float >= 0"):
    methods.checked_options("l2sp", {"l2sp_coef": -1})

  class Clash(methods.Method):
    name = "clash_test"
    options = {"lora_rank": methods.Option(4)}          # LoRA's name with another default

  methods.register(Clash)
  try:
    with pytest.raises(ConfigError, match=r"method 'clash_test' declares option 'lora_rank' unlike method 'lora'"):
      methods.declared_options()
  finally:
    methods.base.unregister("clash_test")


def test_a_new_method_is_one_registered_class():
  class GFreezeDown(methods.builtin.GFreeze):
    name = "g_freeze_down_test"

    def rules(self, config):
      grown = methods.builtin.layers_regex(self.grown(config))
      return [(rf"layer_{grown}/mlp/grown_\d+/gating_einsum", "frozen")] + list(super().rules(config))

  methods.register(GFreezeDown)
  try:
    assert "g_freeze_down_test" in methods.names()
    assert methods.growth_factor("g_freeze_down_test") == 2
    got = trainable(GROWN_CFG, GROWN, "g_freeze_down_test")
    assert got == {"layer_2/mlp/grown_1/linear", "layer_5/mlp/grown_1/linear"}
    assert methods.from_meta(methods.create("g_freeze_down_test", {}, GROWN_CFG, GROWN).meta(), GROWN_CFG,
                             GROWN).name == "g_freeze_down_test"
  finally:
    methods.base.unregister("g_freeze_down_test")


def test_count():
  labels = methods.trainable_labels(GROWN_CFG, GROWN, "g_freeze")
  assert partition.count(GROWN, labels) == 2 * 3 * 64 * 128
  assert partition.count(GROWN) == sum(x.size for x in jax.tree.leaves(GROWN))
