"""grow_jax: fine-tuning Gemma 3 without forgetting, by growing MLP capacity (arXiv 2603.08647)."""

from grow_jax.model_config import ModelConfig, get_preset
