r"""Evaluate a model on named evaluations; print a table and write {evaluation: {metric: value}} as JSON.

  python -m grow_jax.evaluate --checkpoint=gemma3-270m --tasks=capitals:test,stdlib_text --base=gemma3-270m
  python -m grow_jax.evaluate --checkpoint=/path/to/workdir --tokenizer=gemma3-270m --tasks=... --out=r.json
  python -m grow_jax.evaluate --checkpoint=random:tiny --tokenizer=bytes --tasks=smoke_ppl    # plumbing check
  python -m grow_jax.evaluate --checkpoint=gemma3-270m --tasks=capitals_gen:test --items=items.jsonl.gz
  python -m grow_jax.evaluate --checkpoint=gemma3-270m --deltas=fr.delta,facts.delta --active_tasks=fr --tasks=...

--checkpoint is a trainer workdir (its newest readable checkpoint, the trained method's params as the forward
sees them, e.g. LoRA merged) or a model source (`grow_jax.formats.load_checkpoint`: 'gemma3-270m', 'hf:<dir>',
'gguf:<file>', 'random:<preset>') or a grow_jax params file (`*.safetensors`); a workdir's evaluations of its own
task read it with the options the run set (its config.json's `data.options`), as the trainer's did. --deltas are
delta files of task branches applied to it in growth order and --active_tasks chooses the task branches switched on
(docs/method.md, "Task branches and deltas"). --tasks are entries of the one evaluation registry the trainer uses too
(grow_jax/evaluation/registry.py): the smoke_* sanity tasks or any grow_jax.data task as 'task' or 'task:split'.
Tasks that compute KL(base ‖ model) need --base. --items writes every evaluation's per-item records (predictions,
per-item scores, log-likelihoods, per-text NLL; grow_jax/evaluation/items.py) as JSON lines, gzip'd when the name
ends in .gz, with the same bytes for the same records. Bad input ends with one line on stderr and exit status 1.
--checkpoint, --base, --out, --items and --cache_dir may be gs:// paths; one that cannot be reached or written is
such a line, before any work.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from absl import app, flags, logging

from grow_jax import errors, files
from grow_jax.errors import ConfigError, GrowJaxError
from grow_jax.data import tasks as data_tasks
from grow_jax.evaluation import evaluator, items as item_records, registry

_FLAGS_DEFINED = False


def load_for_eval(path: str, deltas: Sequence[str] = (), active_tasks: str | None = None):
  """(config, params) of what --checkpoint names (train/trained.py `load_model`): a trainer workdir, a model source
  or a grow_jax params file, then `deltas` applied in order and only `active_tasks` switched on."""
  from grow_jax.train.trained import load_model
  return load_model(path, deltas=deltas, active_tasks=active_tasks)


class ByteTokenizer:
  """UTF-8 bytes as ids 3..258 (0 pad, 1 eos, 2 bos): a stand-in for plumbing checks with random models."""

  pad_id, eos_id, bos_id = 0, 1, 2

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    return ([self.bos_id] if add_bos else []) + [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", errors="replace")


def load_tokenizer_for_eval(source: str):
  """The tokenizer named by --tokenizer: 'bytes' (ByteTokenizer) or a model source."""
  if source == "bytes":
    return ByteTokenizer()
  from grow_jax.model.tokenizer import load_tokenizer
  return load_tokenizer(source)


def run(checkpoint: str, tasks: Sequence[str], *, out: str | None = None, tokenizer: str | None = None,
        base: str | None = None, limit: int | None = None, batch_size: int = 8, max_len: int = 512,
        cache_dir: str | None = None, items: str | None = None, deltas: Sequence[str] = (),
        active_tasks: str | None = None) -> dict[str, dict[str, Any]]:
  """Load the model, build the evaluations, score, print a table and write JSON (if `out`) and the per-item
  records (if `items`: {evaluation name: records}, `items.write_items`)."""
  if not tasks:
    raise ConfigError(f"--tasks is empty; known: {registry.names()}")
  registry.check(list(tasks), field="--tasks")                   # before loading anything
  _check_remote_paths(checkpoint=checkpoint, base=base, out=out, cache_dir=cache_dir, items=items)
  from grow_jax.train.trained import is_workdir
  is_workdir = is_workdir(checkpoint)
  if tokenizer is None:
    if is_workdir or checkpoint.startswith("random:"):
      raise ConfigError(f"--checkpoint={checkpoint!r} names no tokenizer: pass --tokenizer")
    tokenizer = checkpoint
  config, params = load_for_eval(checkpoint, deltas, active_tasks)
  own = run_task_options(checkpoint) if is_workdir else {}
  for task, options in own.items():
    logging.info("%s trained on %s with options %s: its evaluations read that data", checkpoint, task, options)
  with data_tasks.run_data(None, own):
    results, per_item = _score(config, params, tasks, tokenizer=tokenizer, base=base, limit=limit,
                               batch_size=batch_size, max_len=max_len, cache_dir=cache_dir, items=bool(items))
  print(evaluator.format_table(results))
  if out:
    evaluator.write_results(results, out)
    logging.info("wrote %s", out)
  if items:
    written = item_records.write_items(items, per_item)
    logging.info("wrote %s (%d items, %d bytes)", items, sum(written["entries"].values()), written["bytes"])
  return results


def run_task_options(workdir: str) -> dict[str, dict[str, Any]]:
  """{task: options} for the options a workdir's run set for its own task (config.json's `data.options`; {} when
  none): its evaluations here read the data it trained on, as the trainer's own evaluations did."""
  import ml_collections
  from grow_jax.data import pipeline
  from grow_jax.train.trained import run_config
  run = ml_collections.ConfigDict(run_config(workdir))
  task = run.get("data", {}).get("task")
  options = pipeline.task_options(run, task) if task else {}
  return {task: options} if options else {}


