r"""Checks on one accelerator (an NVIDIA H200 in mind), as one command that fits in ~8 minutes; writes
<out>/device_check.md (tables), <out>/device_check.json (raw numbers) and prints as it goes.

  experiments/device_check.sh OUT_DIR              # dependencies, the GPU extra if needed, then this
  python experiments/device_check.py --out=OUT_DIR [--modes=sft,g_freeze,g_train,lora] [--real]
  python experiments/device_check.py --out=/tmp/dc --dry-run    # the same code paths, tiny sizes, CPU, < 1 min

1. Growth is function-preserving on the device: grow_mlp(factor 2, all layers) of a Gemma 3 270M-shaped model
   (random weights, or the real 270M with --real), max |logits(grown) - logits(original)| in float32, with
   JAX's default matmul precision (on NVIDIA GPUs f32 matmuls may run as TF32) and inside
   `jax.default_matmul_precision('highest')`; says which one is exactly 0.
2. Device vs CPU: the 270M's logits on the device (default and highest precision) against the same forward
   on the host CPU in this process: max |Δ|, max |Δ| / std(logits), share of positions with the same argmax.
   (The CPU backend must be available: device_check.sh sets JAX_PLATFORMS=cuda,cpu.)
3. Train steps of Gemma 3 1B (random weights of the `gemma3_1b` preset, bf16 compute, f32 params and Adam)
   for each mode, each in its own subprocess (so peak memory is per mode): the batch that fills --fill of the
   device's bytes_limit is computed from XLA's memory analysis of four cheap compiles (1- and 2-layer versions
   of the model at two batches: see choose_batch) and the full model's state size, then the full step is
   compiled once at that batch (smaller if its own memory analysis says it does not fit) and timed (median
   of --steps after a warm-up). Reported: batch, step time, tokens/s, model FLOPs per token
   (experiments/flops.py: matmuls where the mode computes them), MFU against the measured bf16 matmul peak
   (a 16384^2 bf16 matmul, best of 6), peak device memory (`memory_stats()['peak_bytes_in_use']`).
4. The decode loop of generate() on the device (270M shape, batch 8): weight copies per step in the compiled
   loop and tokens/s, weights as stored vs transposed as on CPU (should the platform get an entry in
   generation.DECODE_PERMUTATIONS?).

Order and time: what JAX sees and the bf16 peak first (~20 s), then the first two modes (default: the 1B SFT
and G-Freeze timings, the point of the run), then checks 1-2, the other modes, and the decode loop last. A
part starts only with its budget left before --deadline_s (a mode: --mode_budget_s, checks 1-2 and the decode
loop: --part_budget_s) and is stopped at the deadline; skipped parts are listed as such. Every part runs in a
child process (the parent never initialises the accelerator, so it holds no memory; children get
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 unless it or XLA_CLIENT_MEM_FRACTION is set).

--dry-run (or DEVICE_CHECK_DRY_RUN=1): the tiny preset (1 layer for checks 1-2, 2 layers for 3) on CPU in
place of the 270M and the 1B, small batches and matmuls, a pretend 64 MiB device, f32 and XLA's backend
optimisation off (fast compiles): checks the script's code paths, measures nothing.

Steps device_check.sh takes before JAX starts, in this file so they are tested: --missing_deps (each
setup.cfg install_requires entry that is not installed, too old, or does not import, one per line; the standard
library only), --jax_pins (name==version of the installed JAX distributions, so that installing a missing
dependency leaves a preinstalled JAX + CUDA as it is), --gpu_check (one line: the GPUs JAX sees, or why none;
exit status 1 without one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("sft", "g_freeze", "g_train", "lora")


# ---- before JAX: dependencies, pins, the GPU (device_check.sh runs these first) -------------------------------
def requirements(setup_cfg: str) -> list[str]:
  """The `install_requires` entries of setup.cfg (its comment lines dropped)."""
  import configparser
  parser = configparser.ConfigParser()
  if not parser.read(setup_cfg):
    raise FileNotFoundError(f"no setup.cfg at {setup_cfg}")
  return [line.strip() for line in parser["options"]["install_requires"].splitlines()
          if line.strip() and not line.strip().startswith("#")]


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _parse_requirement(spec: str):
  """(name, specifier or None, whether its environment marker applies here)."""
  try:
    from packaging.requirements import Requirement
  except ImportError:
    try:
      from pip._vendor.packaging.requirements import Requirement
    except ImportError:                                   # no packaging at all: names only
      return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec).group(0), None, True
  requirement = Requirement(spec)
  return requirement.name, requirement.specifier, requirement.marker is None or requirement.marker.evaluate()


def missing_requirements(setup_cfg: str) -> list[tuple[str, str]]:
  """(entry, why) for each install_requires entry that is not installed, has a version its specifier excludes,
  or whose top-level module does not import (the module named like the distribution, e.g. ml_collections,
  absl for absl-py; else any of its modules)."""
  import importlib
  import importlib.metadata as metadata
  modules: dict[str, list[str]] = {}
  for module, dists in metadata.packages_distributions().items():
    for dist in dists:
      modules.setdefault(_normalized(dist), []).append(module)
  missing = []
  for spec in requirements(setup_cfg):
    name, specifier, applies = _parse_requirement(spec)
    if not applies:
      continue
    try:
      version = metadata.version(name)
    except metadata.PackageNotFoundError:
      missing.append((spec, "not installed"))
      continue
    if specifier is not None and not specifier.contains(version, prereleases=True):
      missing.append((spec, f"version {version} is installed"))
      continue
    names = [m for m in modules.get(_normalized(name), []) if m.isidentifier() and not m.startswith("_")]
    named = sorted((m for m in names if _normalized(name).startswith(_normalized(m))), key=len, reverse=True)
    errors = []
    for module in named[:1] or names:
      try:
        importlib.import_module(module)
        break
      except Exception as e:  # noqa: BLE001 -- any failure to import is what this reports
        errors.append(f"import {module}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    else:
      if errors:
        missing.append((spec, errors[0]))
  return missing


def jax_pins() -> list[str]:
  """name==version of the installed jax, jaxlib and jax CUDA plugin distributions."""
  import importlib.metadata as metadata
  pins = set()
  for dist in metadata.distributions():
    name = dist.metadata["Name"] or ""
    if re.fullmatch(r"jax|jaxlib|jax-cuda\d+-(plugin|pjrt)", _normalized(name)):
      pins.add(f"{name}=={dist.version}")
  return sorted(pins)


def gpu_check() -> int:
  """Prints one line: the GPUs JAX sees (0), or why it sees none (1)."""
  try:
    import jax
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
  except Exception as e:  # noqa: BLE001 -- reported as one line
    text = str(e).strip().splitlines()[0] if str(e).strip() else "no NVIDIA GPU is visible"
    print(f"JAX sees no GPU ({type(e).__name__}: {text})")
    return 1
  if not gpus:
    print(f"JAX {jax.__version__} sees no GPU, only {', '.join(sorted({d.platform for d in jax.devices()}))}")
    return 1
  print(f"JAX {jax.__version__} sees {len(gpus)} GPU(s): {gpus[0].device_kind}")
  return 0


def _dry(args) -> bool:
  return bool(args.dry_run or os.environ.get("DEVICE_CHECK_DRY_RUN") == "1")


def _small_config(name: str, dry: bool, **overrides):
  from grow_jax.model.config import get_preset
  if dry:
    return get_preset("tiny", num_layers=1, **overrides)
  return get_preset(name, **overrides)


def _params_270m(args):
  """(config, params, description) of the model for checks 1-2."""
  import jax
  from grow_jax.model.transformer import init_params
  dry = _dry(args)
  if args.real and not dry:
    try:
      from grow_jax.formats import load_checkpoint
      config, params = load_checkpoint("gemma3-270m")
      return config.replace(dtype="float32", param_dtype="float32"), params, "Gemma 3 270M (real weights)"
    except Exception as e:  # noqa: BLE001 -- report and fall back
      print(f"could not load the real 270M ({type(e).__name__}: {e}); using random weights", flush=True)
  config = _small_config("gemma3_270m", dry)
  params = jax.jit(lambda k: init_params(config, k))(jax.random.key(0))
  return config, params, ("tiny, 1 layer (dry run)" if dry else "Gemma 3 270M shape, random weights")


def _tokens(config, batch: int, length: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, config.vocab_size, (batch, length)).astype(np.int32)
  tokens[:, 0] = config.bos_token_id
  return tokens


# ---- 1 and 2: growth and parity ------------------------------------------------------------------------
def check_growth_and_parity(args) -> dict:
  import jax
  import numpy as np
  from grow_jax.growth import operators as growth
  from grow_jax.model.transformer import forward

  config, params, what = _params_270m(args)
  tokens = _tokens(config, 2, 16 if _dry(args) else 64)
  device = jax.devices()[0]
  cpu = jax.devices("cpu")[0]
  grown_config = growth.grow_config(config, factor=2, layers="all")
  grown = jax.jit(lambda p: growth.grow_mlp(config, p, factor=2, layers="all")[1])(params)
  logits = lambda c: jax.jit(lambda p, t: forward(c, p, t))

  out = {"model": what, "device": str(device), "growth": {}, "parity": {}}
  on_device = {}
  for precision in ("default", "highest"):
    ctx = jax.default_matmul_precision("highest") if precision == "highest" else _null()
    with ctx:
      before = np.asarray(logits(config)(params, tokens))
      after = np.asarray(logits(grown_config)(grown, tokens))
    on_device[precision] = before
    out["growth"][precision] = float(np.abs(after - before).max())
    print(f"growth x2, {precision} precision: max |Δlogits| = {out['growth'][precision]:.3g}", flush=True)
  host_params = jax.device_put(params, cpu)
  with jax.default_device(cpu):
    reference = np.asarray(logits(config)(host_params, jax.device_put(tokens, cpu)))
  std = float(reference.std())
  for precision, value in on_device.items():
    diff = np.abs(value - reference)
    out["parity"][precision] = {"max_abs": float(diff.max()), "max_rel_std": float(diff.max() / std),
                                "argmax_agree": float((value.argmax(-1) == reference.argmax(-1)).mean())}
    print(f"{device.platform} vs cpu logits, {precision} precision: {out['parity'][precision]}", flush=True)
  return out


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


# ---- 3: train steps (one subprocess per mode) ----------------------------------------------------------
def train_config(mode: str, args, batch: int, layers: int | None = None):
  from grow_jax.train import config as config_utils
  c = config_utils.base_config()
  c.init.source = "random:tiny" if _dry(args) else "random:gemma3_1b"
  if _dry(args):
    c.model.num_layers = 2
  if layers is not None:
    c.model.num_layers = layers
  c.model.dtype = args.dtype
  c.model.param_dtype = args.param_dtype
  c.batch_size = batch
  c.total_steps = 1000
  c.data.seq_len = args.seq_len
  c.train.mode = mode
  c.growth.factor = 2 if mode in ("g_freeze", "g_train") else 1
  c.optimizer.update(dict(learning_rate=1e-5, warmup_steps=0, schedule="constant"))
  c.mesh.data = -1
  return c


def _batch(mc, batch: int, seq_len: int, mesh):
  import numpy as np
  from grow_jax.train import sharding
  tokens = _tokens(mc, batch, seq_len, seed=1)
  local = {"tokens": tokens, "loss_mask": np.ones(tokens.shape, np.float32),
           "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1)),
           "segment_ids": np.ones(tokens.shape, np.int32), "input_mask": np.ones(tokens.shape, bool)}
  return sharding.global_batch(local, mesh, 1)


def _abstract_batch(batch: int, seq_len: int, mesh):
  import jax
  import jax.numpy as jnp
  from grow_jax.train import sharding
  sh = sharding.batch_sharding(mesh, 3)
  spec = {"tokens": jnp.int32, "loss_mask": jnp.float32, "positions": jnp.int32, "segment_ids": jnp.int32,
          "input_mask": jnp.bool_}
  return {k: jax.ShapeDtypeStruct((1, batch, seq_len), d, sharding=sh) for k, d in spec.items()}


def _memory_need(compiled) -> tuple[int, int]:
  """(fixed bytes: arguments + outputs - aliased, temp bytes) of a compiled program."""
  m = compiled.memory_analysis()
  fixed = m.argument_size_in_bytes + m.output_size_in_bytes - getattr(m, "alias_size_in_bytes", 0)
  return int(fixed), int(m.temp_size_in_bytes)


def _device_bytes(args) -> int:
  import jax
  if _dry(args):
    return 64 << 20                                     # a pretend device: batches of ~100 rows
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats.get("bytes_limit", 0))


def _compile_abstract(config, args, mesh):
  """(model config, setup, compiled step) of a train config, from shapes only (nothing allocated)."""
  from grow_jax.model.config import abstract_params
  from grow_jax.train import setup as setup_lib
  mc = setup_lib.grown_model_config(config, setup_lib.base_model_config(config))
  setup, _ = setup_lib.build(config, mc, abstract_params(mc), mesh, abstract=True)
  fn = setup_lib.jit_train_step(config, setup, mesh, target_capacity=0)
  compiled = fn.lower(setup.abstract_state, _abstract_batch(config.batch_size, args.seq_len, mesh)).compile()
  return mc, setup, compiled


def choose_batch(mode: str, args, mesh, layers: int, limit: int) -> tuple[int, dict]:
  """The largest batch (a multiple of --batch_multiple) whose step fits in --fill of the device, predicted
  from four cheap compiles of 1- and 2-layer versions of the model at batches B0 and 2 B0:
  temp(L, B) = c0 + c1 L + B (d0 + d1 L) (weight-sized temporaries per layer, activations per row and
  layer, the logits per row), plus the state (params, optimizer) of the full model."""
  import jax
  b0 = args.probe_batch
  temp = {}
  t = time.perf_counter()
  for n_layers in (1, 2):
    for batch in (b0, 2 * b0):
      config = train_config(mode, args, batch, layers=n_layers)
      temp[n_layers, batch] = _memory_need(_compile_abstract(config, args, mesh)[2])[1]
  per_row = {n: (temp[n, 2 * b0] - temp[n, b0]) / b0 for n in (1, 2)}
  base = {n: temp[n, b0] - b0 * per_row[n] for n in (1, 2)}
  row = per_row[1] + (per_row[2] - per_row[1]) * (layers - 1)
  const = base[1] + (base[2] - base[1]) * (layers - 1)
  config = train_config(mode, args, b0)
  from grow_jax.model.config import abstract_params
  from grow_jax.train import setup as setup_lib
  mc = setup_lib.grown_model_config(config, setup_lib.base_model_config(config))
  setup, _ = setup_lib.build(config, mc, abstract_params(mc), mesh, abstract=True)
  state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state))
  multiple = args.batch_multiple
  batch = int((args.fill * limit - state - const) / max(row, 1.0)) // multiple * multiple
  info = {"state_bytes": state, "temp_const_bytes": const, "temp_per_row_bytes": row, "probe_s": time.perf_counter() - t}
  print(f"[{mode}] state {state / 2**30:.2f} GiB, temp {const / 2**30:.2f} GiB + {row / 2**20:.1f} MiB/row "
        f"(4 probe compiles, {info['probe_s']:.0f} s) of {limit / 2**30:.1f} GiB -> batch {max(batch, multiple)}",
        flush=True)
  return max(batch, multiple), info


def run_mode(mode: str, args) -> dict:
  """One mode: choose the batch, compile, run, time. Runs in its own process (see run_part)."""
  import jax
  import flops as flops_lib
  from grow_jax import tree_paths
  from grow_jax.train import setup as setup_lib
  from grow_jax.train import sharding, step as step_lib

  t0 = time.perf_counter()
  mesh = sharding.make_mesh(train_config(mode, args, 1).mesh)
  full_layers = setup_lib.base_model_config(train_config(mode, args, 1)).num_layers
  limit = _device_bytes(args)
  probe = {}
  if args.batch:
    batch = args.batch
  else:
    batch, probe = choose_batch(mode, args, mesh, full_layers, limit)
  for attempt in range(3):
    config = train_config(mode, args, batch)
    t = time.perf_counter()
    mc, setup, compiled = _compile_abstract(config, args, mesh)
    compile_s = time.perf_counter() - t
    fixed, temp = _memory_need(compiled)
    if args.batch or fixed + temp <= 0.98 * limit or batch <= args.batch_multiple:
      break
    print(f"[{mode}] batch {batch} needs {(fixed + temp) / 2**30:.1f} GiB: smaller", flush=True)
    batch = max(args.batch_multiple, int(batch * 0.8) // args.batch_multiple * args.batch_multiple)

  mc, params = setup_lib.init_params(config, mesh)
  setup, state = setup_lib.build(config, mc, params, mesh)
  del params
  data = _batch(mc, batch, args.seq_len, mesh)
  times = []
  for _ in range(args.steps + 1):
    t = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
  shapes = {p: tuple(x.shape) for p, x in tree_paths.flatten(state["params"]).items()}
  trainable, lora = flops_lib.from_labels(mc, step_lib.trainable_map(setup.method.labels), shapes)
  f = flops_lib.train_step_flops(mc, trainable, batch=batch, seq_len=args.seq_len, lora=lora)
  stats = jax.devices()[0].memory_stats() or {}
  return {"mode": mode, "batch": batch, "seq_len": args.seq_len, "compile_s": compile_s, "step_s": step_s,
          "tokens_per_s": batch * args.seq_len / step_s, "flops_per_token": f.per_token,
          "flops_parts_per_token": {k: v / f.tokens for k, v in f.as_dict().items() if k in ("forward", "act_grad", "weight_grad")},
          "achieved_flops": f.total / step_s, "predicted_bytes": fixed + temp, "probe": probe,
          "peak_bytes": stats.get("peak_bytes_in_use"), "bytes_limit": stats.get("bytes_limit"),
          "loss": float(jax.device_get(metrics["loss"])), "wall_s": time.perf_counter() - t0}


def check_decode(args) -> dict:
  """The decode loop of `generate` on this platform, for the 270M shape at batch 8: weight copies per step
  in the compiled loop and greedy tokens/s, with the weights as stored and with the attention weights
  transposed as on CPU (generation.DECODE_PERMUTATIONS['cpu']); tells whether this platform should get an
  entry in DECODE_PERMUTATIONS."""
  import jax
  import numpy as np
  import decode_hlo
  from grow_jax.model import generation
  from grow_jax.model.transformer import init_params
  config = _small_config("gemma3_270m", _dry(args))
  platform = jax.devices()[0].platform
  cpu = generation.DECODE_PERMUTATIONS["cpu"]
  params = jax.jit(lambda k: init_params(config, k))(jax.random.key(0))
  prompts = [list(map(int, row)) for row in _tokens(config, 8, 32)]
  new_tokens = 8 if _dry(args) else 64
  saved = dict(generation.DECODE_PERMUTATIONS)
  out = {"platform": platform, "batch": 8, "prompt": 32, "new_tokens": new_tokens,
         "model": "tiny, 1 layer (dry run)" if _dry(args) else "270M shape, random weights"}
  tokens = {}
  try:
    for name, table in (("as stored", {}), ("cpu permutations", {platform: cpu})):
      generation.DECODE_PERMUTATIONS.clear()
      generation.DECODE_PERMUTATIONS.update({**{k: v for k, v in saved.items() if k != platform}, **table})
      perms = generation.decode_permutations(params)
      hlo, shapes = decode_hlo.compile_decode(config, 8, 32, 8, perms)
      copies, others = decode_hlo.weight_copies(hlo, shapes)
      run = lambda: generation.generate(config, params, prompts, max_new_tokens=new_tokens, eos_id=-1).tokens
      tokens[name] = run()
      best = min(_timed(run) for _ in range(3))
      out[name] = {"weight_copies": len(copies), "other_copies": len(others), "tokens_per_s": 8 * new_tokens / best}
      print(f"decode, {name}: {out[name]}", flush=True)
  finally:
    generation.DECODE_PERMUTATIONS.clear()
    generation.DECODE_PERMUTATIONS.update(saved)
  out["same_tokens"] = bool(np.array_equal(tokens["as stored"], tokens["cpu permutations"]))
  return out


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def run_peak(args) -> dict:
  """What JAX sees, and the bf16 matmul peak (the MFU denominator) unless the train steps are skipped."""
  import jax
  import flops as flops_lib
  out = {"env": {"jax": jax.__version__, "python": sys.version.split()[0], "platform": jax.default_backend(),
                 "devices": ", ".join(f"{d.platform}:{d.device_kind}" for d in jax.devices())}}
  print(out["env"], flush=True)
  if "train" not in args.skip.split(",") and (_dry(args) or out["env"]["platform"] != "cpu"):
    out["bf16_peak_flops"] = flops_lib.matmul_peak("bfloat16", n=256 if _dry(args) else 16384,
                                                   repeats=2 if _dry(args) else 6)
    print(f"bf16 matmul peak {out['bf16_peak_flops'] / 1e12:.2f} TFLOP/s", flush=True)
  return out


def _run(part: str, args) -> dict:
  if part == "peak":
    return run_peak(args)
  if part == "checks":
    return check_growth_and_parity(args)
  if part == "decode":
    return check_decode(args)
  return run_mode(part.split(":", 1)[1], args)


def _child_argv(args, part: str, result_path: str) -> list[str]:
  argv = [sys.executable, os.path.abspath(__file__), "--_part", part, "--_result", result_path,
          "--seq_len", str(args.seq_len), "--probe_batch", str(args.probe_batch), "--fill", str(args.fill),
          "--batch_multiple", str(args.batch_multiple), "--steps", str(args.steps), "--dtype", args.dtype,
          "--param_dtype", args.param_dtype, "--batch", str(args.batch), "--skip", args.skip or ","]
  return argv + (["--dry-run"] if _dry(args) else []) + (["--real"] if args.real else [])


def run_part(args, part: str, deadline: float) -> dict:
  """`part` ('peak', 'checks', 'decode' or 'mode:<name>') in a child process, so the parent never holds
  accelerator memory and each mode's peak memory is its own; in this process with --in_process. It starts only
  with its budget left before the deadline (none for 'peak') and is stopped at the deadline."""
  name = part.split(":")[-1]
  remaining = deadline - time.monotonic()
  failed = {"mode": name} if part.startswith("mode:") else {}
  budget = 0.0 if part == "peak" else args.mode_budget_s if part.startswith("mode:") else args.part_budget_s
  if remaining < budget:
    print(f"[{name}] skipped: {remaining:.0f} s left before the deadline, {budget:.0f} s needed", flush=True)
    return {**failed, "skipped": f"{remaining:.0f} s left before --deadline_s"}
  if args.in_process:
    try:
      return _run(part, args)
    except Exception as e:  # noqa: BLE001 -- keep going, report
      traceback.print_exc()
      return {**failed, "error": f"{type(e).__name__}: {e}"[:300]}
  path = os.path.join(args.out, f"part_{name}.json")
  env = dict(os.environ)
  if not env.get("XLA_CLIENT_MEM_FRACTION"):                       # jaxlib refuses both names at once
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")      # the child may use the whole device
  try:
    proc = subprocess.run(_child_argv(args, part, path), timeout=max(30.0, remaining), cwd=ROOT, env=env)
  except subprocess.TimeoutExpired:
    return {**failed, "error": "timed out at the deadline"}
  if proc.returncode != 0 or not os.path.exists(path):
    return {**failed, "error": f"exit status {proc.returncode}"}
  with open(path) as f:
    return json.load(f)


# ---- report --------------------------------------------------------------------------------------------
def _gib(x):
  return "-" if x is None else f"{x / 2**30:.1f}"


def report(args, env: dict, checks: dict | None, peak: float | None, modes: list[dict]) -> str:
  lines = [f"# Device check{' (DRY RUN: tiny model on CPU, numbers mean nothing)' if _dry(args) else ''}", "",
           f"{env['devices']}; jax {env['jax']}; {env['python']}", ""]
  if checks and "growth" in checks:
    g, par = checks["growth"], checks["parity"]
    exact = [p for p, v in g.items() if v == 0.0]
    lines += [f"## Growth (grow_mlp x2, all layers) on {checks['device']}: {checks['model']}", "",
              "| matmul precision | max abs(logits grown - original) |", "|---|---|"]
    lines += [f"| {p} | {v:.3g} |" for p, v in g.items()]
    lines += ["", f"Exactly function-preserving with: {', '.join(exact) if exact else 'neither'}.", "",
              f"## Logits on {checks['device']} vs CPU (same script, same weights)", "",
              "| matmul precision | max abs Δ | max abs Δ / std | same argmax |", "|---|---|---|---|"]
    lines += [f"| {p} | {v['max_abs']:.3g} | {v['max_rel_std']:.3g} | {100 * v['argmax_agree']:.2f}% |"
              for p, v in par.items()]
    lines.append("")
  elif checks and ("checks_error" in checks or "checks_skipped" in checks):
    lines += [f"## Growth and CPU parity: {checks.get('checks_error') or 'skipped, ' + checks['checks_skipped']}", ""]
  if checks and "tokens_per_s" in str(checks.get("decode")):
    d = checks["decode"]
    lines += [f"## Decode loop on {d['platform']} ({d['model']}, batch {d['batch']}, {d['prompt']}-token prompts, "
              f"{d['new_tokens']} new tokens)", "",
              "| attention weights | weight copies per step | other copies | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {name} | {d[name]['weight_copies']} | {d[name]['other_copies']} | {d[name]['tokens_per_s']:,.1f} |"
              for name in ("as stored", "cpu permutations")]
    lines += ["", f"Same tokens: {d['same_tokens']}. If 'cpu permutations' has fewer copies and more tokens/s, add "
              f"'{d['platform']}' to grow_jax.model.generation.DECODE_PERMUTATIONS.", ""]
  if modes:
    lines += [f"## Train step: {'tiny (2 layers)' if _dry(args) else 'Gemma 3 1B (random weights)'}, "
              f"compute {args.dtype}, params {args.param_dtype}, seq_len {args.seq_len}", "",
              f"bf16 matmul peak (measured): {peak / 1e12:.1f} TFLOP/s" if peak else "bf16 peak: not measured", "",
              "| mode | batch | compile s | step s | tokens/s | GFLOP/token (fwd/act/wgt) | TFLOP/s | MFU % | "
              "peak GiB | predicted GiB | loss |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in modes:
      if "skipped" in r or "error" in r:
        lines.append(f"| {r['mode']} | {r.get('skipped') or r.get('error')} |" + " |" * 9)
        continue
      parts = "/".join(f"{r['flops_parts_per_token'][k] / 1e9:.2f}" for k in ("forward", "act_grad", "weight_grad"))
      mfu = f"{100 * r['achieved_flops'] / peak:.1f}" if peak else "-"
      lines.append(f"| {r['mode']} | {r['batch']} | {r['compile_s']:.0f} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                   f"{parts} | {r['achieved_flops'] / 1e12:.1f} | {mfu} | {_gib(r['peak_bytes'])} | "
                   f"{_gib(r['predicted_bytes'])} | {r['loss']:.3f} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None, help="directory for device_check.md / .json")
  p.add_argument("--dry-run", dest="dry_run", action="store_true")
  p.add_argument("--real", action="store_true", help="checks 1-2 on the real Gemma 3 270M (needs its package)")
  p.add_argument("--modes", default=None, help=f"default {','.join(MODES)} (dry run: sft,lora, which cover "
                                                "this script's code paths; the trainer's modes are tested elsewhere)")
  p.add_argument("--skip", default="", help="comma list of parts to skip: checks,decode,train")
  p.add_argument("--seq_len", type=int, default=None, help="default 512 (dry run: 16)")
  p.add_argument("--batch", type=int, default=0, help="fixed batch (0: fill the device)")
  p.add_argument("--probe_batch", type=int, default=None, help="batch of the memory probe (default 8)")
  p.add_argument("--batch_multiple", type=int, default=None, help="default 8 (dry run: 2)")
  p.add_argument("--fill", type=float, default=0.85, help="share of bytes_limit the chosen batch may use")
  p.add_argument("--steps", type=int, default=None, help="timed steps after a warm-up (default 5; dry: 1)")
  p.add_argument("--dtype", default=None, help="compute dtype (default bfloat16; dry run: float32, which XLA:CPU "
                                               "compiles twice as fast)")
  p.add_argument("--param_dtype", default="float32")
  p.add_argument("--deadline_s", type=float, default=None,
                 help="seconds from the start after which nothing runs: parts that would not fit are skipped, a "
                      "running one is stopped (default 420, dry: 300; device_check.sh sets it)")
  p.add_argument("--mode_budget_s", type=float, default=None, help="a mode starts only with this much left "
                                                                    "(default 120; dry: 5)")
  p.add_argument("--part_budget_s", type=float, default=None, help="checks 1-2 and the decode loop start only with "
                                                                    "this much left (default 45; dry: 5)")
  p.add_argument("--missing_deps", action="store_true", help="print the setup.cfg dependencies that do not import "
                                                             "(one per line; why on stderr) and exit")
  p.add_argument("--jax_pins", action="store_true", help="print name==version of the installed JAX distributions")
  p.add_argument("--gpu_check", action="store_true", help="one line: the GPUs JAX sees; exit status 1 without one")
  p.add_argument("--setup_cfg", default=os.path.join(ROOT, "setup.cfg"), help="for --missing_deps")
  p.add_argument("--in_process", action="store_true",
                 help="every part in this process (debugging; peak memory is then cumulative)")
  p.add_argument("--_part", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_result", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.missing_deps:                                   # before anything imports a dependency
    for spec, why in missing_requirements(args.setup_cfg):
      print(spec)
      print(f"{spec}: {why}", file=sys.stderr)
    return None
  if args.jax_pins:
    print("\n".join(jax_pins()))
    return None
  if args.gpu_check:
    sys.exit(gpu_check())
  dry = _dry(args)
  if dry:                                                 # before JAX starts: fast CPU compiles
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  defaults = dict(modes=("sft,lora", ",".join(MODES)), dtype=("float32", "bfloat16"), seq_len=(16, 512),
                  probe_batch=(8, 8), batch_multiple=(2, 8), steps=(1, 5), deadline_s=(300, 420), mode_budget_s=(5, 120),
                  part_budget_s=(5, 45))
  for name, (small, big) in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, small if dry else big)

  if args._part:                                           # a child: one part, result to a JSON file
    result = _run(args._part, args)
    with open(args._result, "w") as f:
      json.dump(result, f)
    return result

  if not args.out:
    p.error("--out is required")
  os.makedirs(args.out, exist_ok=True)
  start = time.monotonic()
  deadline = start + args.deadline_s
  skip = set(filter(None, args.skip.split(",")))
  checks = run_part(args, "peak", deadline)
  peak = checks.get("bf16_peak_flops")
  env = checks.get("env", {"jax": "?", "python": "?", "devices": "? (" + checks.get("error", "") + ")"})
  modes = []
  if not dry and env.get("platform") == "cpu":            # not the accelerator: minutes of CPU compiles, no figure
    print("JAX runs on the CPU here: only --dry-run runs on the CPU (device_check.sh checks for a GPU first)",
          flush=True)
    skip |= {"checks", "train", "decode"}
  order = args.modes.split(",") if "train" not in skip else []
  for part in ([f"mode:{m}" for m in order[:2]] + ["checks"] * ("checks" not in skip) +   # the 1B timings first
               [f"mode:{m}" for m in order[2:]] + ["decode"] * ("decode" not in skip)):  # decode: last, optional
    result = run_part(args, part, deadline)
    if part.startswith("mode:"):
      modes.append(result)
    elif part == "decode":
      checks["decode"] = result
    else:                                                 # checks 1-2: their error or skip under its own key
      checks.update({f"checks_{k}" if k in ("error", "skipped") else k: v for k, v in result.items()})
  text = report(args, env, checks, peak, modes)
  print("\n" + text)
  with open(os.path.join(args.out, "device_check.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(args.out, "device_check.json"), "w") as f:
    json.dump({"env": env, "dry_run": dry, "checks": checks, "bf16_peak_flops": peak, "modes": modes,
               "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
               "wall_s": time.monotonic() - start}, f, indent=2)
  return {"checks": checks, "peak": peak, "modes": modes}


if __name__ == "__main__":
  main()
