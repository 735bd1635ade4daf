r"""Weight copies in the compiled decode loop of `grow_jax.model.generation._decode`, for a model preset.

  python experiments/decode_hlo.py --preset=gemma3_270m --batch=8            # as generate() compiles it
  python experiments/decode_hlo.py --preset=gemma3_270m --batch=8 --baseline # weights as stored (no transposes)

XLA assigns layouts after hoisting loop invariants, so a weight that a matmul of the loop body wants in a
different layout is copied on every decode step. This compiles the prefill + decode program (abstract
weights: nothing is allocated) and lists, in the while-loop body, every copy / transpose / loop fusion that
reads a weight and writes an array of the weight's size, plus the other copies in the body (KV cache).
`--baseline` compiles with no pre-transposed weights (the layout `generate` used before the decode-weight
conversion). Also importable: `loop_body(hlo)`, `weight_copies(hlo, stored_shapes)`.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

_DEF = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[([\d,]*)\](?:\{[\d,]*\})?\S* ([\w\-]+)\((.*)$")


def loop_body(hlo: str) -> str:
  """The while-loop body of an optimized HLO module: the computation with the widest loop state."""
  computations = re.split(r"\n(?=\S.*\{\n)", hlo)
  return max(computations, key=lambda c: c.count("get-tuple-element"))


def _definitions(body: str):
  defs = {}
  for line in body.splitlines():
    m = _DEF.match(line)
    if m:
      name, dtype, dims, op, rest = m.groups()
      shape = tuple(int(d) for d in dims.split(",")) if dims else ()
      args = rest.split("), ", 1)[0] if op != "get-tuple-element" else rest
      defs[name] = (dtype, shape, op, re.findall(r"%[\w.\-]+", args), line)
  return defs


def weight_copies(hlo: str, stored_shapes) -> tuple[list[str], list[str]]:
  """(weight copies, other copies) in the loop body, as HLO lines (metadata cut).

  A weight value is a get-tuple-element of the loop state with the shape of a stored weight (or a bitcast
  of one); a weight copy is a copy / transpose / non-matmul fusion with a weight operand whose output has
  as many elements as that operand. Other copies: every other `copy` instruction in the body."""
  stored_shapes = {tuple(s) for s in stored_shapes}
  defs = _definitions(loop_body(hlo))
  weights = {n for n, (_, shape, op, _, _) in defs.items() if op == "get-tuple-element" and shape in stored_shapes}
  for n, (_, _, op, operands, _) in defs.items():
    if op == "bitcast" and operands and operands[0] in weights:
      weights.add(n)
  cut = lambda line: re.sub(r", metadata=\{.*", "", line.strip())
  copies, others = [], []
  for n, (_, shape, op, operands, line) in defs.items():
    sources = [o for o in operands if o in weights]
    # Any non-matmul fusion (XLA:GPU emits transposes as kInput fusions); matmul fusions are kCustom.
    is_copy_like = op in ("copy", "transpose") or (op == "fusion" and "kind=kCustom" not in line)
    if is_copy_like and any(math.prod(defs[o][1]) == math.prod(shape) for o in sources):
      copies.append(cut(line))
    elif op == "copy":
      others.append(cut(line))
  return copies, others


def compile_decode(config, batch: int, prompt_len: int, new_tokens: int, permutations):
  from grow_jax.model import generation
  from grow_jax.model.config import abstract_params
  params = abstract_params(config)
  args = (np.zeros((batch, prompt_len), np.int32), np.ones((batch, prompt_len), bool), jax.random.key(0),
          np.float32(1e-6), np.zeros((4,), np.int32), np.int32(0), np.int32(0), np.zeros((batch,), bool))
  hlo = generation._decode.lower(params, *args, config=config, max_new_tokens=new_tokens, top_k_bucket=None,
                                 greedy=True, permutations=permutations).compile().as_text()
  stored = jax.eval_shape(lambda p: generation.decode_weights(config, p, permutations), params)
  shapes = [x.shape for x in jax.tree.leaves(stored) if x.ndim >= 2]
  return hlo, shapes


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="gemma3_270m")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=8)
  p.add_argument("--baseline", action="store_true", help="no pre-transposed weights (the old layout)")
  p.add_argument("--show", type=int, default=6, help="print this many weight copies")
  args = p.parse_args(argv)
  from grow_jax.model import generation
  from grow_jax.model.config import get_preset
  config = get_preset(args.preset)
  perms = () if args.baseline else generation.decode_permutations()
  hlo, shapes = compile_decode(config, args.batch, args.prompt_len, args.new_tokens, perms)
  copies, others = weight_copies(hlo, shapes)
  kinds = collections.Counter(re.match(r"%\S+ = (\w+\[[\d,]*\])", c).group(1) for c in copies)
  print(f"{args.preset} batch {args.batch}, {jax.default_backend()}, permutations {dict(perms) or 'none'}")
  elements = sum(math.prod(int(d) for d in k.split("[")[1].rstrip("]").split(",")) for k in kinds.elements())
  print(f"weight copies per decode step: {len(copies)} ({elements * 4 / 2**20:.1f} MiB at 4 bytes)")
  for kind, n in kinds.most_common():
    print(f"  {n:3d} x {kind}")
  for c in copies[:args.show]:
    print("   ", c[:160])
  other = collections.Counter(re.match(r"%\S+ = (\w+\[[\d,]*\])", c).group(1) for c in others)
  print(f"other copies in the loop body: {len(others)}")
  for kind, n in other.most_common():
    print(f"  {n:3d} x {kind}")
  return copies, others


if __name__ == "__main__":
  main()
