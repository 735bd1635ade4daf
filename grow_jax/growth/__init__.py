"""Growth: function-preserving operators over the param tree, and the analysis of what fine-tuning changed.

    operators.py  grow_mlp (bit-exact copy-and-halve), merge_branches, dial, clone_divergence
    tasks.py      task branches: grow_task (a task's copy of branch 0), select_tasks (tasks on/off/scaled)
    attention.py  grow_attention (copied heads as their own head branches), merge_attention (HF export)
    analysis.py   ΔW = W_finetuned - W_pretrained statistics per layer and matrix (norms, effective/stable rank)
    plan.py       targeted growth: criteria, budgets, plans from pilot runs, ranking agreement; a CLI (sits above
                  the trainer: it trains pilots)
    plan_file.py  the growth-plan JSON: read_plan, write_plan, check_model (what the trainer reads)
    heatmaps.py   ΔW heat-maps (layer x gate/up/down) from a plan, and the localisation of the update
"""

from grow_jax.growth.attention import attention_config, grow_attention, grown_head_layers, merge_attention
from grow_jax.growth.operators import clone_divergence, dial, grow_config, grow_mlp, grown_layers, merge_branches

__all__ = ["attention_config", "clone_divergence", "dial", "grow_attention", "grow_config", "grow_mlp",
           "grown_head_layers", "grown_layers", "merge_attention", "merge_branches"]
