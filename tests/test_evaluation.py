"""Specification of the evaluators: scores checked by hand against `forward` logits and sacrebleu.

Two small models: `lively` (random tiny Gemma with weights scaled so attention matters) and `bigram`
(every block's output projections zeroed, so the logits at a position depend on that token alone:
logits = rmsnorm(E[x]) E^T, which prefers repeating the input token: a model whose preferences we know).
"""

import json
import math

import jax
import numpy as np
import pytest
import sacrebleu

from grow_jax.data import Example
from grow_jax.evaluation import corpus as ppl, evaluator as ev_lib, generative, scoring
from grow_jax.evaluation import text_metrics as metrics_text
from grow_jax.errors import ConfigError
from grow_jax.evaluate import ByteTokenizer, run
from grow_jax.model.transformer import forward, init_params, unembed
from grow_jax.model.config import get_preset


def mc(prompt, choices, gold):
  """A multiple-choice Example whose choices follow the prompt directly (the bigram tests need no space)."""
  return Example(id=prompt, prompt=prompt, target=choices[gold], choices=tuple(choices), gold=gold,
                 target_delimiter="")


def partial(contexts, continuation, gold):
  return Example(id=contexts[0], prompt=contexts[gold], target=continuation, choices=tuple(contexts), gold=gold,
                 contexts=tuple(contexts), continuation=continuation, target_delimiter="")


def gen(prompt, references):
  references = [references] if isinstance(references, str) else references
  return Example(id=prompt, prompt=prompt, target=references[0], aliases=tuple(references[1:]))

CONFIG = get_preset("tiny")
TOK = ByteTokenizer()
KW = dict(batch_size=4, max_len=64)


@pytest.fixture(scope="module")
def random_params():
  return init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def lively(random_params):
  """Embedding of std 0.125, large block weights: diverse predictions that depend on context."""
  embedding_scale = 0.125 / float(np.std(random_params["embedder"]["input_embedding"]))

  def scale(path, x):
    name = jax.tree_util.keystr(path)
    return x * embedding_scale if "embedding" in name else x if "scale" in name else x * 5

  return jax.tree_util.tree_map_with_path(scale, random_params)


@pytest.fixture(scope="module")
def bigram(random_params):
  """Every block's output projection zeroed: logits at a position depend on its token alone."""

  def zero_outputs(path, x):
    name = jax.tree_util.keystr(path)
    return x * 0 if ("attn_vec_einsum" in name or "'linear'" in name) else x

  return jax.tree_util.tree_map_with_path(zero_outputs, random_params)


def bigram_logprobs(params, token):
  """Hand computation of the bigram model's next-token log-probs after `token` (numpy, float64)."""
  E = np.asarray(params["embedder"]["input_embedding"], np.float64)
  x = E[token] * math.sqrt(CONFIG.embed_dim)
  h = x / np.sqrt(np.mean(x * x) + CONFIG.rms_norm_eps)
  logits = E @ h
  return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()


_FORWARD = jax.jit(lambda params, tokens, mask: forward(CONFIG, params, tokens, input_mask=mask))


def forward_logprobs(params, ids, width=64):
  """Log-probs (len(ids), V) from the full `forward` (right-padded to one compiled width)."""
  tokens, mask = np.zeros((1, width), np.int32), np.arange(width)[None] < len(ids)
  tokens[0, :len(ids)] = ids
  logits = np.asarray(_FORWARD(params, tokens, mask)[0, :len(ids)], np.float64)
  return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)


