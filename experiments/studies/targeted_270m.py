r"""Where to grow: G-Freeze on the layers a pilot ranks highest, against all layers, random layers and the
lowest-ranked layers at the same budget; plus the growth ablations.

  python -m grow_jax.study --out=experiments/results/targeted_270m \
      --study=experiments/studies/targeted_270m.py:plan=experiments/results/plans/translation_sft_lr3e-05.json,lr=1e-4
  python -m grow_jax.study --study=experiments/studies/targeted_270m.py:plan=...,lr=1e-4 --out=... --list

Args after ':' — plan (a growth-plan JSON of `python -m grow_jax.growth.plan` on a pilot SFT run of the same
model and task; required), lr (the ablations' learning rate, e.g. the forgetting study's selected G-Freeze rate;
required), attn_lr (g_freeze_attn's rate, 0 = lr), noise (G-Train's noise_scale in the noise ablation),
variant (cpu | smoke), seed (of the random layer draw), borrow (the forgetting study's results directory,
default experiments/results/forgetting_270m: its base, G-Freeze and G-Train runs at this lr are the same runs as
'base', 'g_freeze_all' and 'g_train' here, copied from there once the runner has checked their configs are
equal; '' = train them here too).

Protocol (variant 'cpu'):
  * As experiments/studies/forgetting_270m.py: Gemma 3 270M f32, offline English->French gettext_en_fr, 100
    steps of 8 x 64 packed tokens, the same validation and final test sets.
  * Layer sets, all from the plan's scores (criterion as the plan says) and its budget rule (the largest prefix
    of the ranking within a share of ALL-LAYER G-Freeze's trainable count): 'plan' = top-ranked layers at
    ~1/3 and ~1/2 of that count; 'lowest' = as many lowest-ranked layers; 'random' = as many layers drawn
    uniformly at random without replacement (numpy seed `seed`, one draw per budget, fixed for every run seed);
    'all' = every layer.
  * Ablations, on all layers: g_freeze_norms (G-Freeze + the grown layers' post-FFW norm scales); g_freeze_attn
    (attention heads grown x2 instead of the MLPs, only the new heads train); G-Freeze with growth factor 3 and
    4; G-Train without and with symmetry-breaking noise.
  * Learning rates tuned per arm, as in the forgetting study: a grid of 3 at seed 0 (layer-set arms 1e-4, 3e-4,
    1e-3: fewer trainable layers may want a larger rate; g_freeze_all: the forgetting study's G-Freeze grid
    3e-5, 1e-4, 3e-4), the point with the best VALIDATION chrF selected (its select rule), then scored once on
    the test sets and run with seeds 1 and 2 (data order; the random layer draw is fixed). The ablations run at
    the given rate (arg lr), seed 0 only: they say whether a variant is far off, not by how much.
    Runs go all-layer and plan-ranked first, then lowest and random, then the ablations. Scores: the final test
    sets of the forgetting study; paired differences against g_freeze_all.
"""

import importlib.util
import os
import types

from grow_jax.errors import ConfigError
from grow_jax.train import config as cu

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("forgetting_270m_study", os.path.join(_HERE, "forgetting_270m.py"))
forgetting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forgetting)

BUDGETS = {"third": 1 / 3, "half": 1 / 2}
ARM_LRS = {"cpu": (1e-4, 3e-4, 1e-3), "smoke": (1e-3, 3e-3)}
RULES = {"plan": "top", "lowest": "bottom", "random": "random"}


def _args(arg):
  a = cu.parse_arg(arg, plan="", lr=0.0, attn_lr=0.0, noise=0.01, variant="cpu", seed=0,
                   borrow=os.path.join(_HERE, os.pardir, "results", "forgetting_270m"))
  if a.variant not in ("cpu", "smoke"):
    raise ConfigError(f"study arg variant={a.variant!r}: expected 'cpu' or 'smoke'")
  return a


def get_config(arg=None):
  a = _args(arg)
  c = forgetting.get_config(a.variant)
  if a.variant == "smoke":
    c.model.num_layers = 6             # a third / a half of the layers: 2 / 3
  return c


