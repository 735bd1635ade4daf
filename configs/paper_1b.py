r"""The paper's setting on Gemma 3 1B (pretrained): grow every (or a targeted set of) MLP x2 and fine-tune on a
new task; compare with SFT and LoRA. For TPU / GPU: bf16 compute, f32 weights, FSDP (+ optional tensor) mesh.

  python -m grow_jax.main --config=configs/paper_1b.py:mode=g_freeze,task=scitail \
      --config.init.source=hf:$HOME/models/gemma-3-1b-pt --workdir=$HOME/runs/1b_gfreeze_scitail
  python -m grow_jax.main --config=configs/paper_1b.py:mode=g_freeze,layers=targeted --workdir=...
  python -m grow_jax.main --config=configs/paper_1b.py:mode=sft,task=mathqa --workdir=...

Args: mode (g_freeze|g_train|sft|lora|l2sp|ewc), task (translation_en_fr|scitail|sciq|mathqa|...), layers
('all', 'targeted' = TARGETED_LAYERS below, or '0,3,5'), steps, batch, seq_len, lr (0 = the mode's default),
tensor (tensor-parallel size), ckpt (init source), accum. Evaluates before and after on the task,
WinoGrande and stdlib prose. Hyperparameters are our choice: the paper does not publish them.
"""

from grow_jax.train import config as cu

# Targeted growth grows ~9-10 of 26 layers (paper). Placeholder ranking: replace with the layers ranked by
# experiments/rank_layers.py (largest MLP updates of a pilot SFT run on the task).
TARGETED_LAYERS = "1,3,5,7,9,11,13,15,17,19"
DEFAULT_LR = {"sft": 1e-5, "l2sp": 1e-5, "ewc": 1e-5, "g_freeze": 1e-4, "g_train": 5e-5, "lora": 2e-4,
              "mlp_only": 1e-5}


def get_config(arg=None):
  return cu.paper_config(arg, targeted_layers=TARGETED_LAYERS, default_lr=DEFAULT_LR,
                         ckpt="hf:~/models/gemma-3-1b-pt")


def sweep():
  return cu.paper_sweep()
