"""grow_jax: fine-tuning Gemma 3 without forgetting, by growing MLP capacity (arXiv 2603.08647).

Packages: model/ (Gemma 3 config, decoder, generation, tokenizer), formats/ (checkpoint sources, HF/GGUF,
export), growth/ (growth operators, ΔW analysis, growth plans), methods/ (training methods, partitions, LoRA,
L2-SP/EWC, accounting), data/ (tasks and batching), evaluation/ (scoring and the evaluation registry), train/
(the trainer), study/ (grids of runs, resumable, and their report). docs/design.md describes the layout and
conventions.

The names below are the curated surface, loaded lazily (PEP 562): `import grow_jax` imports nothing heavy, and
`grow_jax.forward` imports the model only when first used. The extension points are here too: a method
(`register_method` on a `Method` subclass), a data task (`register_task` on a factory returning a `Task`) and an
evaluation (`register_evaluation` on a factory `(EvalContext, split) -> eval_fn`). Scoring internals
(log-likelihoods, perplexity, KL) stay in grow_jax.evaluation.
"""

import importlib

# name -> (module, attribute)
_SURFACE = {
    # errors
    "GrowJaxError": ("grow_jax.errors", "GrowJaxError"),
    "ConfigError": ("grow_jax.errors", "ConfigError"),
    "CheckpointError": ("grow_jax.errors", "CheckpointError"),
    # the model
    "ModelConfig": ("grow_jax.model.config", "ModelConfig"),
    "get_preset": ("grow_jax.model.config", "get_preset"),
    "abstract_params": ("grow_jax.model.config", "abstract_params"),
    "init_params": ("grow_jax.model", "init_params"),
    "forward": ("grow_jax.model", "forward"),
    "generate": ("grow_jax.model", "generate"),
    "GenerateOutput": ("grow_jax.model", "GenerateOutput"),
    "Tokenizer": ("grow_jax.model.tokenizer", "Tokenizer"),
    "load_tokenizer": ("grow_jax.model.tokenizer", "load_tokenizer"),
    # checkpoints
    "load_checkpoint": ("grow_jax.formats", "load_checkpoint"),
    "load_config": ("grow_jax.formats", "load_config"),
    "save_hf": ("grow_jax.formats", "save_hf"),
    # growth
    "grow_mlp": ("grow_jax.growth", "grow_mlp"),
    "grow_attention": ("grow_jax.growth", "grow_attention"),
    "merge_branches": ("grow_jax.growth", "merge_branches"),
    "dial": ("grow_jax.growth", "dial"),
    "clone_divergence": ("grow_jax.growth", "clone_divergence"),
    # methods, and adding one
    "Method": ("grow_jax.methods.base", "Method"),
    "TrainMethod": ("grow_jax.methods.base", "TrainMethod"),
    "setup_method": ("grow_jax.methods.base", "setup_method"),
    "trainable_labels": ("grow_jax.methods", "trainable_labels"),
    "register_method": ("grow_jax.methods.base", "register"),
    # data tasks, and adding one
    "Task": ("grow_jax.data.tasks", "Task"),
    "Example": ("grow_jax.data.tasks", "Example"),
    "get_task": ("grow_jax.data.tasks", "get_task"),
    "list_tasks": ("grow_jax.data.registry", "list_tasks"),
    "register_task": ("grow_jax.data.registry", "register_task"),
    # evaluations, and adding one
    "EvalTask": ("grow_jax.evaluation.evaluator", "EvalTask"),
    "Evaluator": ("grow_jax.evaluation.evaluator", "Evaluator"),
    "evaluate_all": ("grow_jax.evaluation.evaluator", "evaluate_all"),
    "EvalContext": ("grow_jax.evaluation.registry", "EvalContext"),
    "register_evaluation": ("grow_jax.evaluation.registry", "register"),
    # training
    "make_optimizer": ("grow_jax.train.optim", "make_optimizer"),
    "schedule_fn": ("grow_jax.train.optim", "schedule_fn"),
    "train_and_evaluate": ("grow_jax.train.loop", "train_and_evaluate"),
}

__all__ = list(_SURFACE)


def __getattr__(name: str):
  """A surface name, imported on first use; or a submodule (`grow_jax.tables`) not imported yet."""
  if name in _SURFACE:
    module, attribute = _SURFACE[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value
  if not name.startswith("_"):
    try:
      return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
