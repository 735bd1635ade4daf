r"""The paper's setting on Gemma 3 1B (pretrained): grow every (or a targeted set of) MLP x2 and fine-tune on a
new task; compare with SFT and LoRA. For TPU / GPU: bf16 compute, f32 weights, FSDP (+ optional tensor) mesh.

Data first, once, where the Hugging Face hub is reachable (the default task, translation_en_fr, is its first
200k WMT14 training pairs; the staged copy also holds the validation split, WinoGrande's and stdlib_text's):
  python -m grow_jax.data.stage --config=configs/paper_1b.py --out=gs://BUCKET/data
  python -m grow_jax.data.stage --config=configs/paper_1b.py:task=scitail --out=gs://BUCKET/data   # per task
Then every run reads it with no network (launch/README.md, "Data: stage once, read everywhere"):
  python -m grow_jax.main --config=configs/paper_1b.py:mode=g_freeze --config.data.staged=gs://BUCKET/data \
      --config.init.source=hf:$HOME/models/gemma-3-1b-pt --workdir=$HOME/runs/1b_gfreeze_translation
  python -m grow_jax.main --config=configs/paper_1b.py:mode=g_freeze,task=scitail \
      --config.data.staged=gs://BUCKET/data --workdir=$HOME/runs/1b_gfreeze_scitail
  python -m grow_jax.main --config=configs/paper_1b.py:mode=g_freeze,task=scitail,plan=$HOME/runs/plan_1b_scitail.json \
      --config.data.staged=gs://BUCKET/data --workdir=$HOME/runs/1b_gfreeze_scitail_targeted
Without --config.data.staged (and $GROW_JAX_STAGED_DATA) every process reads the hub itself.

Args: mode (g_freeze|g_train|g_freeze_norms|g_freeze_attn|sft|lora|l2sp|ewc), task
(translation_en_fr|scitail|sciq|mathqa|...), limit (hub tasks: the first `limit` records of each split,
streamed; default 200000; 0 = all of WMT14's 40.8M pairs, hours of download and tokenization before step 1),
layers ('all' or '0,3,5'), plan (a growth-plan JSON: its layers grow; layers must stay 'all'), steps, batch,
seq_len, lr (0 = the mode's default), tensor (tensor-parallel size), ckpt (init source), accum. Other task
options: --config.data.options.KEY=VALUE (revision, dataset, ...). Evaluates before and after on the task,
WinoGrande and stdlib prose. Hyperparameters are our choice: the paper does not publish them.

Targeted growth (the paper grows ~9-10 of 26 layers), per task:
  1. a pilot SFT run on the task, short (here 200 steps), checkpoints kept for the pilot-length check:
       python -m grow_jax.main --config=configs/paper_1b.py:mode=sft,task=scitail,steps=200 \
           --config.checkpoint.every_steps=50 --config.checkpoint.keep=8 --workdir=$HOME/runs/1b_pilot_scitail
  2. the plan: layers ranked by the size of their MLP update (criterion 'update'), budget a third of all-layer
     G-Freeze's trainable count (8 of 26 layers; --num_layers=10 for the paper's count):
       python -m grow_jax.growth.plan --pilot=$HOME/runs/1b_pilot_scitail --fraction=0.34 \
           --out=$HOME/runs/plan_1b_scitail.json
  3. train with plan=<that file> (above). Check the ranking is stable before relying on it: a second pilot
     seed (--config.seed=1) and an earlier checkpoint (--step=100), then
       python -m grow_jax.growth.plan --compare=plan_a.json,plan_b.json     (Spearman, top-k overlap)
"""

from grow_jax.train import config as cu

DEFAULT_LR = {"sft": 1e-5, "l2sp": 1e-5, "ewc": 1e-5, "g_freeze": 1e-4, "g_train": 5e-5, "lora": 2e-4,
              "mlp_only": 1e-5, "g_freeze_norms": 1e-4, "g_freeze_attn": 1e-4}
METHOD_OPTIONS = {"lora_rank": 16}           # the LoRA arm's rank


def get_config(arg=None):
  return cu.paper_config(arg, default_lr=DEFAULT_LR, ckpt="hf:~/models/gemma-3-1b-pt",
                         method_options=METHOD_OPTIONS)


def sweep():
  return cu.paper_sweep()
