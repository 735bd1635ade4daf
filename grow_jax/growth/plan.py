r"""Targeted growth: which layers to grow, from a short pilot SFT run's MLP updates, as a growth-plan JSON.

  # 1. a pilot: a short SFT run on the new task (checkpoints at several steps for the pilot-length study)
  python -m grow_jax.main --config=configs/gemma3_270m.py:mode=sft,steps=120,lr=3e-5 --workdir=/tmp/pilot_s0 \
      --config.checkpoint.every_steps=40 --config.checkpoint.keep=10
  # 2. the plan (the base weights, seed and model overrides come from the pilot's config.json)
  python -m grow_jax.growth.plan --pilot=/tmp/pilot_s0 --fraction=0.34 --out=/tmp/plan_s0.json
  python -m grow_jax.growth.plan --pilot=/tmp/pilot_s0 --step=40 --num_layers=6 --out=/tmp/plan_s0_40.json
  python -m grow_jax.growth.plan --pilot_config=configs/tiny.py:steps=4 --pilot=/tmp/p --num_layers=1  # runs it
  # 3. train the plan's layers
  python -m grow_jax.main --config=configs/gemma3_270m.py:mode=g_freeze --config.growth.plan=/tmp/plan_s0.json ...
  # ranking agreement of two plans (two pilot seeds, two pilot lengths)
  python -m grow_jax.growth.plan --compare=/tmp/plan_s0.json,/tmp/plan_s1.json

A layer's score is a registered criterion (`CRITERIA`, `register_criterion`) of its ΔW statistics
(analysis.py, original MLP branch only). The default, `update`, is the paper's "size of the layer's MLP
update" in our reading: Σ over gate, up, down of ||ΔW||_F / ||W||_F. Layers are taken in score order; the budget
is a number of layers or a FRACTION OF ALL-LAYER GROWTH'S TRAINABLE COUNT (the method's trainable parameters
when every layer grows by `factor`; embeddings never count), the largest prefix of the ranking within it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import flags

from grow_jax import cli, errors, files
from grow_jax.errors import ConfigError, GrowJaxError
from grow_jax.growth import analysis
from grow_jax.growth.plan_file import (FORMAT, SIGNATURE, check_model, model_signature, read_plan,  # noqa: F401
                                      write_plan)
from grow_jax.model.config import ModelConfig


# ---- criteria: name -> (score of one layer's stats row, description) -------------------------------------
Criterion = Callable[[Mapping[str, float]], float]
CRITERIA: dict[str, tuple[Criterion, str]] = {}


def register_criterion(name: str, description: str):
  """Decorator: `@register_criterion('name', 'what it measures')` on `fn(stats_row) -> score` (higher grows first)."""
  def wrap(fn: Criterion) -> Criterion:
    CRITERIA[name] = (fn, description)
    return fn
  return wrap


register_criterion("update", "Σ_{gate,up,down} ||ΔW||_F / ||W||_F (the size of the layer's MLP update; default)")(
    lambda row: sum(row[f"{m}/rel"] for m in analysis.MATRICES))
register_criterion("fro", "||ΔW||_F of the layer's whole MLP (sqrt of Σ over gate/up/down)")(lambda row: row["fro"])
register_criterion("erank", "mean over gate/up/down of the effective rank of ΔW")(
    lambda row: float(np.mean([row[f"{m}/erank"] for m in analysis.MATRICES])))
register_criterion("srank", "mean over gate/up/down of the stable rank of ΔW")(
    lambda row: float(np.mean([row[f"{m}/srank"] for m in analysis.MATRICES])))


def layer_scores(stats: Sequence[Mapping[str, float]], criterion: str) -> list[float]:
  if criterion not in CRITERIA:
    raise ConfigError(f"criterion={criterion!r}: expected one of {sorted(CRITERIA)}")
  return [float(CRITERIA[criterion][0](row)) for row in stats]


# ---- budgets -----------------------------------------------------------------------------------------
def trainable_counts(config: ModelConfig, method: str = "g_freeze", factor: int = 2) -> tuple[list[int], int]:
  """(trainable count of `method` when only layer i grows by `factor`, for each i; the count when all grow)."""
  from grow_jax import methods
  from grow_jax.model.config import abstract_params
  if not methods.method_class(method).grows:
    raise ConfigError(f"method={method!r}: expected an MLP growth method ({[n for n in methods.names() if methods.method_class(n).grows]})")
  abstract = abstract_params(config)
  count = lambda layers: methods.trainable_count(method, config, abstract, factor=factor, layers=layers)
  return [count([i]) for i in range(config.num_layers)], count(None)


def choose(order: Sequence[int], per_layer: Sequence[int], total: int, *, num_layers: int | None = None,
           fraction: float | None = None) -> list[int]:
  """The largest prefix of `order` with `num_layers` layers, or whose summed `per_layer` counts stay within
  `fraction` x `total` (all-layer growth's count). Sorted by index."""
  if (num_layers is None) == (fraction is None):
    raise ConfigError("plan budget: give exactly one of num_layers or fraction")
  if num_layers is not None:
    if not 0 < num_layers <= len(order):
      raise ConfigError(f"num_layers={num_layers}: expected 1..{len(order)}")
    return sorted(order[:num_layers])
  if not 0.0 < fraction <= 1.0:
    raise ConfigError(f"fraction={fraction}: expected a share of all-layer growth's trainable count in (0, 1]")
  chosen, used = [], 0
  for i in order:
    if used + per_layer[i] > fraction * total + 1e-9:
      break
    chosen.append(i)
    used += per_layer[i]
  if not chosen:
    raise ConfigError(f"fraction={fraction}: below one layer's share ({per_layer[order[0]] / total:.3f}) of "
                      "all-layer growth's trainable count")
  return sorted(chosen)


def make_plan(config: ModelConfig, stats: Sequence[Mapping[str, float]], *, criterion: str = "update",
              num_layers: int | None = None, fraction: float | None = None, method: str = "g_freeze",
              factor: int = 2, pilot: Mapping[str, Any] | None = None, base: str | None = None) -> dict[str, Any]:
  """The growth plan (a JSON-able dict) of a pilot's ΔW `stats` on the ungrown model `config`."""
  scores = layer_scores(stats, criterion)
  order = analysis.top_k(scores, len(scores))
  per_layer, total = trainable_counts(config, method, factor)
  layers = choose(order, per_layer, total, num_layers=num_layers, fraction=fraction)
  trainable = sum(per_layer[i] for i in layers)
  return {"format": FORMAT, "layers": layers, "criterion": criterion, "scores": scores, "order": order,
          "budget": num_layers if num_layers is not None else fraction,
          "budget_kind": "layers" if num_layers is not None else "fraction", "method": method, "factor": factor,
          "trainable": trainable, "trainable_all_layers": total, "share_of_all_layers": trainable / total,
          "layer_trainable": per_layer, "pilot": dict(pilot or {}), "base": base,
          "model": model_signature(config), "stats": [dict(r) for r in stats]}


def layers_at(plan: Mapping[str, Any], *, fraction: float | None = None, num_layers: int | None = None,
              which: str = "top", seed: int = 0) -> list[int]:
  """Another layer set from a plan's scores at a budget: the top-ranked layers ('top', the plan's rule), as
  many lowest-ranked ('bottom') or random ones ('random', numpy seed `seed`). Sorted by index."""
  top = choose(plan["order"], plan["layer_trainable"], plan["trainable_all_layers"], num_layers=num_layers,
               fraction=fraction)
  n = len(top)
  if which == "top":
    return top
  if which == "bottom":
    return sorted(plan["order"][-n:])
  if which == "random":
    return sorted(int(i) for i in np.random.default_rng(seed).choice(len(plan["order"]), n, replace=False))
  raise ConfigError(f"which={which!r}: expected 'top', 'bottom' or 'random'")


# ---- agreement -----------------------------------------------------------------------------------------
def agreement(a: Mapping[str, Any], b: Mapping[str, Any], ks: Sequence[int] = ()) -> dict[str, Any]:
  """Spearman rank correlation of two plans' layer scores and their top-k overlaps (k = each plan's layer
  count, and `ks`)."""
  if len(a["scores"]) != len(b["scores"]):
    raise ConfigError(f"compare: plans score {len(a['scores'])} and {len(b['scores'])} layers; expected one model")
  ks = sorted({len(a["layers"]), len(b["layers"]), *[k for k in ks if k <= len(a["scores"])]})
  return {"spearman": analysis.spearman(a["scores"], b["scores"]), "criteria": [a["criterion"], b["criterion"]],
          "top_k_overlap": {str(k): analysis.top_k_overlap(a["scores"], b["scores"], k) for k in ks},
          "layers": [a["layers"], b["layers"]]}


# ---- from a pilot workdir --------------------------------------------------------------------------------
def load_pilot(workdir: str, *, base: str | None = None, step: int | None = None):
  """(config, base params, pilot params, pilot info, base source) for a pilot workdir, or for a grow_jax params
  file (`*.safetensors`, e.g. a study's kept sweep run; then `base` is required). The base weights are `base` or
  the pilot's init source (`train.trained.load_with_base`)."""
  from grow_jax.model.config import param_shapes
  from grow_jax.train import trained
  t = trained.load_with_base(workdir, base=base, step=step, flag="--pilot")
  if t.config.is_grown or t.config.attn_grown:
    trained_by = f" (method {t.method!r})" if t.method else ""
    raise ConfigError(f"--pilot={workdir!r} is a grown model{trained_by}: rank layers from an ungrown SFT pilot")
  if param_shapes(t.base_config) != param_shapes(t.config):
    raise ConfigError(f"--pilot={workdir!r} and --base={t.base!r} are different models (their parameter shapes "
                      "differ)")
  if trained.is_params_file(workdir):
    info = {"params_file": os.fspath(workdir), "step": None, "total_steps": None, "seed": None, "mode": None,
            "task": None}
  else:
    info = {"workdir": os.fspath(workdir), "step": t.step, "total_steps": t.run.get("total_steps"),
            "seed": t.run.get("seed"), "mode": t.method, "task": t.run.get("data", {}).get("task")}
  return t.config, t.base_params, t.params, info, t.base


def plan_from_pilot(workdir: str, *, base: str | None = None, step: int | None = None, **plan_args) -> dict:
  """The growth plan of a pilot workdir (`make_plan`'s keyword arguments: criterion, num_layers / fraction,
  method, factor)."""
  config, base_params, pilot, info, source = load_pilot(workdir, base=base, step=step)
  stats = analysis.update_stats(config, base_params, pilot)
  if all(row["fro"] == 0.0 for row in stats):
    raise ConfigError(f"--pilot={workdir!r} (method {info['mode']!r}, step {info['step']}): no MLP weight moved "
                      "from the base; the pilot must train the MLPs (sft, mlp_only)")
  return make_plan(config, stats, pilot=info, base=source, **plan_args)


def format_plan(plan: Mapping[str, Any]) -> str:
  columns = ["gate/rel", "up/rel", "down/rel", "gate/erank", "up/erank", "down/erank", "fro"]
  rows = [{**r, "score": s} for r, s in zip(plan["stats"], plan["scores"])]
  p = plan["pilot"]
  where = p.get("workdir") or p.get("params_file")
  return (f"pilot {where} (mode {p.get('mode')}, step {p.get('step')}, seed {p.get('seed')}) vs "
          f"{plan['base']}; criterion {plan['criterion']}\n" + analysis.format_table(rows, ["score"] + columns)
          + f"\nlayers {plan['layers']}: {plan['trainable']:,} trainable ({plan['method']} x{plan['factor']}) = "
          f"{100 * plan['share_of_all_layers']:.1f}% of all-layer growth's {plan['trainable_all_layers']:,}")


def _run_pilot(spec: str, sets: Sequence[str], workdir: str) -> None:
  """Trains the pilot `spec` ('configs/x.py[:args]', `sets` 'a.b=value' overrides) into `workdir`."""
  from grow_jax import config_file
  from grow_jax.train import loop
  config = config_file.load_config(spec, sets, flag="--pilot_config", override_flag="--pilot_set")
  loop.train_and_evaluate(config, workdir)


def _define_flags(fv: flags.FlagValues) -> None:
  define = dict(flag_values=fv)
  flags.DEFINE_string("pilot", None, "pilot workdir (an ungrown SFT run; its newest readable checkpoint), or a "
                      "grow_jax params file (.safetensors; needs --base)", **define)
  flags.DEFINE_string("pilot_config", None, "train this config into --pilot first, 'configs/x.py[:args]'", **define)
  flags.DEFINE_multi_string("pilot_set", [], "'a.b=value' override of --pilot_config (repeatable)", **define)
  flags.DEFINE_string("base", None, "the pilot's starting weights (default: its config.json's init source)",
                      **define)
  flags.DEFINE_integer("step", None, "the pilot's checkpoint at this step (default: newest)", **define)
  flags.DEFINE_string("criterion", "update", f"one of {sorted(CRITERIA)}", **define)
  flags.DEFINE_integer("num_layers", None, "grow this many layers", **define)
  flags.DEFINE_float("fraction", None, "budget: share of all-layer growth's trainable count", **define)
  flags.DEFINE_string("method", "g_freeze", "the growth method whose trainable count is the budget", **define)
  flags.DEFINE_integer("factor", 2, "growth factor of the budget's count", **define)
  flags.DEFINE_string("out", None, "write the plan JSON here", **define)
  flags.DEFINE_string("compare", None, "'a.json,b.json': ranking agreement of two plans (no pilot needed)", **define)
  flags.DEFINE_string("k", "3,6", "top-k overlaps reported by --compare (besides the plans' sizes)", **define)


def main(argv: Sequence[str] | None = None) -> int:
  """python -m grow_jax.growth.plan (see the module docstring); returns the exit code."""
  args = flags.FlagValues()
  _define_flags(args)
  rest = cli.parse("python -m grow_jax.growth.plan", args, argv, positional=False)
  if isinstance(rest, int):
    return rest
  try:
    if args.compare:
      names = [s for s in args.compare.split(",") if s]
      if len(names) != 2:
        raise ConfigError(f"--compare={args.compare!r}: expected two plan files 'a.json,b.json'")
      plans = [read_plan(n, "--compare") for n in names]
      result = agreement(*plans, ks=[int(k) for k in args.k.split(",") if k])
      print(json.dumps(result, indent=1, sort_keys=True))
      if args.out:
        files.write_text(args.out, json.dumps({"plans": names, **result}, indent=1, sort_keys=True) + "\n")
      return 0
    if not args.pilot:
      raise ConfigError("--pilot: required (the pilot's workdir or params file), or --compare")
    if args.pilot_config:
      _run_pilot(args.pilot_config, args.pilot_set, args.pilot)
    fraction = args.fraction if args.fraction is not None or args.num_layers is not None else 1 / 3
    plan = plan_from_pilot(args.pilot, base=args.base, step=args.step, criterion=args.criterion,
                           num_layers=args.num_layers, fraction=None if args.num_layers else fraction,
                           method=args.method, factor=args.factor)
    print(format_plan(plan))
    print(f"--config.growth.plan={args.out}" if args.out else f"--config.growth.layers={','.join(map(str, plan['layers']))}")
    if args.out:
      write_plan(plan, args.out)
    return 0
  except GrowJaxError as e:
    errors.print_error("grow_jax.growth.plan", e)
    return 1


if __name__ == "__main__":
  sys.exit(main())
