"""The model: Gemma 3's configuration, the Flax decoder, KV-cache generation, and the tokenizer.

    config.py       ModelConfig (frozen, hashable), presets, the parameter layout (param_shapes)
    transformer.py  the decoder (Flax linen) as a pure function forward(config, params, tokens)
    generation.py   batched jit-compiled decoding with a KV cache
    tokenizer.py    the model's own tokenizer (GGUF metadata or an HF directory), cached as tokenizer.json
"""

from grow_jax.model.config import ModelConfig, abstract_params, get_preset, param_shapes
from grow_jax.model.generation import GenerateOutput, generate
from grow_jax.model.transformer import forward, init_params, unembed

__all__ = ["ModelConfig", "abstract_params", "get_preset", "param_shapes", "GenerateOutput", "generate",
           "forward", "init_params", "unembed"]