# ---- log-likelihood scoring --------------------------------------------------------------------------
@pytest.mark.slow
def test_unembed_of_hidden_states_equals_forward_logits(lively):
  ids = np.asarray([[2, 40, 41, 300, 7] + [0] * 59], np.int32)
  mask = np.arange(64)[None] < 5
  hidden = ppl._final_hidden(lively, ids, mask, np.arange(5, dtype=np.int32)[None], config=CONFIG)
  np.testing.assert_allclose(unembed(lively["embedder"]["input_embedding"], hidden),
                             _FORWARD(lively, ids, mask)[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_continuation_logprob_is_the_sum_of_forward_logprobs(lively):
  context, continuation = [2, 71, 72, 73, 300, 12], [44, 45, 46]
  [ll] = scoring.loglikelihood_tokens(CONFIG, lively, [(context, continuation)], **KW)
  lp = forward_logprobs(lively, context + continuation)
  expected = sum(lp[len(context) - 1 + j, t] for j, t in enumerate(continuation))
  assert ll.num_tokens == 3
  assert ll.logprob == pytest.approx(expected, abs=1e-4)
  greedy = all(lp[len(context) - 1 + j].argmax() == t for j, t in enumerate(continuation))
  assert ll.is_greedy == greedy


def test_long_requests_lose_context_tokens_on_the_left(lively):
  context, continuation = [2] + list(range(10, 30)), [50, 51]
  [ll] = scoring.loglikelihood_tokens(CONFIG, lively, [(context, continuation)], max_len=8, batch_size=4)
  kept = (context + continuation)[-9:]
  lp = forward_logprobs(lively, kept[:-1])
  assert ll.logprob == pytest.approx(lp[-2, 50] + lp[-1, 51], abs=1e-4)


def test_string_requests_follow_lm_eval_encode_pair():
  # Trailing context spaces move into the continuation; BOS starts the context.
  assert scoring.encode_pair(TOK, "Q: ", "A") == ([2] + TOK.encode("Q:"), TOK.encode(" A"))
  assert scoring.encode_pair(TOK, "", "hi") == ([2], TOK.encode("hi"))


def test_bigram_scores_equal_the_hand_computed_table(bigram):
  ll = scoring.loglikelihood(CONFIG, bigram, TOK, [("The answer is b", "bbx")], **KW)[0]
  b, x = TOK.encode("bx")
  expected = 2 * bigram_logprobs(bigram, b)[b] + bigram_logprobs(bigram, b)[x]
  assert ll.logprob == pytest.approx(expected, abs=1e-4)


def test_multiple_choice_picks_what_the_model_prefers(bigram):
  # The bigram model repeats its input token, so after "... k" it prefers the choice "kkk".
  examples = [mc("Pick: k", ["kkk", "abc", "xyz"], 0),
              mc("Pick: q", ["wer", "qqq", "zzz"], 1),
              mc("Pick: z", ["zzz", "abc", "qrs"], 2)]   # gold is not what it prefers
  result = scoring.score_multiple_choice(CONFIG, bigram, TOK, examples, target_delimiter="", **KW)
  assert result["acc"] == pytest.approx(2 / 3)
  assert result["num_examples"] == 3


def test_acc_norm_divides_by_the_choice_length_in_characters():
  example = mc("ctx", ["ab", "abcdefgh"], 1)
  # sums: -3 > -5 picks choice 0; per character: -3/2 < -5/8 picks choice 1.
  result = scoring.multiple_choice_metrics([example], [-3.0, -5.0])
  assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)
  # Bytes differ from characters for non-ASCII text: "éé" is 2 characters, 4 bytes.
  example = mc("ctx", ["éé", "abc"], 1)
  assert scoring.multiple_choice_metrics([example], [-2.2, -3.0])["acc_norm"] == 1.0           # -1.1 < -1.0
  assert scoring.multiple_choice_metrics([example], [-2.2, -3.0], "bytes")["acc_norm"] == 0.0  # -0.55 > -1.0


def test_partial_scoring_scores_the_shared_continuation_after_each_context(bigram):
  # WinoGrande: the option that makes the continuation likely wins.
  example = partial(["He gave it to m", "He gave it to y"], "yyy", 1)
  assert scoring.partial_scoring_requests([example]) == [("He gave it to m", "yyy"), ("He gave it to y", "yyy")]
  assert scoring.score_partial(CONFIG, bigram, TOK, [example], target_delimiter="", **KW)["acc"] == 1.0


@pytest.mark.slow
def test_a_score_does_not_depend_on_its_batch(lively):
  short = ([2, 30, 31, 32], [33, 34])
  longer = [([2] + list(range(40, 80)), [81, 82]), ([2] + list(range(100, 150)), [151]),
            ([2, 9, 9], [10, 11, 12])]
  alone = scoring.loglikelihood_tokens(CONFIG, lively, [short], batch_size=1, max_len=64)[0]
  batched = scoring.loglikelihood_tokens(CONFIG, lively, longer + [short], batch_size=4, max_len=64)[-1]
  assert batched.logprob == pytest.approx(alone.logprob, abs=1e-5)


def test_batches_unembed_only_the_scored_positions():
  rows = [scoring.request_row([2] + list(range(10, 50)), [7, 8], max_len=64), scoring.request_row([2, 5], [6], max_len=64)]
  [batch] = scoring.make_batches(rows, batch_size=4, bucket=32, chunk=64)
  assert batch.inputs.shape == (4, 64) and batch.targets.shape == (4, 8)
  np.testing.assert_array_equal(batch.score_positions[0, :2], [40, 41])
  np.testing.assert_array_equal(batch.targets[0, :2], [7, 8])
  np.testing.assert_array_equal(batch.score_mask.sum(1), [2, 1, 0, 0])
  np.testing.assert_array_equal(batch.index, [0, 1, -1, -1])


def test_bad_examples_are_named():
  with pytest.raises(ValueError, match="example 1 has no field 'choices'"):
    scoring.multiple_choice_requests([mc("a", ["b", "c"], 0), {"prompt": "a", "gold": 0}])
  with pytest.raises(ValueError, match="gold=2"):
    scoring.multiple_choice_requests([{"prompt": "a", "choices": ["b", "c"], "gold": 2}])


# ---- generative scoring ------------------------------------------------------------------------------
def test_text_metrics_equal_sacrebleu():
  hyps = ["the cat sat on the mat", "a dog barked at night", "hello there"]
  refs = ["the cat is on the mat", "the dog barked all night", "hello there"]
  assert metrics_text.corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs]).score
  assert metrics_text.corpus_chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, [refs]).score
  two = [[r, r.upper()] for r in refs]
  assert metrics_text.corpus_bleu(hyps, two) == sacrebleu.corpus_bleu(hyps, [refs, [r.upper() for r in refs]]).score
  assert metrics_text.exact_match(hyps, [["x", "Hello There"], "y", "hello there "]) == 1 / 3
  assert metrics_text.exact_match(["Hello there"], ["hello there"], ignore_case=True) == 1.0


