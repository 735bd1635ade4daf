"""The paper's growth methods and the full-capacity baselines, each one registered `Method` (base.py).

Our reading of the paper (it publishes no code): after `growth.grow_mlp`, a grown layer's original MLP keeps
its leaves at `layer_i/mlp/*` (down projection halved) and each copy is `layer_i/mlp/grown_j/*`.

  sft       every leaf trains (full fine-tuning; base.Method)
  mlp_only  every MLP leaf (original and grown branches), the rest frozen
  g_freeze  only the grown copies (gate, up, down); every original leaf is frozen, incl. the halved original
            down projection
  g_train   the grown copies, plus the original gate/up (layer_i/mlp/gating_einsum) of the grown layers (the
            paper's "entire up-projection is trainable"); the original down projection stays frozen
  custom    rules given as the option `custom_rules`: [(path_regex, 'trainable' | 'frozen'), ...]

Ablations:
  g_freeze_norms  G-Freeze plus the grown layers' post-feed-forward norm scales (`post_ffw_norm/scale`), which
                  rescale the whole MLP output (original + copies); everything else as G-Freeze
  g_freeze_attn   attention-head growth instead of MLP growth (the paper's appendix ablation): only the grown
                  heads train (`attn/grown_j/{q_einsum,kv_einsum,attn_vec_einsum}/w`, growth/attention.py);
                  the original heads, incl. their halved output projection, are frozen. The trainer grows the
                  heads x2 (config.growth.attention_factor, .attention_kv) and no MLP (growth.factor 0 -> 1)

LoRA is in lora.py, L2-SP and EWC in regularizers.py.
"""

from __future__ import annotations

from grow_jax.growth.attention import grown_head_layers
from grow_jax.growth.operators import grown_layers
from grow_jax.growth.tasks import newest_task_branches
from grow_jax.methods.base import Method, Option, register
from grow_jax.methods.partition import FROZEN, GROWN_BRANCH, GROWN_HEADS, TRAINABLE, PartitionError
from grow_jax.model.config import ModelConfig


def layers_regex(layers) -> str:
  """A regex alternative matching exactly these layer indices: '(2|5)'."""
  return "(" + "|".join(str(i) for i in layers) + ")"


@register
class MLPOnly(Method):
  name = "mlp_only"
  description = "every MLP leaf trains (original and grown branches); the rest is frozen"

  def rules(self, config):
    return [(r"layer_\d+/mlp/.*", TRAINABLE), (".*", FROZEN)]


@register
class Custom(Method):
  name = "custom"
  description = "rules given as the option `custom_rules`: [(path_regex, 'trainable' | 'frozen'), ...]"
  options = {"custom_rules": Option(None, check=bool, expected="a list of (path_regex, 'trainable' | 'frozen') rules",
                                    config=False)}

  def rules(self, config):
    return [tuple(rule) for rule in self.opts["custom_rules"]]


@register
class GFreeze(Method):
  name = "g_freeze"
  description = "only the grown MLP copies train; every original parameter is frozen"
  grows = True

  def grown(self, config: ModelConfig) -> tuple[int, ...]:
    layers = grown_layers(config)
    if not layers:
      raise PartitionError(f"mode {self.name!r} trains the grown MLP copies, but the model has no grown layers "
                           "(config.mlp_branches has one branch per layer): grow it first with "
                           "growth.grow_mlp(config, params, layers=...)")
    return layers

  def branches(self, config: ModelConfig) -> str:
    """The grown branches that train: every one, or on a model with task branches the newest task's (the
    task this run grew: growth/tasks.py)."""
    return newest_task_branches(config) or GROWN_BRANCH

  def rules(self, config):
    self.grown(config)
    return [(self.branches(config), TRAINABLE), (".*", FROZEN)]


@register
class GTrain(GFreeze):
  name = "g_train"
  description = "the grown copies and the grown layers' original gate/up train; the original down stays frozen"

  def rules(self, config):
    grown = self.grown(config)
    return [(self.branches(config), TRAINABLE), (rf"layer_{layers_regex(grown)}/mlp/gating_einsum", TRAINABLE),
            (".*", FROZEN)]


@register
class GFreezeNorms(GFreeze):
  name = "g_freeze_norms"
  description = "G-Freeze plus the grown layers' post-feed-forward norm scales"

  def rules(self, config):
    grown = layers_regex(self.grown(config))
    return [(rf"layer_{grown}/post_ffw_norm/scale", TRAINABLE)] + list(super().rules(config))


@register
class GFreezeAttn(Method):
  name = "g_freeze_attn"
  description = "only the grown attention heads train (attention-head growth); every original parameter is frozen"
  grows_attention = True

  def rules(self, config):
    if not grown_head_layers(config):
      raise PartitionError(f"mode {self.name!r} trains grown attention heads, but the model has none "
                           "(config.attn_branches is unset): grow them first with "
                           "growth.grow_attention(config, params, layers=...) or config.growth.attention_factor")
    return [(GROWN_HEADS, TRAINABLE), (".*", FROZEN)]


__all__ = ["MLPOnly", "Custom", "GFreeze", "GTrain", "GFreezeNorms", "GFreezeAttn", "layers_regex"]
