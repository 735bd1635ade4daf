r"""Gemma 3 4B (pretrained, text decoder) in the paper's setting: bf16 compute, f32 weights, FSDP x tensor mesh.

  python -m grow_jax.main --config=configs/paper_4b.py:mode=g_freeze,task=scitail,tensor=4 \
      --config.init.source=hf:$HOME/models/gemma-3-4b-pt --workdir=$HOME/runs/4b_gfreeze_scitail

Args as configs/paper_1b.py (mode, task, layers: 'all' | 'targeted' | '0,3,5', steps, batch, seq_len, lr,
tensor, ckpt). tensor must divide the 8 query heads and the MLP width; the 4 kv heads stay replicated.
"""

from grow_jax import config_utils as cu

TARGETED_LAYERS = "2,5,8,11,14,17,20,23,26,29,32,33"   # placeholder: ~1/3 of 34 layers, rank with analysis.py
DEFAULT_LR = {"sft": 5e-6, "l2sp": 5e-6, "ewc": 5e-6, "g_freeze": 5e-5, "g_train": 2e-5, "lora": 1e-4,
              "mlp_only": 5e-6}


def get_config(arg=None):
  arg = cu.parse_arg(arg, mode="g_freeze", task="translation_en_fr", layers="all", steps=2000, batch=64,
                     seq_len=512, lr=0.0, tensor=4, ckpt="hf:~/models/gemma-3-4b-pt", accum=2)
  c = cu.base_config()
  c.init.source = arg.ckpt
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.total_steps = arg.steps
  c.log_every_steps = 10
  c.eval_every_steps = 250
  c.checkpoint.every_steps = 250
  c.checkpoint.keep = 2
  c.batch_size = arg.batch
  c.grad_accum_steps = arg.accum
  c.data.task = arg.task
  c.data.seq_len = arg.seq_len
  c.data.packing = True
  c.train.mode = arg.mode
  c.train.loss_chunk = 128
  c.train.reference_task = "stdlib_text"
  c.train.lora_rank = 16
  c.growth.factor = 2 if arg.mode in ("g_freeze", "g_train") else 1
  c.growth.layers = TARGETED_LAYERS if arg.layers == "targeted" else arg.layers
  c.optimizer.learning_rate = arg.lr or DEFAULT_LR.get(arg.mode, 5e-6)
  c.optimizer.warmup_steps = 100
  c.optimizer.min_lr_ratio = 0.1
  c.eval.max_examples = 500
  c.eval.batch_size = 64
  c.eval.at_start = True
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = arg.tensor
  return c


def sweep():
  out = []
  for task in ("translation_en_fr", "scitail", "sciq", "mathqa"):
    for mode in ("g_freeze", "g_train", "sft", "lora"):
      out.append({"config_arg": f"mode={mode},task={task}"})
  return out
