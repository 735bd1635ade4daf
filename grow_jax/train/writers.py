"""Metric writers: TensorBoard (tensorboardX), `<workdir>/metrics.jsonl` and a tqdm progress bar.

Only process 0 writes (every other process gets a writer whose methods do nothing). metrics.jsonl holds one
JSON object per line, each with `step`; training lines have `loss`, eval lines have `eval/...` keys.

A gs:// workdir works too: metrics.jsonl is a `files.AppendFile` (the object is rewritten, at most every 30 s
and at every `flush()`), and tensorboardX writes gs:// event files itself (through google-cloud-storage, uploading
the whole file at each of its flushes). The loop calls `flush()` before each checkpoint, so every metric up to a
checkpoint's step is stored before the checkpoint can exist.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Mapping

import jax

from grow_jax import files
from grow_jax.errors import TrainingDivergedError


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops lines with step > last_step (a resumed run re-logs the steps after its checkpoint)."""
  source = files.as_path(path)
  if not source.exists():
    return
  kept = []
  for line in source.read_text().splitlines(keepends=True):
    try:
      if json.loads(line).get("step", 0) > last_step:
        continue
    except ValueError:
      continue
    kept.append(line)
  files.write_text(path, "".join(kept))


class MetricWriter:
  """Writes scalars to TensorBoard and metrics.jsonl; shows progress with tqdm (process 0 only)."""

  def __init__(self, workdir: str, *, enabled: bool = True, total_steps: int | None = None,
               initial_step: int = 0, tensorboard: bool = True, progress: bool = True):
    self.enabled = enabled
    self._tb = None
    self._bar = None
    self._jsonl = None
    if not enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    truncate_jsonl(path, initial_step)
    self._jsonl = files.AppendFile(path)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    if progress and total_steps:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True,
                       file=sys.stderr, mininterval=1.0)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: files.json_ready(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        v = files.json_ready(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, step)

  def progress(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
    if self._bar is None:
      return
    self._bar.update(step - self._bar.n)
    if postfix:
      self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                            refresh=False)

  def restart_clock(self) -> None:
    """Restart the progress bar's rate/ETA clock (after work that is not training, e.g. a first evaluation)."""
    if self._bar is None:
      return
    n = self._bar.n
    self._bar.reset()
    self._bar.initial = self._bar.n = n

  def print(self, text: str) -> None:
    """A console line that does not break the progress bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def flush(self) -> None:
    """Everything written so far is stored (on object storage: uploaded)."""
    if self._tb is not None:
      self._tb.flush()
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


class StepMetrics:
  """Step metrics stay on device until logged; `flush` fetches them in one transfer, stops on NaN/inf and
  writes one metrics.jsonl line per step (steps/s and tokens/s on the last)."""

  def __init__(self, writer: MetricWriter, tokens_per_step: int, kept: Callable[[], str]):
    self.writer, self.tokens_per_step, self.kept = writer, tokens_per_step, kept
    self.pending: list[tuple[int, Any]] = []
    self.restart_clock()

  def restart_clock(self) -> None:
    self.clock, self.steps = time.time(), 0

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))
    self.steps += 1

  def flush(self, extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    if not self.pending:
      return {}
    host = jax.device_get([m for _, m in self.pending])
    elapsed = time.time() - self.clock
    record: dict[str, Any] = {}
    for (s, _), m in zip(self.pending, host):
      record = {k: float(v) for k, v in m.items() if k != "finite"}
      if not bool(m["finite"]):
        raise TrainingDivergedError(f"loss={record['loss']} grad_norm={record['grad_norm']} at step {s} (not "
                                    f"finite): stopping. {self.kept()}")
      if s == self.pending[-1][0]:
        record.update(extra or {})
        if self.steps and elapsed > 0:
          record["steps_per_sec"] = self.steps / elapsed
          record["tokens_per_sec"] = self.steps * self.tokens_per_step / elapsed
      self.writer.write_scalars(s, record)
    self.pending = []
    self.restart_clock()
    return record
