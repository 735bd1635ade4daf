"""What a run reports in words: the accounting table at start, the before/after table at the end."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from grow_jax import files, tables
from grow_jax.growth import operators as growth
from grow_jax.growth.attention import grown_head_layers
from grow_jax.methods import accounting
from grow_jax.train import optim


def accounting_table(setup) -> str:
  """The method's accounting (trainable share, optimizer bytes, added FLOPs) and the measured optimizer state."""
  rows = {setup.method.name: accounting.account_method(setup.method, setup.abstract_state["params"])}
  lines = [accounting.format_table(rows)]
  opt_bytes = optim.state_bytes(setup.abstract_state["opt_state"])
  lines.append(tables.text(("optimizer state", "bytes"), [(k, f"{v / 2**20:.2f} MiB") for k, v in opt_bytes.items()]))
  info = setup.method.info()
  if info:
    lines.append(f"method {setup.method.name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
  mc = setup.model_config
  grown = growth.grown_layers(mc)
  if grown:
    widths = sorted({mc.layer_mlp_branches(i) for i in grown})
    lines.append(f"grown layers ({len(grown)} of {mc.num_layers}): {list(grown)}; MLP branch widths {widths}")
  heads = grown_head_layers(mc)
  if heads:
    layouts = sorted({mc.layer_attn_branches(i) for i in heads})
    lines.append(f"grown attention heads in {len(heads)} of {mc.num_layers} layers: {list(heads)}; "
                 f"(query heads, own kv heads) per branch {layouts}")
  return "\n".join(lines)


def before_after_table(first: Mapping[str, Any], last: Mapping[str, Any]) -> list[tuple[str, float, float]]:
  """(metric, before, after) for every eval metric present at both ends of a run."""
  rows = []
  for key, before in first.items():
    if key.endswith(("/num_examples", "/num_tokens", "/tokens")) or key == "eval/seconds":
      continue                                    # counts, not measurements
    if key.startswith("eval/") and key in last and isinstance(before, (int, float)):
      rows.append((key[len("eval/"):], float(before), float(last[key])))
  return rows


def write_summary(workdir: str, config, rows: list[tuple[str, float, float]], start_step: int, step: int,
                  wall_seconds: float) -> str:
  """<workdir>/summary.json and summary.md: the before/after table of this run. Returns the markdown."""
  title = (f"# {config.train.mode}: {config.init.source}, growth x{config.growth.factor or 'default'} "
           f"(layers {config.growth.layers}), {config.data.task}, steps {start_step} -> {step}")
  table = tables.markdown(("metric", "before", "after", "change"),
                          [(k, f"{b:.4g}", f"{a:.4g}", f"{a - b:+.4g}") for k, b, a in rows])
  text = f"{title}\n\n{table}\n\nwall time {wall_seconds / 60:.1f} min\n"
  summary = {"mode": config.train.mode, "init": config.init.source, "growth": config.growth.to_dict(),
             "task": config.data.task, "steps": [start_step, step], "wall_seconds": wall_seconds,
             "metrics": {k: {"before": b, "after": a} for k, b, a in rows}}
  files.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2) + "\n")
  files.write_text(os.path.join(workdir, "summary.md"), text)
  return text
