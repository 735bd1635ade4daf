"""Model FLOPs of one training step of a Gemma 3 config: forward, activation-gradient and weight-gradient parts.

    from experiments import flops          # or importlib by path
    f = flops.train_step_flops(config, trainable_paths, batch=8, seq_len=64)
    f.total, f.per_token, f.forward, f.act_grad, f.weight_grad

Counted: matrix multiplications only, 2 FLOPs per multiply-add, as they are computed (not what an ideal
kernel would need):
  * q, kv, attn_vec projections, the MLP branches (gate/up as one (D, 2F) matmul, down), per token;
  * attention logits q.k and probs.v over all `attn_keys` keys of every query (default seq_len: the model
    computes the full (T, S) score matrix and masks it; causality and the sliding window save nothing);
  * the unembedding (tied to the embedding) at `unembed_positions` positions per step (default
    batch * (seq_len - 1): train/step.py computes logits for every position but the last); passing the number
    of target positions gives the FLOPs of a loss that computes logits only at targets (`--unembed=targets`).
Backward, for each matmul y = x W: the weight gradient x^T dy only if W is trainable; the activation gradient
dy W^T only if x depends on a trainable leaf (JAX differentiates only with respect to the trainable leaves,
so the backward pass stops at the first one); for q.k and probs.v, the gradient of each operand that depends
on a trainable leaf. LoRA: the forward uses W' = W + s A B, so an adapted W counts as trainable (its dense
gradient is computed), plus per step the merge A B and the gradients of A and B.
Not counted: embedding lookup and its scatter-add gradient, norms, RoPE, softmax, GELU, the loss's
log-softmax, the optimizer update (elementwise work, which XLA's cost analysis does count: see
tests/test_flops.py for the size of the difference on the tiny model).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping

EMBEDDING = "embedder/input_embedding"


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one step (all rows of the batch): forward, activation gradients, weight gradients."""

  forward: float
  act_grad: float
  weight_grad: float
  tokens: int                 # batch * seq_len
  unembed: float = 0.0        # the unembedding's share of forward + act_grad + weight_grad
  adapters: float = 0.0       # LoRA merge + adapter gradients (per step, not per token), in forward/weight_grad

  @property
  def total(self) -> float:
    return self.forward + self.act_grad + self.weight_grad

  @property
  def per_token(self) -> float:
    return self.total / self.tokens

  def as_dict(self) -> dict[str, float]:
    return {"forward": self.forward, "act_grad": self.act_grad, "weight_grad": self.weight_grad,
            "total": self.total, "per_token": self.per_token, "unembed": self.unembed, "adapters": self.adapters}


def train_step_flops(config, trainable: Iterable[str], *, batch: int, seq_len: int,
                     unembed_positions: int | None = None, attn_keys: int | None = None,
                     lora: Mapping[str, int] | None = None, backward: bool = True) -> StepFlops:
  """Model FLOPs of one train step (see the module docstring).

  config: the model's ModelConfig (the grown one for g_freeze / g_train).
  trainable: paths of the model's leaves ('layer_3/mlp/grown_1/linear', ...) whose gradient is computed.
  unembed_positions: positions per step where logits are computed (default batch * (seq_len - 1)).
  lora: {adapted base path: rank}; those weights count as trainable, plus the adapter FLOPs.
  backward: False gives the forward pass alone (evaluation).
  """
  lora = dict(lora or {})
  trainable = set(trainable) | set(lora)
  if not backward:
    trainable = set()
  n = batch * seq_len
  S = seq_len if attn_keys is None else attn_keys
  U = batch * (seq_len - 1) if unembed_positions is None else unembed_positions
  D, N, K, H, V = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size
  fwd = act = wgt = 0.0

  def matmul(rows: int, fan_in: int, fan_out: int, weight: str | None, input_depends: bool) -> bool:
    """Adds one matmul; returns whether its output depends on a trainable leaf."""
    nonlocal fwd, act, wgt
    f = 2.0 * rows * fan_in * fan_out
    fwd += f
    trained = weight is not None and weight in trainable
    if trained:
      wgt += f
    if input_depends:
      act += f
    return input_depends or trained

  t = lambda path: path in trainable
  dep = t(EMBEDDING)                                   # the residual stream depends on a trainable leaf
  for i in range(config.num_layers):
    p = f"layer_{i}"
    h = dep or t(f"{p}/pre_attention_norm/scale")
    q = matmul(n, D, N * H, f"{p}/attn/q_einsum/w", h) or t(f"{p}/attn/_query_norm/scale")
    kv = matmul(n, D, 2 * K * H, f"{p}/attn/kv_einsum/w", h)
    k = kv or t(f"{p}/attn/_key_norm/scale")
    scores = 2.0 * n * S * N * H                       # q.k, and again probs.v
    fwd += 2 * scores
    act += scores * (q + k)
    probs = q or k
    act += scores * (probs + kv)
    encoded = probs or kv
    a = matmul(n, N * H, D, f"{p}/attn/attn_vec_einsum/w", encoded)
    dep = dep or a or t(f"{p}/post_attention_norm/scale")
    h = dep or t(f"{p}/pre_ffw_norm/scale")
    out = False
    for j, width in enumerate(config.layer_mlp_branches(i)):
      prefix = f"{p}/mlp" if j == 0 else f"{p}/mlp/grown_{j}"
      hidden = matmul(n, D, 2 * width, f"{prefix}/gating_einsum", h)
      out = matmul(n, width, D, f"{prefix}/linear", hidden) or out
    dep = dep or out or t(f"{p}/post_ffw_norm/scale")
  before = fwd + act + wgt
  matmul(U, D, V, EMBEDDING, dep or t("final_norm/scale"))
  unembed = fwd + act + wgt - before

  adapters = 0.0
  if backward:
    for path, rank in lora.items():
      copies, fan_in, fan_out = lora_matrix(config, path)
      merge = 2.0 * copies * fan_in * rank * fan_out
      fwd += merge
      wgt += 2 * merge                                  # dA = dW' B^T, dB = A^T dW'
      adapters += 3 * merge
  return StepFlops(fwd, act, wgt, n, unembed, adapters)


