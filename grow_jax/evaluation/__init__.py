"""Evaluation: scoring a model on named tasks, the same way in the trainer and on the command line.

    scoring.py       log-likelihood scoring (lm-eval conventions): requests, multiple choice, partial scoring
    generative.py    greedy completions scored by exact match / BLEU / chrF
    corpus.py        perplexity and KL(base ‖ model) on a text corpus
    text_metrics.py  exact match, BLEU, chrF (sacrebleu), answer post-processing
    evaluator.py     EvalTask (a named evaluation of one kind) and Evaluator (prepared once, scored often)
    items.py         per-item records (fields by kind), their compact file, metrics recomputed from items
    capitals_errors.py  capitals_gen's answers classified: right city in another language, wrong city, format lost
    tasks.py         which evaluations a `grow_jax.data` task gets
    registry.py      the one registry of named evaluations (EvalContext, register, build_all)
"""

from grow_jax.evaluation.evaluator import EvalTask, Evaluator, evaluate_all, format_table, write_results
from grow_jax.evaluation.generative import generate_texts, score_generation
from grow_jax.evaluation.corpus import BaseReference, kl_divergence, perplexity
from grow_jax.evaluation.items import Scored, read_items, write_items
from grow_jax.evaluation.registry import EvalContext, build_all, register
from grow_jax.evaluation.scoring import loglikelihood, score_multiple_choice, score_partial

__all__ = ["EvalTask", "Evaluator", "evaluate_all", "format_table", "write_results", "generate_texts",
           "score_generation", "BaseReference", "kl_divergence", "perplexity", "EvalContext", "build_all",
           "register", "loglikelihood", "score_multiple_choice", "score_partial", "Scored", "read_items",
           "write_items"]
