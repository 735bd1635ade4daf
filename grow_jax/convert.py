r"""Convert a checkpoint to a Hugging Face directory, a llama.cpp GGUF file, a grow_jax params file or a task's delta
file, optionally growing its MLPs first.

  python -m grow_jax.convert --src=gemma3-270m --dst=hf:/tmp/gemma3-270m-hf
  python -m grow_jax.convert --src=hf:/path/in --dst=hf:/path/out --grow_factor=2 --grow_layers=0,3,5
  python -m grow_jax.convert --src=/path/to/workdir --dst=gguf:/tmp/grown.gguf --dtype=q8_0
  python -m grow_jax.convert --src=gemma3-270m --deltas=fr.delta,facts.delta --active_tasks=fr --dst=gguf:fr.gguf
  python -m grow_jax.convert --src=/path/to/workdir --dst=params:/tmp/fr.safetensors    # next task's init source
  python -m grow_jax.convert --src=/path/to/workdir --dst=delta:/tmp/facts.delta --dtype=bf16   # the newest task
  python -m grow_jax.convert --src=gemma3-270m --deltas=fr.delta,facts.delta --list_tasks

--src takes what `grow_jax.evaluate --checkpoint` takes: a `formats.load_checkpoint` source, a trainer workdir
(its newest readable checkpoint as the forward sees it: LoRA merged) or a grow_jax params file; --deltas are
delta files of task branches applied to it in growth order, and --active_tasks chooses the task branches left
on ('A,B', 'none' = the base model, 'A=1,B=0.5'; default every task as trained; docs/method.md, "Task branches
and deltas"). --dst is 'hf:<dir>', 'gguf:<file>', 'params:<file>' (grow_jax's own params file: grown branches
and task names kept, so it is the init source of a run that grows the next task) or 'delta:<file>' (only
--task's branches, default the newest task, with the hash of the model it was grown on; checked against --base,
or for a workdir against its run's init source; --dtype f32 or bf16). For hf and gguf a grown model is exported as a standard Gemma 3 whose MLPs
are wider (the branches merged, layers zero-padded to one width: the same function), so any Gemma 3 runtime
can load it. --dtype: f32, f16, bf16 (both destinations) or q8_0 (GGUF only); default: the params' dtype for
HF, f32 for GGUF. The path is load (deltas, active tasks) -> grow -> export (`convert`).

The tokenizer comes from --tokenizer_src (default: --src; for a workdir, the run's data.tokenizer or init
source). HF: saved alongside (--notokenizer to skip; a source without tokenizer files converts the weights
and says so). GGUF: llama.cpp needs the vocabulary in the file, copied from a GGUF source (the packaged
'gemma3-270m' or 'gguf:<file>'). An existing destination is replaced only with --overwrite; files are
written under a temporary name and renamed, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from grow_jax import errors, files, formats
from grow_jax.growth import operators as growth
from grow_jax.model.config import count_params, parse_layers
from grow_jax.errors import CheckpointError, ConfigError, GrowJaxError

_SRC = flags.DEFINE_string("src", None, "Checkpoint source: 'hf:<dir>', 'gguf:<file>', 'gemma3-270m', "
                           "'random:<preset>', a trainer workdir or a grow_jax params file (*.safetensors).")
_DELTAS = flags.DEFINE_list("deltas", [], "Delta files (grow_jax.formats.delta) applied to --src, in growth order.")
_ACTIVE_TASKS = flags.DEFINE_string("active_tasks", None, "Task branches left on: 'A,B', 'none' (the base model) "
                                    "or 'A=1,B=0.5' (scales); default every task as trained.")
_DST = flags.DEFINE_string("dst", None, "Destination: 'hf:<dir>', 'gguf:<file>', 'params:<file>' (a grow_jax params "
                           "file: branches and task names kept) or 'delta:<file>' (one task's branches, --task).")
_TASK = flags.DEFINE_string("task", None, "--dst=delta:...: the task whose branches are saved (default: the newest).")
_BASE = flags.DEFINE_string("base", None, "--dst=delta:...: the model the task was grown on, checked before saving "
                            "(default for a workdir: its run's init source).")
_LIST_TASKS = flags.DEFINE_bool("list_tasks", False, "Print --src's task branches (after --deltas) and exit.")
_DTYPE = flags.DEFINE_string("dtype", None, "Weights' type: f32, f16, bf16, or q8_0 (GGUF only); default: the "
                             "params' dtype (HF), f32 (GGUF).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing destination (a non-empty directory, a file).")
_TOKENIZER = flags.DEFINE_bool("tokenizer", True, "Save the source's tokenizer alongside the weights (HF).")
_TOKENIZER_SRC = flags.DEFINE_string("tokenizer_src", None, "Where the tokenizer comes from (default: --src; for "
                                     "a workdir, its run's tokenizer or init source).")
_GROW_FACTOR = flags.DEFINE_integer("grow_factor", 1, "MLP growth factor k (1 = no growth; the paper uses 2).")
_GROW_LAYERS = flags.DEFINE_string("grow_layers", "all", "Layers to grow: 'all' or comma-separated indices.")
_CACHE = flags.DEFINE_string("cache_dir", None, "Cache directory (default $GROW_JAX_CACHE or ~/.cache/grow_jax).")

DESTINATIONS = ("hf", "gguf", "params", "delta")
_HF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def parse_destination(dst: str, dtype: str | None) -> tuple[str, str, str | None]:
  """(kind, path, dtype) of --dst / --dtype, checked before any work."""
  from grow_jax.formats.gguf_export import DTYPES
  kind, sep, path = (dst or "").partition(":")
  if not sep or kind not in DESTINATIONS or not path:
    raise CheckpointError(f"--dst={dst!r}: expected 'hf:<dir>', 'gguf:<file>', 'params:<file>' or 'delta:<file>'")
  if dtype:
    dtype = dtype.lower()
    allowed = {"gguf": sorted(DTYPES), "delta": ["bf16", "f32"]}.get(kind, sorted(_HF_DTYPES))
    if dtype not in allowed:
      raise ConfigError(f"--dtype={dtype!r}: expected one of {allowed} for a {kind} destination")
  return kind, path, dtype


def load_model(src: str, *, deltas=(), active_tasks: str | None = None, cache: str | None = None):
  """(config, params) of --src with --deltas applied in order and only --active_tasks on (train/trained.py
  `load_model`, as grow_jax.evaluate loads its --checkpoint)."""
  from grow_jax.train.trained import load_model as load
  return load(src, deltas=deltas, active_tasks=active_tasks, cache=cache)


def tokenizer_source(src: str, tokenizer_src: str | None) -> str | None:
  """--tokenizer_src, else --src, else (a workdir) the run's data.tokenizer or init source; None if none."""
  from grow_jax.train.trained import is_params_file, run_config
  if tokenizer_src:
    return tokenizer_src
  if is_params_file(src):
    return None
  from grow_jax.train.trained import is_workdir
  if not is_workdir(src):
    return src
  run = run_config(src)
  return run.get("data", {}).get("tokenizer") or run.get("init", {}).get("source") or None


