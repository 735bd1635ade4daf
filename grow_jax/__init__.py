"""grow_jax: fine-tuning Gemma 3 without forgetting, by growing MLP capacity (arXiv 2603.08647)."""

from grow_jax.model.config import ModelConfig, get_preset
from grow_jax.model.transformer import abstract_params, forward, init_params
from grow_jax.formats.sources import CheckpointError, load_checkpoint, load_config, save_hf
from grow_jax.model.tokenizer import Tokenizer, load_tokenizer
from grow_jax.model.generation import GenerateOutput, generate
from grow_jax.evaluation.scoring import (BaseReference, EvalTask, Evaluator, GenerationExample, MultipleChoice,
                                 PartialScoring, evaluate_all, kl_divergence, loglikelihood, perplexity,
                                 score_generation, score_multiple_choice, score_partial)
from grow_jax.growth.operators import clone_divergence, dial, grow_attention, grow_mlp, merge_branches
from grow_jax.methods.partition import trainable_labels
from grow_jax.methods.registry import TrainMethod, setup_method
from grow_jax.train.optim import make_optimizer, schedule_fn
from grow_jax.train.loop import EVALUATORS, register_evaluator, train_and_evaluate
