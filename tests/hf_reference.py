"""Helpers to build the reference: a random Hugging Face Gemma3ForCausalLM and its logits (PyTorch, CPU)."""

import numpy as np
import torch
import transformers

from grow_jax.formats import hf_format
from grow_jax.model.config import ModelConfig


def random_hf_model(config: ModelConfig, seed: int = 0) -> transformers.Gemma3ForCausalLM:
  """An HF Gemma 3 with the config's architecture and random weights (norm weights random too)."""
  hf_config = transformers.Gemma3TextConfig(**{k: v for k, v in hf_format.config_to_hf(config).items()
                                               if k not in ("architectures", "torch_dtype", "model_type")})
  hf_config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.Gemma3ForCausalLM(hf_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or "layernorm" in name:
        p.copy_(torch.randn_like(p) * 0.3)
      else:
        p.copy_(torch.randn_like(p) * 0.05)
  return model


def hf_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def hf_logits(model, tokens, attention_mask=None, position_ids=None) -> np.ndarray:
  with torch.no_grad():
    kwargs = {"input_ids": torch.tensor(np.asarray(tokens), dtype=torch.long)}
    if attention_mask is not None:
      kwargs["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is not None:
      kwargs["position_ids"] = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    return model(**kwargs).logits.float().numpy()
