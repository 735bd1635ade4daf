"""Our Gemma 3 equals Hugging Face transformers' Gemma3ForCausalLM on random models (f32: max|Δlogit| ≤ 1e-4).

Each test prints its max |Δ| (run with -s) and records it as a junit property `max_abs_delta`.
Every feature test also checks that turning the feature off changes the logits by far more than the bound,
so a sequence too short to reach the window, or a config the reference silently ignores, fails the test.
"""

import jax
import numpy as np
import pytest
import torch

from grow_jax.formats import hf_format
from grow_jax.model import transformer as model_lib
from grow_jax.model.config import abstract_params
from grow_jax.model.transformer import default_positions
from grow_jax.model.config import count_params, get_preset, param_shapes
from tests.hf_reference import hf_logits, hf_state_dict, random_hf_model

TOL = 1e-4
forward = jax.jit(model_lib.forward, static_argnums=0)  # one compile per shape instead of op-by-op dispatch
TINY = get_preset("tiny")  # 7 layers (6 local, 1 global), sliding window 8
T = 24                     # 3x the window


def _record(record_property, name, value):
  print(f"\n[parity] {name}: max|Δlogit| = {value:.3g}")
  record_property("max_abs_delta", float(value))


def _max_delta(a, b, mask=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = np.abs(a - b)
  if mask is not None:
    diff = diff[np.asarray(mask, bool)]
  return float(diff.max())


def _reference(config, seed=0):
  model = random_hf_model(config, seed=seed)
  params = hf_format.params_from_hf(config, hf_state_dict(model))
  return model, params


def _tokens(shape, vocab, seed=0):
  return np.random.default_rng(seed).integers(3, vocab, size=shape).astype(np.int32)


@pytest.fixture(scope="module")
def tiny():
  return _reference(TINY)


@pytest.mark.slow
def test_logits_match_hf_beyond_sliding_window(tiny, record_property):
  model, params = tiny
  tokens = _tokens((2, T), TINY.vocab_size)
  ours = np.asarray(forward(TINY, params, tokens))
  theirs = hf_logits(model, tokens)
  delta = _max_delta(ours, theirs)
  _record(record_property, "tiny f32, T=24 > window 8", delta)
  assert ours.shape == (2, T, TINY.vocab_size)
  assert delta <= TOL
  # The window matters at this length: without it the logits are far off.
  unwindowed = np.asarray(forward(TINY.replace(sliding_window=10 * T), params, tokens))
  assert _max_delta(unwindowed, theirs) > 100 * TOL


@pytest.mark.slow
def test_padding_left_and_right(tiny, record_property):
  model, params = tiny
  n = 16
  seqs = _tokens((3, T), TINY.vocab_size, seed=1)
  mask = np.ones((3, T), bool)
  tokens = seqs.copy()
  tokens[1, : T - n] = TINY.pad_token_id           # left padded: real tokens at the end
  mask[1, : T - n] = False
  tokens[2, n:] = TINY.pad_token_id                # right padded: real tokens at the start
  mask[2, n:] = False
  positions = np.asarray(default_positions(mask))
  ours = np.asarray(forward(TINY, params, tokens, input_mask=mask))
  theirs = hf_logits(model, tokens, attention_mask=mask, position_ids=positions)
  delta = _max_delta(ours, theirs, mask)
  _record(record_property, "tiny f32, batch with left+right padding", delta)
  assert delta <= TOL
  # A padded row equals its real tokens run alone.
  alone = np.asarray(forward(TINY, params, np.stack([tokens[1, T - n:], tokens[2, :n]])))
  assert _max_delta(ours[1, T - n:], alone[0]) <= 1e-5
  assert _max_delta(ours[2, :n], alone[1]) <= 1e-5


@pytest.mark.slow
def test_packed_segments_equal_separate_runs(tiny, record_property):
  model, params = tiny
  a, b = _tokens((1, 13), TINY.vocab_size, seed=2), _tokens((1, 11), TINY.vocab_size, seed=3)
  packed = np.concatenate([a, b], axis=1)
  segment_ids = np.array([[1] * 13 + [2] * 11])
  positions = np.array([list(range(13)) + list(range(11))])
  ours = np.asarray(forward(TINY, params, packed, positions=positions, segment_ids=segment_ids))
  # The two sequences alone, as one right-padded batch.
  batch, mask = np.zeros((2, 13), np.int32), np.zeros((2, 13), bool)
  batch[0], mask[0] = a[0], True
  batch[1, :11], mask[1, :11] = b[0], True
  alone = np.asarray(forward(TINY, params, batch, input_mask=mask))
  alone = np.concatenate([alone[0, :13], alone[1, :11]])[None]
  theirs = np.concatenate([hf_logits(model, a), hf_logits(model, b)], axis=1)
  delta = _max_delta(ours, theirs)
  _record(record_property, "tiny f32, two packed segments vs HF run separately", delta)
  assert _max_delta(ours, alone) <= 1e-5
  assert delta <= TOL
  # With one segment id for all, the second sequence would see the first: different logits.
  leaky = np.asarray(forward(TINY, params, packed, positions=positions, segment_ids=np.ones_like(segment_ids)))
  assert _max_delta(leaky[:, 13:], theirs[:, 13:]) > 100 * TOL


@pytest.mark.slow
def test_linear_rope_scaling_of_global_layers(record_property):
  config = TINY.replace(global_scale_factor=8.0)  # Gemma 3 4B style
  model, params = _reference(config, seed=4)
  assert model.config.rope_parameters["full_attention"]["rope_type"] == "linear"
  tokens = _tokens((2, T), config.vocab_size, seed=4)
  theirs = hf_logits(model, tokens)
  delta = _max_delta(forward(config, params, tokens), theirs)
  _record(record_property, "tiny f32, global RoPE linear factor 8", delta)
  assert delta <= TOL
  unscaled = forward(config.replace(global_scale_factor=1.0), params, tokens)
  assert _max_delta(unscaled, theirs) > 100 * TOL


@pytest.mark.slow
def test_final_logit_softcapping(record_property):
  config = TINY.replace(final_logit_softcap=3.0)
  model, params = _reference(config, seed=5)
  tokens = _tokens((2, T), config.vocab_size, seed=5)
  theirs = hf_logits(model, tokens)
  delta = _max_delta(forward(config, params, tokens), theirs)
  _record(record_property, "tiny f32, final logit softcap 3", delta)
  assert delta <= TOL
  assert np.abs(theirs).max() <= 3.0
  assert _max_delta(forward(config.replace(final_logit_softcap=None), params, tokens), theirs) > 100 * TOL


def _eager_attention_with_softcap(module, *args, **kwargs):
  """transformers' eager attention, given the layer's `attn_logit_softcapping` as Gemma 2 passes it."""
  from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward
  return eager_attention_forward(module, *args, softcap=module.attn_logit_softcapping, **kwargs)


@pytest.mark.slow
def test_attention_logit_softcapping(record_property):
  # transformers' Gemma3Attention stores config.attn_logit_softcapping but does not pass it to the attention
  # function (no released Gemma 3 uses it), so the reference is its eager attention with the softcap passed,
  # registered as an attention implementation: tanh(logits / cap) * cap after scaling, before the mask.
  from transformers import AttentionInterface
  from transformers.masking_utils import AttentionMaskInterface, eager_mask
  AttentionInterface.register("eager_softcap", _eager_attention_with_softcap)
  AttentionMaskInterface.register("eager_softcap", eager_mask)  # additive float masks, as for "eager"
  config = TINY.replace(attn_logit_softcap=1.5)
  model, params = _reference(config, seed=5)
  model.config._attn_implementation = "eager_softcap"
  tokens = _tokens((2, T), config.vocab_size, seed=5)
  theirs = hf_logits(model, tokens)
  delta = _max_delta(forward(config, params, tokens), theirs)
  _record(record_property, "tiny f32, attention logit softcap 1.5", delta)
  assert delta <= TOL
  assert _max_delta(forward(config.replace(attn_logit_softcap=None), params, tokens), theirs) > 100 * TOL


@pytest.mark.slow
def test_bfloat16_params_and_compute_close_to_f32_reference(tiny, record_property):
  model, params = tiny
  config = TINY.replace(param_dtype="bfloat16", dtype="bfloat16")
  params_bf16 = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), params)
  tokens = _tokens((2, T), TINY.vocab_size, seed=6)
  ours = np.asarray(forward(config, params_bf16, tokens))
  theirs = hf_logits(model, tokens)
  delta = _max_delta(ours, theirs)
  scale = float(np.abs(theirs).max())
  _record(record_property, f"tiny bf16 params+compute vs f32 HF (max|logit| {scale:.3g})", delta)
  assert ours.dtype == np.float32 and np.isfinite(ours).all()
  assert delta <= 0.05 * scale
  # Same predictions almost everywhere.
  agree = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
  assert agree >= 0.9, agree