def _score(config, params, tasks, *, tokenizer, base, limit, batch_size, max_len, cache_dir, items):
  """({evaluation: metrics}, {evaluation: per-item records} or {}) of `params` on `tasks`."""
  ctx = registry.EvalContext(
      config, tokenizer=load_tokenizer_for_eval(tokenizer), limit=limit, batch_size=batch_size, max_len=max_len,
      cache_dir=cache_dir, base_model=(lambda: load_for_eval(base)) if base else None,
      base_id=base if base and not base.startswith("random:") and not files.as_path(base).is_dir() else None,
      items=items)
  results = {name: fn(params) for name, fn in registry.build_all(list(tasks), ctx).items()}
  if not items:
    return results, {}
  return ({name: scored.metrics for name, scored in results.items()},
          {name: scored.items for name, scored in results.items()})


def _check_remote_paths(*, checkpoint, base, out, cache_dir, items=None) -> None:
  """gs:// inputs are reachable and gs:// outputs writable, or one line naming the flag and the path."""
  for flag, path in (("--checkpoint", checkpoint), ("--base", base)):
    if path and files.is_remote(path):
      files.check_reachable(path, flag)
  for flag, directory in (("--out", out and os.path.dirname(out)), ("--items", items and os.path.dirname(items)),
                          ("--cache_dir", cache_dir)):
    if directory and files.is_remote(directory):
      files.check_writable(directory, flag)


def define_flags():
  global _FLAGS_DEFINED
  if _FLAGS_DEFINED:
    return
  _FLAGS_DEFINED = True
  flags.DEFINE_string("checkpoint", None, "Trainer workdir or model source (gemma3-270m, hf:<dir>, random:<preset>).")
  flags.DEFINE_list("tasks", [], "Comma-separated evaluation names ('task' or 'task:split').")
  flags.DEFINE_string("out", None, "Write results JSON here.")
  flags.DEFINE_string("items", None, "Write every evaluation's per-item records here (JSON lines; gzip'd if the "
                      "name ends in .gz).")
  flags.DEFINE_string("tokenizer", None, "Tokenizer source (default: --checkpoint when it is a source), or 'bytes'.")
  flags.DEFINE_string("base", None, "Base model for KL tasks (a source or workdir).")
  flags.DEFINE_integer("limit", None, "At most this many examples per task.")
  flags.DEFINE_integer("batch_size", 8, "Sequences per batch.")
  flags.DEFINE_integer("max_len", 512, "Longest scored sequence; longer inputs lose tokens on the left.")
  flags.DEFINE_string("cache_dir", None, "Directory for the KL base cache (default: memory only).")
  flags.DEFINE_list("deltas", [], "Delta files (grow_jax.formats.delta) applied to --checkpoint, in growth order.")
  flags.DEFINE_string("active_tasks", None, "Task branches switched on: 'A,B', 'none' (the base model) or "
                      "'A=1,B=0.5' (scales); default every task as trained.")
  flags.mark_flag_as_required("checkpoint")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  from grow_jax import runtime
  runtime.enable_compilation_cache()
  try:
    run(f.checkpoint, f.tasks, out=f.out, tokenizer=f.tokenizer, base=f.base, limit=f.limit,
        batch_size=f.batch_size, max_len=f.max_len, cache_dir=f.cache_dir, items=f.items, deltas=f.deltas,
        active_tasks=f.active_tasks)
  except GrowJaxError as e:
    errors.print_error("grow_jax.evaluate", e)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