def gguf_vocab(source: str | None, *, cache: str | None = None):
  """The vocabulary a GGUF export copies: every tokenizer key of the GGUF file `source` names."""
  from grow_jax.formats import gguf_export
  if not source:
    raise ConfigError("--dst=gguf:...: the source names no tokenizer and llama.cpp needs the vocabulary in the "
                      "file; pass --tokenizer_src=gemma3-270m (or gguf:<file>)")
  parsed = formats.parse_source(source, cache=cache)
  if parsed.kind != "gguf":
    raise ConfigError(f"--tokenizer_src={source!r} is a {parsed.kind} source; a GGUF export copies the vocabulary "
                      "from a GGUF source: pass --tokenizer_src=gemma3-270m (or gguf:<file>)")
  return gguf_export.vocab_from_gguf(parsed.path)


def convert(src: str, dst: str, *, overwrite: bool = False, tokenizer: bool = True, grow_factor: int = 1,
            grow_layers: str | None = "all", cache: str | None = None, dtype: str | None = None,
            tokenizer_src: str | None = None, deltas=(), active_tasks: str | None = None, task: str | None = None,
            base: str | None = None):
  """The command's work as a function: load `src` (with `deltas` applied and only `active_tasks` on), optionally
  grow, write `dst` ('hf:<dir>', 'gguf:<file>', 'params:<file>' or 'delta:<file>': `task`'s branches, checked
  against `base`)."""
  kind, out, dtype = parse_destination(dst, dtype)
  if grow_factor < 1:
    raise ConfigError(f"--grow_factor={grow_factor}: expected an integer >= 1")
  if kind == "delta" and grow_factor > 1:
    raise ConfigError(f"--grow_factor={grow_factor} with --dst=delta:...: a delta holds a trained task's branches; "
                      "grow for a task with the trainer (config.growth.task)")
  if kind in ("params", "delta"):
    if files.as_path(out).exists() and not overwrite:
      raise CheckpointError(f"--dst={dst!r}: {out!r} exists; pass --overwrite to replace it")
    if kind == "delta":
      return save_delta(src, out, task=task, base=base, dtype=dtype, deltas=deltas, active_tasks=active_tasks,
                        cache=cache)
  from grow_jax.growth.tasks import parse_active
  parse_active(active_tasks)                                  # a malformed --active_tasks fails before any work
  if kind == "gguf":
    if not tokenizer:
      raise ConfigError("--notokenizer with --dst=gguf:...: llama.cpp needs the vocabulary in the file")
    path = files.as_path(out)
    if path.exists() and not overwrite:
      raise CheckpointError(f"--dst={dst!r}: {out!r} exists; pass --overwrite to replace it")
    files.check_writable(os.path.dirname(os.path.abspath(os.path.expanduser(out))), "--dst directory")
    vocab = gguf_vocab(tokenizer_source(src, tokenizer_src), cache=cache)   # before the (slow) weights
  start = time.time()
  config, params = load_model(src, deltas=deltas, active_tasks=active_tasks, cache=cache)
  logging.info("loaded %s: %d layers, %.1fM params in %.1f s", src, config.num_layers,
               count_params(config) / 1e6, time.time() - start)
  if grow_factor > 1:
    layers = parse_layers(grow_layers, config.num_layers, field="--grow_layers")
    config, params = growth.grow_mlp(config, params, factor=grow_factor, layers=layers)
    logging.info("grew MLPs by %d in layers %s: %.1fM params", grow_factor, "all" if layers is None else layers,
                 count_params(config) / 1e6)
  if kind == "gguf":
    from grow_jax.formats import gguf_export
    path = gguf_export.save_gguf(config, params, out, vocab=vocab, dtype=dtype or "f32", overwrite=overwrite,
                                 name=f"{os.path.basename(src.rstrip('/')) or src} (grow_jax)")
    logging.info("wrote %s (%.1f MB) in %.1f s total", path, path.stat().st_size / 1e6, time.time() - start)
    return path
  if dtype:
    from grow_jax.formats import hf_format
    config = config.replace(param_dtype=_HF_DTYPES[dtype])
    params = hf_format.cast_params(params, _HF_DTYPES[dtype])
  if kind == "params":
    from grow_jax.formats import params_file
    params_file.save_params_file(out, config, params)
    logging.info("wrote %s in %.1f s total", out, time.time() - start)
    return files.as_path(out)
  tok = None
  if tokenizer:
    from grow_jax.model.tokenizer import load_tokenizer
    try:
      source = tokenizer_source(src, tokenizer_src)
      if source is None:
        raise CheckpointError(f"--src={src!r} names no tokenizer (pass --tokenizer_src)")
      tok = load_tokenizer(source, cache=cache)
    except CheckpointError as e:
      logging.warning("tokenizer skipped (the weights are converted without it): %s", e)
      print(f"grow_jax.convert: tokenizer skipped: {e}", file=sys.stderr, flush=True)
  path = formats.save_hf(config, params, out, tokenizer=tok, overwrite=overwrite)
  logging.info("wrote %s in %.1f s total", path, time.time() - start)
  return path