# ---- full-size presets, shapes only ----------------------------------------------------------------------
# Parameter counts of the real checkpoints (text decoder, tied embedding).
PUBLISHED = {"gemma3_270m": 268e6, "gemma3_1b": 1.0e9, "gemma3_4b": 3.88e9}


def _hf_param_count(config) -> int:
  """Parameters of transformers' Gemma3ForCausalLM for this config, built on the meta device (no memory)."""
  import transformers
  hf = {k: v for k, v in hf_format.config_to_hf(config).items()
        if k not in ("architectures", "torch_dtype", "dtype", "model_type")}
  with torch.device("meta"):
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**hf))
  return sum(p.numel() for p in model.parameters())  # parameters() counts the tied lm_head once


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_preset_shapes(name, record_property):
  config = get_preset(name)
  abstract = abstract_params(config)
  leaves = jax.tree_util.tree_leaves_with_path(abstract)
  shapes = {"/".join(k.key for k in path): leaf.shape for path, leaf in leaves}
  assert shapes == param_shapes(config)
  total = sum(int(np.prod(s)) for s in shapes.values())
  print(f"\n[presets] {name}: {total:,} parameters")
  record_property("params", total)
  assert total == count_params(config) == _hf_param_count(config)
  assert abs(total / PUBLISHED[name] - 1) < 0.01, (total, PUBLISHED[name])
