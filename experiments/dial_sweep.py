r"""The dial: a trained grown model moved between the original (alpha = 0) and itself (alpha = 1/k) and beyond,
scored on a new-task evaluation and a retention evaluation at each alpha -> JSON + a PNG curve.

  python experiments/dial_sweep.py --workdir=/tmp/grow_jax/270m_gfreeze \
      --new_task=gettext_en_fr:validation/chrf --retention=capitals_gen:validation/exact_match_norm \
      --limit=100 --out=experiments/results/dial_270m
  python experiments/dial_sweep.py --workdir=/tmp/tiny_gf --tokenizer=bytes \
      --new_task=smoke_ppl/perplexity --retention=smoke_kl/kl --out=/tmp/dial_tiny        # plumbing

--workdir is a trainer workdir of a grown run (G-Freeze, G-Train; every grown layer with the same number k of
branches; an ungrown run such as SFT is moved by weight interpolation instead, base + u (trained - base), the
dial's control) or a grow_jax params file of one (`*.safetensors`, e.g. a study's `--keep_params` run; then --base is
required); the base weights are its config.json's init source (with its seed and model overrides) unless
--base names them (a checkpoint source or a params file). --multiples are alpha x k: 0 (the original model, exact), 0.25 .. 1 (1 = the trained model,
exact), above 1 (the copies amplified). --new_task / --retention are '<evaluation entry>/<metric>' of the one
evaluation registry (grow_jax/evaluation/registry.py); --extra adds more entries to the JSON. Writes <out>.json
(one row per alpha: every metric of every entry) and <out>.png (new-task score against retention, and both
against alpha x k).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from grow_jax import figures, files  # noqa: E402
from grow_jax.errors import ConfigError, GrowJaxError  # noqa: E402
from grow_jax.evaluation import registry  # noqa: E402
from grow_jax.growth import operators as growth  # noqa: E402

MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def branch_count(config) -> int:
  """k: the number of MLP branches of every grown layer (the dial's alpha = multiple / k); 1 for an ungrown
  model (moved by weight interpolation)."""
  counts = {len(config.layer_mlp_branches(i)) for i in growth.grown_layers(config)} or {1}
  if len(counts) != 1:
    raise ConfigError(f"dial_sweep: grown layers have branch counts {sorted(counts)}; expected one k >= 2")
  return counts.pop()


def move(config, params, base_params, u: float):
  """The trained model moved to u (0 = the untrained model, 1 = the trained one): a grown model by the dial
  (alpha = u / k, growth.operators.dial); an ungrown one (SFT, MLP-only SFT, L2-SP, EWC) by interpolating every
  weight, base + u (trained - base) (WiSE-FT, Wortsman et al. 2022), the control for the dial."""
  k = branch_count(config)
  if k > 1:
    return growth.dial(config, params, u / k, base_params)
  if jax.tree.structure(params) != jax.tree.structure(base_params):
    raise ConfigError("dial_sweep: an ungrown model is interpolated toward its base weights, which need the same "
                      "parameter tree (a LoRA or other adapter run has extra leaves: merge it first)")
  if u in (0, 1):                                    # the exact ends: the base weights, the trained ones
    return params if u == 1 else jax.tree.map(lambda b, p: jnp.asarray(b, p.dtype), base_params, params)
  w = jnp.float32(u)
  return jax.tree.map(lambda b, p: (b.astype(jnp.float32) + w * (p.astype(jnp.float32) - b.astype(jnp.float32))
                                    ).astype(p.dtype), base_params, params)


def sweep(config, params, base_params, multiples: Sequence[float], evals: Mapping[str, Any]) -> list[dict[str, float]]:
  """One row per multiple u: {'multiple': u, 'alpha': u / k, '<entry>/<metric>': value, ...} (k = 1: an ungrown
  model, interpolated)."""
  k = branch_count(config)
  rows = []
  for u in multiples:
    dialed = move(config, params, base_params, u)
    row = {"multiple": float(u), "alpha": float(u) / k}
    for name, fn in evals.items():
      row.update({f"{name}/{m}": float(v) for m, v in fn(dialed).items()})
    rows.append(row)
  return rows


def plot(rows: Sequence[Mapping[str, float]], new_task: str, retention: str, path: str, title: str) -> None:
  plt = figures.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  x, y, u = ([r[key] for r in rows] for key in (retention, new_task, "multiple"))
  left.plot(x, y, "o-")
  for xi, yi, ui in zip(x, y, u):
    left.annotate(f"{ui:g}/k", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
  left.set_xlabel(f"retention: {retention}", fontsize=8)
  left.set_ylabel(f"new task: {new_task}", fontsize=8)
  right.plot(u, y, "o-", label=new_task)
  twin = right.twinx()
  twin.plot(u, x, "s--", color="tab:orange", label=retention)
  right.set_xlabel("alpha x k (0 = original, 1 = trained)", fontsize=8)
  right.set_ylabel(new_task, fontsize=8)
  twin.set_ylabel(retention, fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  figures.save_png(fig, path, dpi=110)


def _split(spec: str, flag: str) -> tuple[str, str]:
  entry, sep, metric = spec.rpartition("/")
  if not sep or not entry or not metric:
    raise ConfigError(f"{flag}={spec!r}: expected '<evaluation entry>/<metric>', e.g. capitals:test/acc")
  return entry, metric


def run(workdir: str, *, new_task: str, retention: str, extra: Sequence[str] = (), base: str | None = None,
        multiples: Sequence[float] = MULTIPLES, tokenizer: str | None = None, limit: int | None = None,
        batch_size: int = 8, max_len: int = 256, max_new_tokens: int = 48, out: str | None = None) -> dict:
  from grow_jax.evaluate import load_tokenizer_for_eval
  from grow_jax.train import trained
  (new_entry, _), (ret_entry, _) = _split(new_task, "--new_task"), _split(retention, "--retention")
  entries = list(dict.fromkeys([new_entry, ret_entry, *extra]))
  registry.check(entries, field="dial_sweep entries")
  if len(multiples) < 2:
    raise ConfigError(f"--multiples={list(multiples)}: expected at least two values")
  t = trained.load_with_base(workdir, base=base)     # a params file (e.g. a study's kept run) needs --base
  config, params, base_config, base_params, source = t.config, t.params, t.base_config, t.base_params, t.base
  tok = load_tokenizer_for_eval(tokenizer or t.run.get("data", {}).get("tokenizer") or source)
  ctx = registry.EvalContext(config, tokenizer=tok, limit=limit, batch_size=batch_size, max_len=max_len,
                             max_new_tokens=max_new_tokens, base_model=lambda: (base_config, base_params),
                             base_id=None if source.startswith("random:") else source)
  evals = {e: registry.build(e, ctx) for e in entries}
  rows = sweep(config, params, base_params, multiples, evals)
  for spec in (new_task, retention):
    if spec not in rows[0]:
      raise ConfigError(f"dial_sweep: {spec!r} is not among the metrics {sorted(k for k in rows[0] if '/' in k)}")
  name = os.path.basename(os.fspath(workdir).rstrip("/"))
  result = {"workdir": os.fspath(workdir), "step": t.step, "method": t.method or name, "base": source,
            "k": branch_count(config), "new_task": new_task, "retention": retention, "rows": rows}
  if out:
    files.write_text(out + ".json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    plot(rows, new_task, retention, out + ".png", f"dial of {name}" if t.step is None else
         f"dial of {t.method} ({name}, step {t.step})")
  return result


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--new_task", required=True, help="'<entry>/<metric>' of the new task")
  p.add_argument("--retention", required=True, help="'<entry>/<metric>' of what the model should keep")
  p.add_argument("--extra", default="", help="more comma-separated evaluation entries for the JSON")
  p.add_argument("--base", help="the base weights (default: the workdir's init source)")
  p.add_argument("--multiples", default=",".join(f"{m:g}" for m in MULTIPLES), help="alpha x k values")
  p.add_argument("--tokenizer", help="tokenizer source or 'bytes' (default: the run's)")
  p.add_argument("--limit", type=int, default=None)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--max_len", type=int, default=256)
  p.add_argument("--max_new_tokens", type=int, default=48)
  p.add_argument("--out", help="output prefix (.json, .png)")
  args = p.parse_args(argv)
  try:
    result = run(args.workdir, new_task=args.new_task, retention=args.retention,
                 extra=[e for e in args.extra.split(",") if e], base=args.base,
                 multiples=[float(m) for m in args.multiples.split(",") if m], tokenizer=args.tokenizer,
                 limit=args.limit, batch_size=args.batch_size, max_len=args.max_len,
                 max_new_tokens=args.max_new_tokens, out=args.out)
  except (GrowJaxError, ValueError) as e:
    print(f"dial_sweep: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return 1
  for row in result["rows"]:
    print(f"alpha x k = {row['multiple']:<5g} {args.new_task} = {row[args.new_task]:.4g}  "
          f"{args.retention} = {row[args.retention]:.4g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
