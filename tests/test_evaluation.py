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

from grow_jax.evaluation import scoring as ev
from grow_jax.evaluation import text_metrics as metrics_text
from grow_jax.evaluate import ByteTokenizer, build_tasks, run
from grow_jax.model.transformer import forward, init_params
from grow_jax.model.config import get_preset

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
def test_unembed_of_hidden_states_equals_forward_logits(lively):
  ids = np.asarray([[2, 40, 41, 300, 7] + [0] * 59], np.int32)
  mask = np.arange(64)[None] < 5
  hidden = ev._final_hidden(lively, ids, mask, np.arange(5, dtype=np.int32)[None], config=CONFIG)
  np.testing.assert_allclose(ev.unembed(lively["embedder"]["input_embedding"], hidden),
                             _FORWARD(lively, ids, mask)[:, :5], rtol=1e-5, atol=1e-5)


def test_continuation_logprob_is_the_sum_of_forward_logprobs(lively):
  context, continuation = [2, 71, 72, 73, 300, 12], [44, 45, 46]
  [ll] = ev.loglikelihood_tokens(CONFIG, lively, [(context, continuation)], **KW)
  lp = forward_logprobs(lively, context + continuation)
  expected = sum(lp[len(context) - 1 + j, t] for j, t in enumerate(continuation))
  assert ll.num_tokens == 3
  assert ll.logprob == pytest.approx(expected, abs=1e-4)
  greedy = all(lp[len(context) - 1 + j].argmax() == t for j, t in enumerate(continuation))
  assert ll.is_greedy == greedy


def test_long_requests_lose_context_tokens_on_the_left(lively):
  context, continuation = [2] + list(range(10, 30)), [50, 51]
  [ll] = ev.loglikelihood_tokens(CONFIG, lively, [(context, continuation)], max_len=8, batch_size=4)
  kept = (context + continuation)[-9:]
  lp = forward_logprobs(lively, kept[:-1])
  assert ll.logprob == pytest.approx(lp[-2, 50] + lp[-1, 51], abs=1e-4)


def test_string_requests_follow_lm_eval_encode_pair():
  # Trailing context spaces move into the continuation; BOS starts the context.
  assert ev.encode_pair(TOK, "Q: ", "A") == ([2] + TOK.encode("Q:"), TOK.encode(" A"))
  assert ev.encode_pair(TOK, "", "hi") == ([2], TOK.encode("hi"))


def test_bigram_scores_equal_the_hand_computed_table(bigram):
  ll = ev.loglikelihood(CONFIG, bigram, TOK, [("The answer is b", "bbx")], **KW)[0]
  b, x = TOK.encode("bx")
  expected = 2 * bigram_logprobs(bigram, b)[b] + bigram_logprobs(bigram, b)[x]
  assert ll.logprob == pytest.approx(expected, abs=1e-4)


def test_multiple_choice_picks_what_the_model_prefers(bigram):
  # The bigram model repeats its input token, so after "... k" it prefers the choice "kkk".
  examples = [ev.MultipleChoice("Pick: k", ["kkk", "abc", "xyz"], 0),
              ev.MultipleChoice("Pick: q", ["wer", "qqq", "zzz"], 1),
              ev.MultipleChoice("Pick: z", ["zzz", "abc", "qrs"], 2)]   # gold is not what it prefers
  result = ev.score_multiple_choice(CONFIG, bigram, TOK, examples, target_delimiter="", **KW)
  assert result["acc"] == pytest.approx(2 / 3)
  assert result["num_examples"] == 3


def test_acc_norm_divides_by_the_choice_length_in_characters():
  example = ev.MultipleChoice("ctx", ["ab", "abcdefgh"], 1)
  # sums: -3 > -5 picks choice 0; per character: -3/2 < -5/8 picks choice 1.
  result = ev.multiple_choice_metrics([example], [-3.0, -5.0])
  assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)
  # Bytes differ from characters for non-ASCII text: "éé" is 2 characters, 4 bytes.
  example = ev.MultipleChoice("ctx", ["éé", "abc"], 1)
  assert ev.multiple_choice_metrics([example], [-2.2, -3.0])["acc_norm"] == 1.0           # -1.1 < -1.0
  assert ev.multiple_choice_metrics([example], [-2.2, -3.0], "bytes")["acc_norm"] == 0.0  # -0.55 > -1.0