def test_postprocess_cuts_at_the_first_stop_and_strips():
  assert metrics_text.postprocess("  Paris\nQuestion: ...") == "Paris"
  assert metrics_text.postprocess("\n Paris.</s>", stop=("\n", "</s>")) == "Paris."
  assert metrics_text.postprocess("a b", stop=()) == "a b"


@pytest.mark.slow
def test_generation_scoring_decodes_greedily_and_compares(bigram):
  # The bigram model repeats the prompt's last character.
  examples = [gen("Say k", "kkkk"), gen("Say q", ["no", "qqqq"]),
              gen("Say z", "zzz")]
  texts = generative.generate_texts(CONFIG, bigram, TOK, [e.prompt for e in examples], max_new_tokens=4, batch_size=4)
  assert texts == ["kkkk", "qqqq", "zzzz"]
  result = generative.score_generation(CONFIG, bigram, TOK, examples, metrics=("exact_match", "bleu", "chrf"),
                               max_new_tokens=4, batch_size=4)
  assert result["exact_match"] == pytest.approx(2 / 3)
  assert result["chrf"] == sacrebleu.corpus_chrf(texts, [["kkkk", "no", "zzz"], [None, "qqqq", None]]).score
  assert result["chrf"] > sacrebleu.corpus_chrf(texts, [["kkkk", "no", "zzz"]]).score
  with pytest.raises(ValueError, match="bleu"):
    generative.score_generation(CONFIG, bigram, TOK, examples, metrics=("rouge",))


# ---- perplexity and KL -------------------------------------------------------------------------------
TEXTS = ["Hello world.", "A longer text that does not fit in one window of eight tokens."]


def test_rolling_windows_predict_every_token_once():
  rows = ppl.rolling_rows([2, 10, 11, 12, 13, 14], 2)
  assert rows == [scoring.Row([2, 10], [10, 11]), scoring.Row([11, 12], [12, 13]), scoring.Row([13], [14])]


def test_perplexity_is_exp_of_the_mean_nll_by_hand(lively):
  result = ppl.perplexity(CONFIG, lively, TOK, TEXTS, max_len=8, batch_size=4)
  nll, count = 0.0, 0
  for text in TEXTS:
    ids = [2] + TOK.encode(text)
    for a in range(0, len(ids) - 1, 8):           # disjoint windows of 8 predictions
      window = ids[a:a + 9]
      lp = forward_logprobs(lively, window[:-1])
      nll -= sum(lp[j, t] for j, t in enumerate(window[1:]))
      count += len(window) - 1
  assert result["num_tokens"] == count == sum(len(t.encode()) for t in TEXTS)
  assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
  assert result["bits_per_byte"] == pytest.approx(nll / count / math.log(2), rel=1e-5)


