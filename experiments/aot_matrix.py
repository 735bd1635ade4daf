r"""The compiled fit matrix: configs/paper_1b.py and paper_4b.py x {SFT, G-Freeze, G-Train, LoRA} x TPU slices,
each cell compiled for the slice's real chips on this CPU machine by grow_jax.aot (libtpu's compile-only devices).

  python experiments/aot_matrix.py --out=experiments/results/aot_matrix
  python experiments/aot_matrix.py --out=experiments/results/aot_matrix --only='paper_1b/*/v5e-16' --force
  python experiments/aot_matrix.py --out=experiments/results/aot_matrix --report_only

A cell first compiles the config as shipped (its README command: the defaults). When a program does not fit,
the cell tries the changes of `LADDER` in order — each a real compile — and records the first that fits: the
smallest change that makes it fit, in this order of cost to the user (gradient accumulation with the same global
batch, then tensor parallelism that frees the batch for accumulation). The paper configs ship with per-layer
remat ('full') and the layers scanned; without them the 1B's 64 x 512 batch needs ~50 GiB of activations per v5e
chip (see the README). Every cell's record
(cells/<config>__<mode>__<slice>.json, every attempt with XLA's figures) is written as it finishes, so the run is
resumable; `matrix.md` is rebuilt from the records. The evaluation programs (held-out loss, scoring, generation)
depend on the model, not on the method: they are compiled in the SFT cell (the base model: LoRA merges its
adapters before the forward) and the G-Freeze cell (the grown model, the same as G-Train's) of the slices in
`EVAL_SLICES` (the least HBM per device), and the other cells point at them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("paper_1b", "paper_4b")
MODES = ("sft", "g_freeze", "g_train", "lora")
SLICES = ("v5e-16", "v5e-64", "v6e-16", "v6e-64", "v5p-8", "h100", "h200", "8xh100")
EVAL_IN = {"sft": "sft", "lora": "sft", "g_freeze": "g_freeze", "g_train": "g_freeze"}
# Where the evaluation programs are compiled: on the slices whose chips have the least HBM per device for the
# model (v5e-16: 16 GiB chips, the fewest of them; one H100), in the SFT and G-Freeze cells. Each 1B cell with
# them costs ~8 CPU-minutes here; the other cells compile the train step alone.
EVAL_SLICES = ("v5e-16", "h100")

# The changes a cell tries after the defaults, in order: (label, config args appended, --config. overrides).
LADDER = (
    ("accum=2", "accum=2", {}),
    ("accum=4", "accum=4", {}),
    ("accum=8", "accum=8", {}),
    ("tensor=2, accum=4", "tensor=2,accum=4", {}),
    ("tensor=4, accum=8", "tensor=4,accum=8", {}),
)


def cell_name(config: str, mode: str, slice_: str) -> str:
  return f"{config}__{mode}__{slice_}"


def command(config: str, mode: str, slice_: str, extra_arg: str = "", overrides: dict | None = None) -> list[str]:
  arg = f"mode={mode}" + (f",{extra_arg}" if extra_arg else "")
  cmd = ["python", "-m", "grow_jax.aot", f"--config=configs/{config}.py:{arg}", f"--topology={slice_}"]
  cmd += [f"--config.{k}={v}" for k, v in (overrides or {}).items()]
  return cmd


def run_attempt(cmd: list[str], programs: str, json_path: str, timeout: int) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  full = [sys.executable, *cmd[1:], f"--programs={programs}", f"--json={json_path}"]
  t = time.time()
  try:
    run = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"compile did not finish in {timeout} s", "wall_s": time.time() - t}
  if run.returncode != 0 or not os.path.exists(json_path):
    lines = [l for l in run.stderr.splitlines() if "grow_jax" in l and "error" in l] or run.stderr.splitlines()[-3:]
    return {"error": " ".join(lines)[-800:], "wall_s": time.time() - t}
  with open(json_path) as f:
    report = json.load(f)
  os.remove(json_path)
  report["wall_s"] = time.time() - t
  return report


def run_cell(out: str, config: str, mode: str, slice_: str, timeout: int) -> dict:
  with_evals = EVAL_IN[mode] == mode and slice_ in EVAL_SLICES
  programs = "train_step,eval_step,score,generate" if with_evals else "train_step"
  attempts = []
  tries = [("as shipped", "", {})] + list(LADDER)
  for label, extra, overrides in tries:
    cmd = command(config, mode, slice_, extra, overrides)
    report = run_attempt(cmd, programs, os.path.join(out, "cells", f".{cell_name(config, mode, slice_)}.tmp.json"),
                         timeout)
    attempts.append({"change": label, "command": " ".join(cmd), "report": report})
    print(f"  {label}: " + ("error: " + report["error"] if "error" in report else
                            ("fits" if report["fits"] else "does not fit") + f" ({report['wall_s']:.0f} s)"),
          flush=True)
    if "error" not in report and report["fits"]:
      break
    if "error" in report and "does not fit" not in report["error"] and label == "as shipped" and \
        "not divisible" not in report["error"]:
      break      # a bad config is not fixed by the ladder
  return {"config": config, "mode": mode, "slice": slice_, "attempts": attempts}


# ---- the table -----------------------------------------------------------------------------------------
def _gib(b):
  return f"{b / 2**30:.1f}"


def _train(report):
  return next((p for p in report.get("programs", []) if p["name"] == "train_step"), None)


def matrix_markdown(cells: list[dict], argv: str) -> str:
  from grow_jax import tables
  lines = [f"`{argv}`", "",
           "Each cell: the trainer's own programs compiled for the slice's chips (libtpu compile-only devices, "
           "this CPU machine) by `python -m grow_jax.aot`; figures per device from XLA's memory and cost "
           "analyses. *as shipped* = the config's defaults (the README command); otherwise the first change of "
           "the ladder that fits, itself compiled (the earlier attempts are in the cell's record). Peak = "
           "arguments + outputs - donated + temporaries. TFLOP/dev/step: XLA's HLO cost analysis of the step "
           "lowered with the layers unrolled (a scanned loop's body is counted once by the compiled program's "
           "analysis), per device. Step ms: those FLOPs at the chip's bf16 peak, a floor on the step time, not a "
           "measurement (a real step is slower: communication, memory traffic, MFU below 100%). Evaluation "
           "programs (held-out loss, scoring at eval.batch_size x eval.max_len, greedy generation) are compiled "
           "in the SFT and G-Freeze cells of v5e-16 and h100; 'eval peak' is the largest of them.", ""]
  rows = []
  for cell in cells:
    final = cell["attempts"][-1]
    report = final["report"]
    train = _train(report)
    if "error" in report:
      rows.append([cell["config"], cell["mode"], cell["slice"], "error", final["change"], "-", "-", "-", "-", "-",
                   report["error"][:120]])
      continue
    verdict = "fits" if report["fits"] else "does not fit"
    change = final["change"] if report["fits"] else f"none of {len(cell['attempts'])} tried"
    # The compute term of the roofline (FLOPs at the chip's bf16 peak): a floor on the step time. The memory term
    # is left out: for scanned layers XLA's compiled byte count covers one loop body (a lower bound), and the
    # first cells compiled here recorded the unoptimised module's bytes (an overcount).
    est = train["flops"] / (report["chip"]["bf16_tflops"] * 1e12) if train and train["fits"] else None
    evals = [p for p in report["programs"] if p["name"] != "train_step"]
    eval_peak = max((p["peak_bytes"] for p in evals if p["fits"]), default=None)
    eval_note = (_gib(eval_peak) if eval_peak is not None else
                 f"see {EVAL_IN[cell['mode']]}" if cell["slice"] in EVAL_SLICES else "train only")
    if any(not p["fits"] for p in evals):
      eval_note = "over: " + ",".join(p["name"] for p in evals if not p["fits"])
    rows.append([cell["config"], cell["mode"], cell["slice"], verdict, change, report["mesh"],
                 _gib(train["peak_bytes"]) if train and train["fits"] else "-",
                 f"{train['flops'] / 1e12:.2f}" if train and train["fits"] else "-",
                 f"{est * 1e3:.0f}" if est else "-",
                 eval_note, f"{sum(a['report'].get('wall_s', 0) for a in cell['attempts']):.0f}"])
  lines.append(tables.markdown(["config", "mode", "slice", "verdict", "change that fits", "mesh",
                                "train peak GiB/dev", "TFLOP/dev/step", "step ms at bf16 peak (floor)",
                                "eval peak GiB/dev", "compile s (all tries)"], rows))
  return "\n".join(lines) + "\n"


BASELINE = "paper_1b__g_freeze__v5e-16__no_remat_no_scan.json"


def baseline_note(out: str) -> str:
  """Why the paper configs ship with remat and scanned layers: the old defaults compiled for v5e-16
  (`python -m grow_jax.aot --config=configs/paper_1b.py:mode=g_freeze,remat=none,scan=False --topology=v5e-16
  --programs=train_step --json=<out>/BASELINE`)."""
  path = os.path.join(out, BASELINE)
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    report = json.load(f)
  train = _train(report)
  verdict = "fits" if report["fits"] else "does not fit: " + (train["error"] if train else "")
  return (f"\nThe same G-Freeze cell with the old defaults (no remat, layers unrolled; `python -m grow_jax.aot "
          f"--config=configs/paper_1b.py:mode=g_freeze,remat=none,scan=False --topology=v5e-16 "
          f"--programs=train_step`, record `{BASELINE}`): {verdict}\n")


def load_cells(out: str) -> list[dict]:
  cells = []
  for config in CONFIGS:
    for mode in MODES:
      for slice_ in SLICES:
        path = os.path.join(out, "cells", cell_name(config, mode, slice_) + ".json")
        if os.path.exists(path):
          with open(path) as f:
            cells.append(json.load(f))
  return cells


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--only", default="*", help="glob over config/mode/slice, e.g. 'paper_1b/*/v5e-16'")
  parser.add_argument("--force", action="store_true", help="recompile cells that have a record")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--timeout", type=int, default=1500, help="seconds per compile attempt")
  args = parser.parse_args()
  os.makedirs(os.path.join(args.out, "cells"), exist_ok=True)
  sys.path.insert(0, ROOT)
  if not args.report_only:
    # The README commands' slices first (16 chips), then one host, one GPU host, then the 64-chip slices.
    order = [s_ for s_ in ("v5e-16", "v6e-16", "v5p-8", "h100", "8xh100", "h200", "v5e-64", "v6e-64") if s_ in SLICES]
    for slice_ in order:
      for config in CONFIGS:
        for mode in MODES:
          name = cell_name(config, mode, slice_)
          path = os.path.join(args.out, "cells", name + ".json")
          if not fnmatch.fnmatch(f"{config}/{mode}/{slice_}", args.only):
            continue
          if os.path.exists(path) and not args.force:
            continue
          print(f"{name}", flush=True)
          cell = run_cell(args.out, config, mode, slice_, args.timeout)
          tmp = path + ".tmp"
          with open(tmp, "w") as f:
            json.dump(cell, f, indent=1, sort_keys=True)
            f.write("\n")
          os.replace(tmp, path)
  argv = "python experiments/aot_matrix.py --out=" + os.path.relpath(args.out, ROOT)
  with open(os.path.join(args.out, "matrix.md"), "w") as f:
    f.write(matrix_markdown(load_cells(args.out), argv) + baseline_note(args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
