r"""Gemma 3 4B (pretrained, text decoder) in the paper's setting: bf16 compute, f32 weights, FSDP x tensor mesh.

  python -m grow_jax.main --config=configs/paper_4b.py:mode=g_freeze,task=scitail,tensor=4 \
      --config.init.source=hf:$HOME/models/gemma-3-4b-pt --workdir=$HOME/runs/4b_gfreeze_scitail

Args as configs/paper_1b.py (mode, task, layers: 'all' | 'targeted' | '0,3,5', steps, batch, seq_len, lr,
tensor, ckpt, accum). tensor must divide the 8 query heads and the MLP width; the 4 kv heads stay replicated.
"""

from grow_jax.train import config as cu

TARGETED_LAYERS = "2,5,8,11,14,17,20,23,26,29,32,33"   # placeholder: ~1/3 of 34 layers, rank with rank_layers.py
DEFAULT_LR = {"sft": 5e-6, "l2sp": 5e-6, "ewc": 5e-6, "g_freeze": 5e-5, "g_train": 2e-5, "lora": 1e-4,
              "mlp_only": 5e-6}


def get_config(arg=None):
  return cu.paper_config(arg, targeted_layers=TARGETED_LAYERS, default_lr=DEFAULT_LR,
                         ckpt="hf:~/models/gemma-3-4b-pt", tensor=4, accum=2)


def sweep():
  return cu.paper_sweep()
