"""`g_freeze_down`: G-Freeze that trains only the grown copies' down projections, a third of G-Freeze's count.

Why this variant (docs/results.md, "Where to grow", the growth-variant table): growing attention heads instead
of MLPs was the one variant that moved the new-task / retention trade-off the right way at seed 0, and the
results name it "a lead for a tuned, 3-seed arm". That variant changed two things at once: *where* the new
capacity sits (attention instead of MLP) and *how much* of it trains (the new heads' query and output
projections: 2·N·D·H = 1.31M parameters per layer on Gemma 3 270M, against G-Freeze's 3·F·D = 3.93M). This
method keeps MLP growth and changes only the second: each copy's down projection `layer_i/mlp/grown_j/linear`
(F·D = 2048·640 = 1.31M per layer on the 270M, attention growth's count exactly) trains; the copies' gate/up and
every original leaf stay frozen. If it keeps as much as attention growth, the lead is about the count, not the
location; if it forgets like G-Freeze, it is about the location.

At step 0 the model is the original one bit for bit (growth halves the down projections, as for G-Freeze); what
trains is a second linear read-out of the original MLP's own hidden features (the copies' gate/up stay the
pretrained ones), so the update is linear in features the pretrained model already computes. Growth as G-Freeze's: ×2 by default (`config.growth.factor`), at
`config.growth.layers` or a growth plan's layers.

    python -m grow_jax.main --config=configs/tiny.py:mode=g_freeze_down --workdir=/tmp/grow_jax/gfd

This file is the whole method: nothing else in grow_jax names it (the registry discovers it).
"""

from __future__ import annotations

from grow_jax.methods.builtin import GFreeze
from grow_jax.methods.base import register
from grow_jax.methods.partition import FROZEN, TRAINABLE

GROWN_DOWN = r"layer_\d+/mlp/grown_\d+/linear"


@register
class GFreezeDown(GFreeze):
  name = "g_freeze_down"
  description = "only the grown MLP copies' down projections train (a third of G-Freeze's count); the rest is frozen"

  def rules(self, config):
    self.grown(config)                     # a model without grown layers is an error naming grow_mlp
    return [(GROWN_DOWN, TRAINABLE), (".*", FROZEN)]


__all__ = ["GFreezeDown", "GROWN_DOWN"]