def lora_matrix(config, path: str) -> tuple[int, int, int]:
  """(batch copies, fan in, fan out) of a weight as LoRA views it (grow_jax.methods.lora's axis table)."""
  D, N, K, H = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
  if path.endswith("q_einsum/w"):
    return 1, D, N * H
  if path.endswith("kv_einsum/w"):
    return 2, D, K * H
  if path.endswith("attn_vec_einsum/w"):
    return 1, N * H, D
  layer = int(path.split("/")[0].split("_")[1])
  branch = path.split("/")[2]
  width = config.layer_mlp_branches(layer)[int(branch.split("_")[1]) if branch.startswith("grown_") else 0]
  if path.endswith("gating_einsum"):
    return 2, D, width
  if path.endswith("linear"):
    return 1, width, D
  raise ValueError(f"no LoRA matrix layout known for {path!r}")


def from_labels(config, labels: Mapping[str, bool], shapes: Mapping[str, tuple[int, ...]] | None = None):
  """(trainable model paths, lora {base path: rank}) from a method's flat path -> trainable map (the
  trainer's StepMethod.trainable) and, for LoRA, the flat shapes of its params (to read the ranks)."""
  trainable, lora = set(), {}
  for path, on in labels.items():
    if not on:
      continue
    if path.startswith("lora/"):
      base, leaf = path[len("lora/"):].rsplit("/", 1)
      if leaf == "a":
        lora[base] = int(shapes[path][-1]) if shapes is not None else 0
      continue
    trainable.add(path)
  return trainable, lora


def mode_flops(config, mode: str, *, batch: int, seq_len: int, lora_rank: int = 8, **kwargs) -> StepFlops:
  """`train_step_flops` for a training method's labels (abstract params: no memory used). A regularizer's
  penalty is optimizer (elementwise) work: L2-SP / EWC count as SFT."""
  import jax
  from grow_jax import methods, tree_paths
  from grow_jax.model.config import abstract_params

  params = abstract_params(config)
  method = methods.create(mode, {"lora_rank": lora_rank}, config, params)
  trained = jax.eval_shape(lambda p: method.init_params(p, jax.random.key(0)), params)
  shapes = {p: tuple(x.shape) for p, x in tree_paths.flatten(trained).items()}
  labels = {p: label == "trainable" for p, label in tree_paths.flatten(method.labels).items()}
  trainable, lora = from_labels(config, labels, shapes)
  return train_step_flops(config, trainable, batch=batch, seq_len=seq_len, lora=lora, **kwargs)


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 6) -> float:
  """Measured matmul throughput through XLA, FLOP/s: best of `repeats` timed (n, n) @ (n, n) products."""
  import time

  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best
