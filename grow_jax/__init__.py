"""grow_jax: fine-tuning Gemma 3 without forgetting, by growing MLP capacity (arXiv 2603.08647)."""

from grow_jax.model_config import ModelConfig, get_preset
from grow_jax.model import abstract_params, forward, init_params
from grow_jax.checkpoints import CheckpointError, load_checkpoint, load_config, save_hf
from grow_jax.tokenizer import Tokenizer, load_tokenizer
from grow_jax.generation import GenerateOutput, generate
from grow_jax.evaluation import (BaseReference, EvalTask, Evaluator, GenerationExample, MultipleChoice,
                                 PartialScoring, evaluate_all, kl_divergence, loglikelihood, perplexity,
                                 score_generation, score_multiple_choice, score_partial)
from grow_jax.growth import clone_divergence, dial, grow_attention, grow_mlp, merge_branches
from grow_jax.partition import trainable_labels
from grow_jax.methods import TrainMethod, setup_method
from grow_jax.optim import make_optimizer, schedule_fn
from grow_jax.train import EVALUATORS, register_evaluator, train_and_evaluate