def layer_sets(plan_path: str, seed: int = 0) -> dict[str, str]:
  """{'plan_third': '0,3,...', 'random_half': ..., 'lowest_third': ...} from the plan's scores."""
  from grow_jax.growth import plan as plan_lib
  plan = plan_lib.read_plan(plan_path, field="study arg plan")
  out = {}
  for budget, fraction in BUDGETS.items():
    for name, which in RULES.items():
      layers = plan_lib.layers_at(plan, fraction=fraction, which=which, seed=seed)
      out[f"{name}_{budget}"] = ",".join(map(str, layers))
  return out


def get_study(arg=None):
  a = _args(arg)
  if not a.plan or a.lr <= 0:
    raise ConfigError(f"study args {arg!r}: give plan=<growth-plan JSON> and lr=<learning rate> (e.g. "
                      "plan=experiments/results/plans/translation_sft_lr3e-05.json,lr=1e-4)")
  sets = layer_sets(a.plan, a.seed)
  g = {"train.mode": "g_freeze"}
  methods = {"g_freeze_all": dict(g)}
  methods.update({f"g_freeze_{name}": {**g, "growth.layers": layers} for name, layers in sets.items()})
  methods.update({
      "g_freeze_norms": {"train.mode": "g_freeze_norms"},
      "g_freeze_attn": {"train.mode": "g_freeze_attn"},
      "g_freeze_x3": {**g, "growth.factor": 3},
      "g_freeze_x4": {**g, "growth.factor": 4},
      "g_train": {"train.mode": "g_train", "growth.noise_scale": 0.0},
      "g_train_noise": {"train.mode": "g_train", "growth.noise_scale": a.noise},
  })
  lr = "optimizer.learning_rate"
  base = forgetting.get_study(a.variant)
  arms = ["g_freeze_all"] + [f"g_freeze_{name}" for name in sets]
  grids = {m: {lr: [(a.attn_lr or a.lr) if m == "g_freeze_attn" else a.lr]} for m in methods}
  grids["g_freeze_all"] = base["grids"].get("g_freeze") or {lr: list(ARM_LRS[a.variant])}   # smoke: no G-Freeze
  grids.update({m: {lr: list(ARM_LRS[a.variant])} for m in arms[1:]})
  translation = base["report"]["translation"]
  s = types.SimpleNamespace()
  s.name = "targeted_270m" if a.variant == "cpu" else "targeted_smoke"
  s.description = (__doc__.split("Protocol")[1].split("\n", 1)[1] + "\nLayer sets of plan " + a.plan + ": "
                   + "; ".join(f"{k} = {v}" for k, v in sets.items()) + ".\n")
  s.tasks = {"translation": {"data.task": "gettext_en_fr"}}
  s.methods = methods
  s.grids = grids
  s.seeds = [0, 1, 2] if a.variant == "cpu" else [0]
  s.seeded_methods = arms
  s.task_methods = {"translation": list(methods)}
  s.order = [["translation", ["g_freeze_all", "g_freeze_plan_third", "g_freeze_plan_half"]],
             ["translation", arms], ["translation", list(methods)]]
  if a.borrow and a.variant == "cpu":
    forgetting_study = os.path.join(_HERE, "forgetting_270m.py")
    s.borrow = {m: [forgetting_study, a.borrow, twin] for m, twin in
                (("base", "base"), ("g_freeze_all", "g_freeze"), ("g_train", "g_train"))}
  s.validation_eval = {"translation": base["validation_eval"]["translation"]}
  s.test_eval = {"translation": base["test_eval"]["translation"]}
  s.curves = None
  s.report = {"translation": {"selection": "max validation chrF (the ablations: one given rate)",
                              "reference": "g_freeze_all", "validation": translation["validation"],
                              "metrics": translation["metrics"], "pareto": translation["pareto"]}}
  return vars(s)


def select(task, method, runs, reference):
  """The forgetting study's rule, fixed before it ran: the grid point with the best VALIDATION chrF (ties: the
  smaller rate); a one-point grid (the ablations) selects that point."""
  return forgetting.select(task, method, runs, reference)


def sweep():
  return []
