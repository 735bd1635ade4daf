r"""Staged datasets: a task's records built once, where its source is reachable, into a directory or gs:// path
that every worker then reads with no network (cluster nodes without the hub).

    python -m grow_jax.data.stage --config=configs/paper_1b.py --out=gs://BUCKET/data       # all a config reads
    python -m grow_jax.data.stage --task=translation_en_fr --splits=train,validation --limit=200000 \
        --out=gs://BUCKET/data                                                              # one task
    python -m grow_jax.main --config=configs/paper_1b.py --config.data.staged=gs://BUCKET/data --workdir=...
    GROW_JAX_STAGED_DATA=gs://BUCKET/data python -m grow_jax.evaluate ...         # or the launchers' environment

Layout: `<out>/<task>/{<split>.jsonl, manifest.json}`, the offline datasets' format (data/cache.py: atomic
locally, one object per file on gs:// with the manifest last). A split holds the raw records in the dataset's
own schema, in the source's order, so a reading task applies its usual templates and a staged read gives
exactly the examples of a direct load. The manifest records the task, its options (every option, defaults
filled in, less those that only say where caches live or how to read: `LOCATION_OPTIONS`) and the split
counts. A reader whose task or options differ from the staged copy's, or who needs a split it does not hold,
is refused in one line naming both (`DataError`), before any heavy work when the trainer checks its reads
(`pipeline.use_config`).

Options on the command line: `--option=key=value` (repeatable; the value is a Python literal, else a string) and
`--limit=N` (the hub tasks' `limit`); with `--config`, the config's `data.options` for its own task (and
`--config.data.options.limit=...` overrides as for the trainer).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import sys
import time
from typing import Any, Iterator, Mapping, Sequence

from grow_jax.data import cache
from grow_jax.data.staged import (ENV_STAGED, FORMAT, LOCATION_OPTIONS, _diff, _root, check_reads,  # noqa: F401
                                  check_split, read_manifest, stage_command, staged_options, staged_task,
                                  staged_tasks, task_path)
from grow_jax.data.tasks import Task, build_task
from grow_jax.errors import CacheError, DataError


# ---- writing -------------------------------------------------------------------------------------------------
def stage_task(root: str | os.PathLike, name: str, options: Mapping[str, Any] | None = None,
               splits: Sequence[str] | None = None, *, overwrite: bool = False) -> dict[str, Any]:
  """Stages task `name` with `options` (its `splits`, default all) under `root`, reading its own source; returns
  the manifest. A copy already there with these options and splits is kept (nothing read); one with other
  options or fewer splits is replaced only with `overwrite` (else `DataError` naming both)."""
  options = dict(options or {})
  task = build_task(name, **options)
  splits = list(splits or task.splits)
  for split in splits:
    task.check_split(split)
  wanted = staged_options(name, options)
  path = task_path(root, name)
  try:
    old = cache.read_manifest(path)
  except CacheError:
    old = None
  if old is not None:
    if old.get("options") == wanted and set(splits) <= set(old.get("counts", {})):
      logging.info("task %r is already staged at %s with these options: %s", name, path, old["counts"])
      return old
    if not overwrite:
      held, asked = _diff(old.get("options"), wanted)
      raise DataError(f"{path} already holds task {name!r} with options {held} and splits "
                      f"{sorted(old.get('counts', {}))}; asked for options {asked} and splits {sorted(splits)}: "
                      "pass --overwrite to replace it, or stage into another --out")
  start = time.time()
  records = {split: _records(task, name, split) for split in splits}
  cache.write_dataset(path, records, {"format": FORMAT, "task": name, "options": wanted,
                                      "description": task.description}, replace=True)
  manifest = cache.read_manifest(path)
  logging.info("staged task %r at %s in %.1f s: %s", name, path, time.time() - start, manifest["counts"])
  return manifest


def stage_config(config, root: str | os.PathLike, *, overwrite: bool = False) -> dict[str, dict[str, Any]]:
  """Stages every task, option set and split a training run of `config` reads (`pipeline.data_reads`) under
  `root`; returns {task: manifest}."""
  from grow_jax.data import pipeline
  from grow_jax.train import config as config_lib
  config_lib.check(config)
  reads = pipeline.data_reads(config)
  if not reads:
    raise DataError(f"config.data.task={config.data.task!r} and config.eval.tasks={list(config.eval.tasks)} read no "
                    "data task: nothing to stage")
  return {name: stage_task(root, name, options, splits, overwrite=overwrite)
          for name, (options, splits) in reads.items()}


def _records(task: Task, name: str, split: str) -> Iterator[dict[str, Any]]:
  for i, record in enumerate(task.records(split)):
    record = dict(record)
    try:
      json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError) as e:
      raise CacheError(f"task {name!r} split {split!r} record {i}: not JSON-able ({e}); a staged copy holds "
                       "JSON records") from None
    yield record


# ---- command line --------------------------------------------------------------------------------------------
def parse_option(text: str) -> tuple[str, Any]:
  """'key=value' -> (key, value): the value as a Python literal ('200000', 'True', "{'train': 'a.jsonl'}"), else
  the string itself ('refs/convert/parquet')."""
  key, sep, value = text.partition("=")
  if not sep or not key.strip():
    raise DataError(f"--option={text!r}: expected key=value")
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = value
  return key.strip(), parsed


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string("task", None, "A grow_jax.data task to stage (or --config).")
  flags.DEFINE_list("splits", None, "With --task: the splits to stage (default: all the task's splits).")
  flags.DEFINE_multi_string("option", [], "With --task: a task option key=value (repeatable).")
  flags.DEFINE_integer("limit", None, "With --task: the hub tasks' `limit` (the first N records of each split).")
  flags.DEFINE_string("out", None, "Directory or gs:// path to stage into (every worker reads it).")
  flags.DEFINE_bool("overwrite", False, "Replace a staged copy of a task that holds other options or splits.")
  config_flags.DEFINE_config_file("config", None, "A training config: stage every task and split it reads.",
                                  lock_config=True)
  flags.mark_flag_as_required("out")


def main(argv: Sequence[str]) -> None:
  from absl import app, flags
  from grow_jax import errors, files
  from grow_jax.errors import GrowJaxError
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  FLAGS = flags.FLAGS
  try:
    if (FLAGS.task is None) == (FLAGS.config is None):
      raise DataError("give --task=NAME (with --splits, --option, --limit) or --config=FILE (stage what it reads), "
                      "not both or neither")
    files.check_writable(FLAGS.out, "--out")
    start = time.time()
    if FLAGS.config is not None:
      manifests = stage_config(FLAGS.config, FLAGS.out, overwrite=FLAGS.overwrite)
    else:
      options = dict(parse_option(o) for o in FLAGS.option)
      if FLAGS.limit is not None:
        options["limit"] = FLAGS.limit
      manifests = {FLAGS.task: stage_task(FLAGS.out, FLAGS.task, options, FLAGS.splits or None,
                                          overwrite=FLAGS.overwrite)}
  except GrowJaxError as e:
    errors.print_error("grow_jax.data.stage", e)
    sys.exit(1)
  for name, manifest in manifests.items():
    print(f"{task_path(FLAGS.out, name)}: task {name}, splits {manifest['counts']}, options {manifest['options']}",
          flush=True)
  print(f"staged in {time.time() - start:.1f} s; every worker reads it with --config.data.staged={FLAGS.out} "
        f"(or {ENV_STAGED}={FLAGS.out})", flush=True)


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
