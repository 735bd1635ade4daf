"""grow_jax: fine-tuning Gemma 3 without forgetting, by growing MLP capacity (arXiv 2603.08647).

Packages: model/ (Gemma 3 config, decoder, generation, tokenizer), formats/ (checkpoint sources, HF/GGUF,
export), growth/ (growth operators, ΔW analysis), methods/ (training methods, partitions, LoRA, L2-SP/EWC,
accounting), train/ (the trainer), evaluation/ (scoring and the evaluation registry), data/ (tasks and
batching), study/ (grids of runs, resumable, and their report). docs/design.md describes the layout and
conventions.
"""

from grow_jax.errors import CheckpointError, ConfigError, GrowJaxError
from grow_jax.model import (GenerateOutput, ModelConfig, abstract_params, forward, generate, get_preset,
                            init_params)
from grow_jax.formats import load_checkpoint, load_config, save_hf
from grow_jax.model.tokenizer import Tokenizer, load_tokenizer
from grow_jax.data import Example
from grow_jax.evaluation import (BaseReference, EvalTask, Evaluator, evaluate_all, kl_divergence, loglikelihood,
                                 perplexity, score_generation, score_multiple_choice, score_partial)
from grow_jax.growth import clone_divergence, dial, grow_attention, grow_mlp, merge_branches
from grow_jax.methods import Method, TrainMethod, setup_method, trainable_labels
from grow_jax.train.optim import make_optimizer, schedule_fn
from grow_jax.train.loop import train_and_evaluate

__all__ = ["CheckpointError", "ConfigError", "GrowJaxError", "GenerateOutput", "ModelConfig", "abstract_params",
           "forward", "generate", "get_preset", "init_params", "load_checkpoint", "load_config", "save_hf",
           "Tokenizer", "load_tokenizer", "Example", "BaseReference", "EvalTask", "Evaluator", "evaluate_all",
           "kl_divergence", "loglikelihood", "perplexity", "score_generation", "score_multiple_choice",
           "score_partial", "clone_divergence", "dial", "grow_attention", "grow_mlp", "merge_branches", "Method",
           "TrainMethod", "setup_method", "trainable_labels", "make_optimizer", "schedule_fn",
           "train_and_evaluate"]
