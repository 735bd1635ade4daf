r"""Quickstart, the main job on the embedded default: grow the real Gemma 3 270M (PyPI GGUF) x2, fine-tune
the new MLP copies only (G-Freeze) on offline English->French translation, and compare before/after:
translation BLEU/chrF (new task), capital-city questions answered by generation and by multiple choice
(world knowledge), perplexity of and
KL(base ‖ model) on Python-stdlib English prose (drift). About 15 minutes on 2 CPU cores.

  python -m grow_jax.main --config=configs/quickstart.py --workdir=/tmp/grow_jax/quickstart
  python -m grow_jax.main --config=configs/quickstart.py:mode=sft --workdir=/tmp/grow_jax/quickstart_sft

Args: mode (g_freeze|g_train|sft|lora|l2sp|...), steps, lr, batch, seq_len, eval_n (examples of each
evaluation task: translation pairs, capital-city questions, prose paragraphs).
The step budget is set by time, not by convergence: 48 steps of 8 x 64 packed tokens (~25k tokens,
~770 translation pairs) at ~6 s (G-Freeze) / ~7 s (SFT) per step on this CPU. The run ends with the
before/after table, also in <workdir>/summary.md; metrics are in <workdir>/metrics.jsonl.
"""

from grow_jax.train import config as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, mode="g_freeze", steps=48, lr=1e-4, batch=8, seq_len=64, eval_n=40)
  c = cu.base_config()
  c.init.source = "gemma3-270m"
  c.total_steps = arg.steps
  c.log_every_steps = 4
  c.eval_every_steps = 0                 # evaluate before the first step and at the end
  c.checkpoint.every_steps = 0           # one checkpoint at the end
  c.checkpoint.keep = 1
  c.batch_size = arg.batch
  c.data.task = "gettext_en_fr"
  c.data.seq_len = arg.seq_len
  c.data.packing = True
  c.train.mode = arg.mode
  c.growth.layers = "all"
  c.optimizer.learning_rate = arg.lr
  c.optimizer.warmup_steps = 4
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.eval.at_start = True
  c.eval.tasks = ("gettext_en_fr:test", "capitals_gen:test", "capitals:test", "stdlib_text:test")
  c.eval.max_examples = arg.eval_n
  c.eval.batch_size = 8
  c.eval.max_new_tokens = 40
  return c


def sweep():
  return [{"config_arg": f"mode={m}"} for m in ("g_freeze", "sft", "g_train", "lora")]
