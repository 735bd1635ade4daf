r"""A tiny random Gemma 3 (7 layers, d=64) on the synthetic task: trains in seconds on CPU; used by tests.

  python -m grow_jax.main --config=configs/tiny.py --workdir=/tmp/grow_jax/tiny
  python -m grow_jax.main --config=configs/tiny.py:mode=g_freeze,steps=40 --workdir=/tmp/grow_jax/tiny_gf

Args (after the colon): mode (sft|g_freeze|g_train|mlp_only|lora|l2sp|ewc), steps, grow (growth factor,
default 2 for g_freeze/g_train, else 1), layers ('all' or '0,3'), batch, accum, seq_len, layers_n (model depth).
"""

from grow_jax.train import config as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, mode="sft", steps=20, grow=0, layers="all", batch=8, accum=1, seq_len=32, layers_n=2,
                     lr=3e-3)
  c = cu.base_config()
  c.init.source = "random:tiny"
  c.model.num_layers = arg.layers_n
  c.total_steps = arg.steps
  c.log_every_steps = 5
  c.eval_every_steps = 10
  c.checkpoint.every_steps = 10
  c.batch_size = arg.batch
  c.grad_accum_steps = arg.accum
  c.data.task = "synthetic"
  c.data.seq_len = arg.seq_len
  c.train.mode = arg.mode
  c.growth.factor = arg.grow                # 0 = the method's default (2 for g_freeze / g_train)
  c.growth.layers = arg.layers
  c.optimizer.learning_rate = arg.lr
  c.optimizer.warmup_steps = 2
  c.eval.max_examples = 16
  c.eval.batch_size = 8
  return c


def sweep():
  return [{"config_arg": f"mode={m}"} for m in ("sft", "g_freeze", "g_train", "lora", "l2sp")]