def test_partial_scoring_scores_the_shared_continuation_after_each_context(bigram):
  # WinoGrande: the option that makes the continuation likely wins.
  example = ev.PartialScoring(["He gave it to m", "He gave it to y"], "yyy", 1)
  assert ev.partial_scoring_requests([example]) == [("He gave it to m", " yyy"), ("He gave it to y", " yyy")]
  assert ev.score_partial(CONFIG, bigram, TOK, [example], target_delimiter="", **KW)["acc"] == 1.0


def test_a_score_does_not_depend_on_its_batch(lively):
  short = ([2, 30, 31, 32], [33, 34])
  longer = [([2] + list(range(40, 80)), [81, 82]), ([2] + list(range(100, 150)), [151]),
            ([2, 9, 9], [10, 11, 12])]
  alone = ev.loglikelihood_tokens(CONFIG, lively, [short], batch_size=1, max_len=64)[0]
  batched = ev.loglikelihood_tokens(CONFIG, lively, longer + [short], batch_size=4, max_len=64)[-1]
  assert batched.logprob == pytest.approx(alone.logprob, abs=1e-5)


def test_batches_unembed_only_the_scored_positions():
  rows = [ev.request_row([2] + list(range(10, 50)), [7, 8], max_len=64), ev.request_row([2, 5], [6], max_len=64)]
  [batch] = ev.make_batches(rows, batch_size=4, bucket=32, chunk=64)
  assert batch.inputs.shape == (4, 64) and batch.targets.shape == (4, 8)
  np.testing.assert_array_equal(batch.score_positions[0, :2], [40, 41])
  np.testing.assert_array_equal(batch.targets[0, :2], [7, 8])
  np.testing.assert_array_equal(batch.score_mask.sum(1), [2, 1, 0, 0])
  np.testing.assert_array_equal(batch.index, [0, 1, -1, -1])


def test_bad_examples_are_named():
  with pytest.raises(ValueError, match="example 1 has no field 'choices'"):
    ev.multiple_choice_requests([ev.MultipleChoice("a", ["b", "c"], 0), {"context": "a", "gold": 0}])
  with pytest.raises(ValueError, match="gold=2"):
    ev.multiple_choice_requests([{"context": "a", "choices": ["b", "c"], "gold": 2}])


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


def test_generation_scoring_decodes_greedily_and_compares(bigram):
  # The bigram model repeats the prompt's last character.
  examples = [ev.GenerationExample("Say k", "kkkk"), ev.GenerationExample("Say q", ["no", "qqqq"]),
              ev.GenerationExample("Say z", "zzz")]
  texts = ev.generate_texts(CONFIG, bigram, TOK, [e.prompt for e in examples], max_new_tokens=4, batch_size=4)
  assert texts == ["kkkk", "qqqq", "zzzz"]
  result = ev.score_generation(CONFIG, bigram, TOK, examples, metrics=("exact_match", "bleu", "chrf"),
                               max_new_tokens=4, batch_size=4)
  assert result["exact_match"] == pytest.approx(2 / 3)
  assert result["chrf"] == sacrebleu.corpus_chrf(texts, [["kkkk", "no", "zzz"], [None, "qqqq", None]]).score
  assert result["chrf"] > sacrebleu.corpus_chrf(texts, [["kkkk", "no", "zzz"]]).score
  with pytest.raises(ValueError, match="bleu"):
    ev.score_generation(CONFIG, bigram, TOK, examples, metrics=("rouge",))


# ---- perplexity and KL -------------------------------------------------------------------------------
TEXTS = ["Hello world.", "A longer text that does not fit in one window of eight tokens."]


def test_rolling_windows_predict_every_token_once():
  rows = ev.rolling_rows([2, 10, 11, 12, 13, 14], 2)
  assert rows == [ev.Row([2, 10], [10, 11]), ev.Row([11, 12], [12, 13]), ev.Row([13], [14])]


def test_perplexity_is_exp_of_the_mean_nll_by_hand(lively):
  result = ev.perplexity(CONFIG, lively, TOK, TEXTS, max_len=8, batch_size=4)
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


