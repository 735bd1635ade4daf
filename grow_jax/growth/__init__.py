"""Growth: function-preserving operators over the param tree, and the analysis of what fine-tuning changed.

    operators.py  grow_mlp (bit-exact copy-and-halve), merge_branches, grow_attention, dial, clone_divergence
    analysis.py   ΔW = W_finetuned - W_pretrained statistics per layer (effective rank, norms), layer ranking
"""

from grow_jax.growth.operators import (clone_divergence, dial, grow_attention, grow_config, grow_mlp, grown_layers,
                                       merge_branches)

__all__ = ["clone_divergence", "dial", "grow_attention", "grow_config", "grow_mlp", "grown_layers",
           "merge_branches"]