def save_delta(src: str, out: str, *, task: str | None, base: str | None, dtype: str | None, deltas=(),
               active_tasks: str | None = None, cache: str | None = None):
  """--dst=delta:<file>: `task`'s branches (default: the newest task) of --src, checked against the model it was
  grown on: --base, else a workdir's init source (the model the run grew from). Without either the check is
  skipped (the delta then records the base it implies; a wrong one is refused when applied)."""
  from grow_jax.formats import delta as delta_lib
  from grow_jax.growth import tasks as task_lib
  from grow_jax.train import trained
  start = time.time()
  config, params = load_model(src, deltas=deltas, active_tasks=active_tasks, cache=cache)
  names = task_lib.task_names(config)
  if not names:
    raise ConfigError(f"--src={src!r} has no task branches to save as a delta ({task_lib.describe(config)}); "
                      "train with config.growth.task set")
  task = task or names[-1]
  base_model = None
  if base or (trained.is_workdir(src) and not deltas and task == names[-1]):    # a run grew its newest task
    loaded = trained.load_with_base(src, base=base, flag="--src") if trained.is_workdir(src) else None
    base_model = ((loaded.base_config, loaded.base_params) if loaded else
                  load_model(base, cache=cache))
  else:
    logging.warning("--dst=delta:%s: no --base to check the task's base against", out)
  delta = delta_lib.save_delta(out, config, params, task, base=base_model,
                               dtype={"bf16": "bfloat16", "f32": "float32", None: None}[dtype], overwrite=True)
  logging.info("wrote %s (task %s, layers %s, base %s) in %.1f s", out, task, list(delta.layers), delta.base_hash,
               time.time() - start)
  return files.as_path(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    if _LIST_TASKS.value:
      from grow_jax.growth import tasks as task_lib
      config, _ = load_model(_SRC.value, deltas=_DELTAS.value, cache=_CACHE.value)
      print(task_lib.describe(config))
      return
    if not _DST.value:
      raise ConfigError("--dst is required (or --list_tasks)")
    path = convert(_SRC.value, _DST.value, overwrite=_OVERWRITE.value, tokenizer=_TOKENIZER.value,
                   grow_factor=_GROW_FACTOR.value, grow_layers=_GROW_LAYERS.value, cache=_CACHE.value,
                   dtype=_DTYPE.value, tokenizer_src=_TOKENIZER_SRC.value, deltas=_DELTAS.value,
                   active_tasks=_ACTIVE_TASKS.value, task=_TASK.value, base=_BASE.value)
  except GrowJaxError as e:
    errors.print_error("grow_jax.convert", e)
    sys.exit(1)
  print(path)


if __name__ == "__main__":
  flags.mark_flags_as_required(["src"])
  app.run(main)
