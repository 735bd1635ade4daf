r"""Gemma 3 4B (pretrained, text decoder) in the paper's setting: bf16 compute, f32 weights, FSDP x tensor mesh.

Data first, once, where the Hugging Face hub is reachable (as configs/paper_1b.py: the default task is the first
200k WMT14 en-fr training pairs), then every run reads the staged copy with no network:
  python -m grow_jax.data.stage --config=configs/paper_4b.py:task=scitail --out=gs://BUCKET/data
  python -m grow_jax.main --config=configs/paper_4b.py:mode=g_freeze,task=scitail,tensor=4 \
      --config.data.staged=gs://BUCKET/data \
      --config.init.source=hf:$HOME/models/gemma-3-4b-pt --workdir=$HOME/runs/4b_gfreeze_scitail
  python -m grow_jax.main --config=configs/paper_4b.py:mode=g_freeze,task=scitail,plan=$HOME/runs/plan_4b_scitail.json \
      --config.data.staged=gs://BUCKET/data --workdir=$HOME/runs/4b_gfreeze_scitail_targeted

Args as configs/paper_1b.py (mode, task, limit: records per split of a hub task, default 200000, layers: 'all' |
'0,3,5', plan: a growth-plan JSON, steps, batch, seq_len, lr, tensor, ckpt, accum). tensor must divide the 8
query heads and the MLP width; the 4 kv heads stay replicated.

Targeted growth: as configs/paper_1b.py's docstring says, with this config: a pilot SFT run
(`configs/paper_4b.py:mode=sft,task=...,steps=200`), then
`python -m grow_jax.growth.plan --pilot=<its workdir> --fraction=0.34 --out=plan_4b_<task>.json` (11 of 34
layers), then `plan=plan_4b_<task>.json`.
"""

from grow_jax.train import config as cu

DEFAULT_LR = {"sft": 5e-6, "l2sp": 5e-6, "ewc": 5e-6, "g_freeze": 5e-5, "g_train": 2e-5, "lora": 1e-4,
              "mlp_only": 5e-6, "g_freeze_norms": 5e-5, "g_freeze_attn": 5e-5}
METHOD_OPTIONS = {"lora_rank": 16}           # the LoRA arm's rank


def get_config(arg=None):
  return cu.paper_config(arg, default_lr=DEFAULT_LR, ckpt="hf:~/models/gemma-3-4b-pt", tensor=4, accum=2,
                         method_options=METHOD_OPTIONS)


def sweep():
  return cu.paper_sweep()
