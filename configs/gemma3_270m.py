r"""The real Gemma 3 270M (PyPI GGUF) grown x2 and fine-tuned with G-Freeze for a few steps: runs on this CPU.

  python -m grow_jax.main --config=configs/gemma3_270m.py --workdir=/tmp/grow_jax/270m_gfreeze
  python -m grow_jax.main --config=configs/gemma3_270m.py:mode=sft,steps=5 --workdir=/tmp/grow_jax/270m_sft
  python -m grow_jax.main --config=configs/gemma3_270m.py:task=synthetic --workdir=/tmp/grow_jax/270m_synth

Args: mode (g_freeze|g_train|sft|lora|mlp_only|l2sp|ewc), steps, task (gettext_en_fr: offline English->French
pairs; any grow_jax.data task, or synthetic), layers ('all' or '0,4,8'), batch, seq_len, lr, chunk (loss_chunk).
f32 on CPU (bf16 is not faster here); ~6 s (G-Freeze) / ~7 s (SFT) per step of batch 8 x 64 tokens on 2 quiet
cores (experiments/results/bench_step.md). chunk > 0 saves memory only at long seq_len (it is slower at 64).
"""

from grow_jax.train import config as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, mode="g_freeze", steps=6, task="gettext_en_fr", layers="all", batch=8, seq_len=64,
                     lr=1e-4, chunk=0, accum=1)
  c = cu.base_config()
  c.init.source = "gemma3-270m"
  c.total_steps = arg.steps
  c.log_every_steps = 1
  c.eval_every_steps = 0               # evaluate at the end only
  c.checkpoint.every_steps = 0         # checkpoint at the end only (~2 GiB with Adam state)
  c.checkpoint.keep = 1
  c.batch_size = arg.batch
  c.grad_accum_steps = arg.accum
  c.data.task = arg.task
  c.data.seq_len = arg.seq_len
  c.data.packing = True
  c.train.mode = arg.mode
  c.train.loss_chunk = arg.chunk
  c.train.reference_task = "stdlib_text"   # EWC's Fisher on general English prose
  c.growth.layers = arg.layers
  c.optimizer.learning_rate = arg.lr
  c.optimizer.warmup_steps = 1
  c.optimizer.weight_decay = 0.0
  c.eval.max_examples = 16
  c.eval.batch_size = 8
  return c


def sweep():
  return [{"config_arg": f"mode={m}"} for m in ("g_freeze", "g_train", "sft", "lora")]
