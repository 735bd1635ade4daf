r"""The sequential study (issue 29): one base learns task A, then task B; what does each method keep of A, of B and of
the base's abilities after each stage, and what does growth give back when B's branches are switched off?

  python -m grow_jax.study --study=experiments/studies/sequential_270m.py --out=experiments/results/sequential_270m
  python -m grow_jax.study --study=experiments/studies/sequential_270m.py --out=experiments/results/sequential_270m --list

Protocol (fixed before any run of this study):
  * Model and training: the forgetting study's variant cpu (experiments/studies/forgetting_270m.py get_config:
    the real Gemma 3 270M from the PyPI GGUF Q4_K_M release dequantized to f32, 100 steps of 8 x 64 packed tokens,
    AdamW, 10 warmup steps, cosine to 0.1x, no weight decay, clip 1.0).
  * Stages: A = translation (gettext_en_fr), then B = arithmetic (arithmetic_cloze), each 100 steps. Every stage-B
    run starts from the trained params of the stage-A run of the same method and seed (the runner's `after`).
  * Methods and rates (no grids: the forgetting study's validation selections, its "protocol and rates"):
      sft           A 3e-5, B 1e-5      sequential full fine-tuning
      g_freeze      A 1e-4, B 1e-5      task branches (growth/tasks.py): A grows branches named 'translation',
                                        B grows branches named 'arithmetic' from branch 0 and trains only those
      lora_matched  A 1e-4, B 3e-5      one adapter per task at G-Freeze's trainable count: B's adapter trains on
                                        A's merged model
      ewc           A 3e-5, B 1e-5      coefficient 0.1; in stage A the Fisher is on general prose (stdlib_text),
                                        in stage B on task A's text (gettext_en_fr), anchored at A's weights
    Stage B's rate is the forgetting study's arithmetic selection where it ran (sft, g_freeze: 1e-5); LoRA and EWC
    did not run arithmetic there, so their B rate is their translation rate scaled by SFT's B/A ratio (1/3).
  * Seeds 0 and 1 for every run.
  * Evaluated after EACH stage on the same sets: validation gettext_en_fr (150 pairs, chrF), arithmetic_cloze
    (200, accuracy), capitals_gen (58 countries, exact match); test (each run once): gettext_en_fr test (300,
    chrF), arithmetic_cloze test (400), capitals_gen test (159), stdlib_text test (100 paragraphs: perplexity and
    KL(base || model)). The untrained model is scored on both.
  * B's branches off. For G-Freeze, the stage-B model with B's branches switched off is the stage-A model bit for
    bit (tests/test_task_training.py proves it on the trainer's own runs), so the stage-A record IS "B off"; the
    same holds for LoRA with B's adapter removed (B's adapter trains on A's merged model). SFT and EWC have no
    such switch.
  * Analysis (the table and figure of the README section): per method, A's score (test chrF) after A and after
    B, B's score (test accuracy) after B, and the base probes (capitals_gen, KL) after each stage, mean and
    min..max over the two seeds; forgetting of A = chrF after A - chrF after B, paired per seed. A difference
    between methods smaller than the seed spread is "not resolved". The figure: A's score against B's score
    after stage B, one point per method and seed, with each method's stage-A point (B off) joined to it.

Budget: 16 training runs of 100 steps (~13-16 min each on this machine, from the forgetting study's records) plus
validation (~3 min) and test (~8 min) each, and 2 base evaluations: ~7.5 CPU-hours. Run after the frontier study.
"""

import importlib.util
import os
import types

from grow_jax.errors import ConfigError
from grow_jax.study.runs import variant as study_variant

_FORGETTING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forgetting_270m.py")
_spec = importlib.util.spec_from_file_location("forgetting_270m_base", _FORGETTING)
forgetting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forgetting)

VARIANTS = ("cpu", "smoke")
A, B = "translation", "arithmetic_after"
RATES = {"sft": (3e-5, 1e-5), "g_freeze": (1e-4, 1e-5), "lora_matched": (1e-4, 3e-5), "ewc": (3e-5, 1e-5)}
NEW_TASK = {A: "gettext_en_fr:validation/chrf", B: "arithmetic_cloze:validation/acc"}


def get_config(arg=None):
  """The forgetting study's config of the same variant; the tokenizer named (stage B starts from a params file)."""
  c = forgetting.get_config(study_variant(arg, VARIANTS))
  c.data.tokenizer = "gemma3-270m"
  return c