@pytest.mark.slow
def test_kl_is_zero_against_itself_and_matches_a_hand_computation(lively, tmp_path, monkeypatch):
  perturbed = jax.tree.map(lambda x: x * 1.05, lively)
  reference = ppl.BaseReference.from_texts(CONFIG, lively, TOK, TEXTS[:1], max_len=16, batch_size=4,
                                          cache_dir=str(tmp_path), base_id="lively")
  assert ppl.kl_divergence(CONFIG, lively, reference)["kl"] == pytest.approx(0.0, abs=1e-6)
  kl = ppl.kl_divergence(CONFIG, perturbed, reference)
  ids = [2] + TOK.encode(TEXTS[0])
  p, q = forward_logprobs(lively, ids[:-1]), forward_logprobs(perturbed, ids[:-1])
  expected = np.mean(np.sum(np.exp(p) * (p - q), axis=-1))
  assert kl["kl"] > 1e-3
  assert kl["kl"] == pytest.approx(expected, rel=1e-4)
  assert kl["num_tokens"] == len(ids) - 1
  # The same pass scores the model's perplexity: equal to the perplexity evaluator's on the same tokens.
  alone = ppl.perplexity(CONFIG, perturbed, TOK, TEXTS[:1], max_len=16, batch_size=4)
  assert kl["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-6)
  assert kl["bits_per_byte"] == pytest.approx(alone["bits_per_byte"], rel=1e-6)
  # The base side was stored on disk and is read back, not recomputed.
  [stored] = list(tmp_path.glob("kl_base_*.npz"))
  monkeypatch.setattr(ppl, "_final_hidden", None)     # recomputing would now fail
  again = ppl.BaseReference.from_texts(CONFIG, lively, TOK, TEXTS[:1], max_len=16, batch_size=4,
                                      cache_dir=str(tmp_path), base_id="lively")
  assert again.key == reference.key and stored.exists()
  assert ppl.kl_divergence(CONFIG, perturbed, again)["kl"] == pytest.approx(kl["kl"], rel=1e-6)


def test_kl_cache_key_follows_the_base_params(lively):
  a = ppl.BaseReference.from_texts(CONFIG, lively, TOK, ["abc"], max_len=16, batch_size=4)
  b = ppl.BaseReference.from_texts(CONFIG, jax.tree.map(lambda x: x * 2, lively), TOK, ["abc"], max_len=16,
                                  batch_size=4)
  assert a.key != b.key


# ---- tasks, evaluate_all and the CLI -----------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_all_writes_a_dict_of_floats_per_task(bigram, lively, tmp_path):
  tasks = [ev_lib.EvalTask("mc", "multiple_choice", [mc("Pick: k", ["kkk", "abc"], 0)],
                       {"target_delimiter": ""}),
           ev_lib.EvalTask("wino", "partial", [partial(["to m", "to y"], "yyy", 1)],
                       {"target_delimiter": ""}),
           ev_lib.EvalTask("gen", "generation", [gen("Say k", "kkkk")],
                       {"max_new_tokens": 4, "metrics": ["exact_match", "chrf"]}),
           ev_lib.EvalTask("ppl", "perplexity", TEXTS[:1]),
           ev_lib.EvalTask("kl", "kl", TEXTS[:1])]
  out = tmp_path / "results.json"
  results = ev_lib.evaluate_all(CONFIG, bigram, TOK, tasks, out=str(out), base=(CONFIG, lively), **KW)
  assert json.loads(out.read_text()) == results
  assert set(results) == {"mc", "wino", "gen", "ppl", "kl"}
  assert all(isinstance(v, float) for metrics in results.values() for v in metrics.values())
  assert results["mc"]["acc"] == results["wino"]["acc"] == results["gen"]["exact_match"] == 1.0
  assert results["kl"]["kl"] > 0
  # The trainer's shape: params -> {metric: value}.
  evaluator = ev_lib.Evaluator(TOK, tasks[:2], **KW)
  assert evaluator.eval_fn(CONFIG, "mc")(bigram) == results["mc"]
  assert evaluator.eval_fn(CONFIG)(bigram) == {"mc/acc": 1.0, "mc/acc_norm": 1.0, "mc/num_examples": 1.0,
                                                "wino/acc": 1.0, "wino/num_examples": 1.0}
  print(ev_lib.format_table(results))


def test_task_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown option.*'max_new_tokens'"):
    ev_lib.EvalTask("t", "multiple_choice", [mc("a", ["b", "c"], 0)], {"max_new_tokens": 3})
  with pytest.raises(ValueError, match="kind='mcq'"):
    ev_lib.EvalTask("t", "mcq", ["x"])
  with pytest.raises(ValueError, match="need base"):
    ev_lib.Evaluator(TOK, [ev_lib.EvalTask("k", "kl", ["x"])])


def test_cli_rejects_an_unknown_task_and_lists_the_known_ones():
  with pytest.raises(ConfigError, match=r"--tasks=\['smoke_ppl', 'nope'\]: unknown \['nope'\].*'smoke_ppl'"):
    run("random:tiny", ["smoke_ppl", "nope"], tokenizer="bytes")


def test_cli_run_on_a_random_model_writes_json(tmp_path):
  out = tmp_path / "r.json"
  results = run("random:tiny", ["smoke_capitals", "smoke_ppl"], out=str(out), tokenizer="bytes", limit=2,
                batch_size=4, max_len=64)
  assert json.loads(out.read_text()) == results
  assert results["smoke_capitals"]["num_examples"] == 2.0
  assert results["smoke_ppl"]["perplexity"] > 1