def test_kl_is_zero_against_itself_and_matches_a_hand_computation(lively, tmp_path, monkeypatch):
  perturbed = jax.tree.map(lambda x: x * 1.05, lively)
  reference = ev.BaseReference.from_texts(CONFIG, lively, TOK, TEXTS[:1], max_len=16, batch_size=4,
                                          cache_dir=str(tmp_path), base_id="lively")
  assert ev.kl_divergence(CONFIG, lively, reference)["kl"] == pytest.approx(0.0, abs=1e-6)
  kl = ev.kl_divergence(CONFIG, perturbed, reference)
  ids = [2] + TOK.encode(TEXTS[0])
  p, q = forward_logprobs(lively, ids[:-1]), forward_logprobs(perturbed, ids[:-1])
  expected = np.mean(np.sum(np.exp(p) * (p - q), axis=-1))
  assert kl["kl"] > 1e-3
  assert kl["kl"] == pytest.approx(expected, rel=1e-4)
  assert kl["num_tokens"] == len(ids) - 1
  # The base side was stored on disk and is read back, not recomputed.
  [stored] = list(tmp_path.glob("kl_base_*.npz"))
  monkeypatch.setattr(ev, "_final_hidden", None)     # recomputing would now fail
  again = ev.BaseReference.from_texts(CONFIG, lively, TOK, TEXTS[:1], max_len=16, batch_size=4,
                                      cache_dir=str(tmp_path), base_id="lively")
  assert again.key == reference.key and stored.exists()
  assert ev.kl_divergence(CONFIG, perturbed, again)["kl"] == pytest.approx(kl["kl"], rel=1e-6)


def test_kl_cache_key_follows_the_base_params(lively):
  a = ev.BaseReference.from_texts(CONFIG, lively, TOK, ["abc"], max_len=16, batch_size=4)
  b = ev.BaseReference.from_texts(CONFIG, jax.tree.map(lambda x: x * 2, lively), TOK, ["abc"], max_len=16,
                                  batch_size=4)
  assert a.key != b.key


# ---- tasks, evaluate_all and the CLI -----------------------------------------------------------------
def test_evaluate_all_writes_a_dict_of_floats_per_task(bigram, lively, tmp_path):
  tasks = [ev.EvalTask("mc", "multiple_choice", [ev.MultipleChoice("Pick: k", ["kkk", "abc"], 0)],
                       {"target_delimiter": ""}),
           ev.EvalTask("wino", "partial", [ev.PartialScoring(["to m", "to y"], "yyy", 1)],
                       {"target_delimiter": ""}),
           ev.EvalTask("gen", "generation", [ev.GenerationExample("Say k", "kkkk")],
                       {"max_new_tokens": 4, "metrics": ["exact_match", "chrf"]}),
           ev.EvalTask("ppl", "perplexity", TEXTS[:1]),
           ev.EvalTask("kl", "kl", TEXTS[:1])]
  out = tmp_path / "results.json"
  results = ev.evaluate_all(CONFIG, bigram, TOK, tasks, out=str(out), base=(CONFIG, lively), **KW)
  assert json.loads(out.read_text()) == results
  assert set(results) == {"mc", "wino", "gen", "ppl", "kl"}
  assert all(isinstance(v, float) for metrics in results.values() for v in metrics.values())
  assert results["mc"]["acc"] == results["wino"]["acc"] == results["gen"]["exact_match"] == 1.0
  assert results["kl"]["kl"] > 0
  # The trainer's shape: params -> {metric: value}.
  evaluator = ev.Evaluator(TOK, tasks[:2], **KW)
  assert evaluator.eval_fn(CONFIG, "mc")(bigram) == results["mc"]
  assert evaluator.eval_fn(CONFIG)(bigram) == {"mc/acc": 1.0, "mc/acc_norm": 1.0, "mc/num_examples": 1.0,
                                                "wino/acc": 1.0, "wino/num_examples": 1.0}
  print(ev.format_table(results))


def test_task_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown option.*'max_new_tokens'"):
    ev.EvalTask("t", "multiple_choice", [ev.MultipleChoice("a", ["b", "c"], 0)], {"max_new_tokens": 3})
  with pytest.raises(ValueError, match="kind='mcq'"):
    ev.EvalTask("t", "mcq", ["x"])
  with pytest.raises(ValueError, match="need base"):
    ev.Evaluator(TOK, [ev.EvalTask("k", "kl", ["x"])])


def test_cli_rejects_an_unknown_task_and_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]; known tasks: \[.*'smoke_ppl'"):
    build_tasks(["smoke_ppl", "nope"])


def test_cli_run_on_a_random_model_writes_json(tmp_path):
  out = tmp_path / "r.json"
  results = run("random:tiny", ["smoke_capitals", "smoke_ppl"], out=str(out), tokenizer="bytes", limit=2,
                batch_size=4, max_len=64)
  assert json.loads(out.read_text()) == results
  assert results["smoke_capitals"]["num_examples"] == 2.0
  assert results["smoke_ppl"]["perplexity"] > 1