def get_study(arg=None):
  variant = study_variant(arg, VARIANTS)
  lr = "optimizer.learning_rate"
  s = types.SimpleNamespace()
  s.name = {"cpu": "sequential_270m", "smoke": "sequential_smoke"}[variant]
  s.description = __doc__.split("Protocol")[1].split("\n", 1)[1] if variant != "smoke" else "A smoke test."
  s.tasks = {A: {"data.task": "gettext_en_fr"}, B: {"data.task": "arithmetic_cloze"}}
  s.after = {B: A}
  s.methods = {"sft": {"train.mode": "sft"}, "g_freeze": {"train.mode": "g_freeze"},
               "lora_matched": {"train.mode": "lora", "train.match_params_of": "g_freeze"},
               "ewc": {"train.mode": "ewc", "train.ewc_coef": 0.1}}
  s.grids = {m: {} for m in s.methods}                         # one point each: the rates are per stage, below
  s.task_method_overrides = {task: {m: {lr: RATES[m][stage]} for m in s.methods} for stage, task in enumerate((A, B))}
  s.task_method_overrides[A]["g_freeze"]["growth.task"] = "translation"
  s.task_method_overrides[B]["g_freeze"]["growth.task"] = "arithmetic"
  s.task_method_overrides[A]["ewc"]["train.reference_task"] = "stdlib_text"
  s.task_method_overrides[B]["ewc"]["train.reference_task"] = "gettext_en_fr"
  s.seeds = [0, 1]
  s.sweep_seeds = 2
  s.seeded_methods = list(s.methods)
  validation = [["gettext_en_fr:validation", 150], ["arithmetic_cloze:validation", 200],
                ["capitals_gen:validation", 58]]
  test = [["gettext_en_fr:test", 300], ["arithmetic_cloze:test", 400], ["capitals_gen:test", 159],
          ["stdlib_text:test", 100]]
  s.validation_eval = {A: validation, B: validation}
  s.test_eval = {A: test, B: test}
  s.order = [[A, list(s.methods)], [B, list(s.methods)]]
  metrics = [["A chrF", "gettext_en_fr:test/chrf"], ["B acc", "arithmetic_cloze:test/acc"],
             ["capitals_gen (EM)", "capitals_gen:test/exact_match_norm"], ["KL(base‖model)", "stdlib_text:test/kl"]]
  report = {"selection": "none: one rate per method and stage (the forgetting study's)",
            "validation": [["val A chrF", NEW_TASK[A]], ["val B acc", NEW_TASK[B]],
                           ["val capitals_gen (EM)", "capitals_gen:validation/exact_match_norm"]],
            "metrics": metrics}
  s.report = {A: dict(report), B: dict(report)}
  s.report[B]["stages"] = {"first": metrics[0], "second": metrics[1], "probes": metrics[2:]}   # grow_jax/study/stages.py
  if variant == "smoke":                   # a random tiny Gemma with the real vocabulary: seconds per run
    s.methods = {m: s.methods[m] for m in ("sft", "g_freeze")}
    s.grids = {m: {} for m in s.methods}
    s.task_method_overrides = {t: {m: o for m, o in ms.items() if m in s.methods}
                               for t, ms in s.task_method_overrides.items()}
    for task in (A, B):
      s.tasks[task]["total_steps"] = 2
    s.seeds, s.sweep_seeds, s.seeded_methods = [0], 1, list(s.methods)
    small = [["gettext_en_fr:validation", 2], ["arithmetic_cloze:validation", 2]]
    s.validation_eval = {A: small, B: small}
    s.test_eval = {A: [["capitals_gen:test", 2]], B: [["capitals_gen:test", 2]]}
    s.order = [[A, list(s.methods)], [B, list(s.methods)]]
    s.report = {t: {"selection": "none", "metrics": [["capitals_gen (EM)", "capitals_gen:test/exact_match_norm"]]}
                for t in (A, B)}
    s.report[B]["stages"] = {"first": ["val A chrF", "gettext_en_fr:validation/chrf"],
                             "second": ["val B acc", "arithmetic_cloze:validation/acc"],
                             "probes": [["capitals_gen (EM)", "capitals_gen:test/exact_match_norm"]]}
  return vars(s)


def select(task, method, runs, reference):
  """One point per method (no grid): its first seed's run."""
  if not runs:
    raise ConfigError(f"select: no runs of {task}/{method}")
  return min(runs, key=lambda r: r["seed"])
