r"""Run (or continue) a study and regenerate its results.

  python -m grow_jax.study --study=experiments/studies/forgetting_270m.py --out=experiments/results/forgetting_270m
  python -m grow_jax.study --study=... --out=... --list     # done and pending runs (seeds, tests: listed once selected)
  python -m grow_jax.study --study=... --out=... --only='translation/*' --max_runs=3
  python -m grow_jax.study --study=... --out=... --report_only     # no training: tables and plots from runs/
  python -m grow_jax.study --study=... --out=... --override_selection='translation/sft=alice 2026-12-03: grid fix'

A run whose JSON exists under <out>/runs/ is skipped, so committing runs/ and running the same command on
another machine continues the study; with every run done it regenerates identical tables and plots.
Workdirs (checkpoints) go to --workdir_root and are deleted after each run unless --keep_workdirs; with
--keep_params every trained run's params file stays under <workdir_root>/<study>/kept/ (e.g. pilots for
`python -m grow_jax.growth.plan`).
--out and --workdir_root may be gs:// paths (docs/training.md: "Workdirs on cloud storage").

Every command checks the records first: one whose run identity (resolved config, evaluation sets and limits)
differs from what the study file now asks for, or a frozen selection (its test is scored) that the grid or
validation records would change, stops it with one line. --override_selection unfreezes one selection and
records the reason (who, when, why) in <out>/selections/ and results.md.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

_STUDY = flags.DEFINE_string("study", None, "Study file, path[:arg].")
_OUT = flags.DEFINE_string("out", None, "Results directory (runs/, results.csv, results.md, plots).")
_WORKDIRS = flags.DEFINE_string("workdir_root", "/tmp/grow_jax/studies", "Where run workdirs go (not committed).")
_ONLY = flags.DEFINE_string("only", None, "Glob over run ids: run (or --list) only these.")
_MAX_RUNS = flags.DEFINE_integer("max_runs", None, "Stop after this many runs.")
_LIST = flags.DEFINE_bool("list", False, "List the runs and their state; run nothing.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Regenerate the results from runs/; train nothing.")
_KEEP = flags.DEFINE_bool("keep_workdirs", False, "Keep each run's workdir (checkpoints) after it is recorded.")
_KEEP_PARAMS = flags.DEFINE_bool("keep_params", False, "Also keep every trained run's params under "
                                  "<workdir_root>/<study>/kept/ (pilots for growth plans; 1-2 GB per 270M run).")
_OVERRIDE = flags.DEFINE_multi_string("override_selection", [], "'<task>/<method>=<who, when, why>': re-select a "
                                      "method whose selection is frozen by its scored test; the reason is recorded.")
flags.mark_flags_as_required(["study", "out"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  from grow_jax import errors, files, runtime
  runtime.enable_compilation_cache()
  from grow_jax.errors import GrowJaxError
  from grow_jax.study import report, runs
  try:
    study = runs.load_study(_STUDY.value)
    if _LIST.value:
      files.check_reachable(_OUT.value, "--out")
    else:
      files.check_writable(_OUT.value, "--out")           # before hours of training, not after the first run
    if not (_LIST.value or _REPORT_ONLY.value):
      files.check_reachable(_WORKDIRS.value, "--workdir_root")
    if _OVERRIDE.value and _LIST.value:
      raise errors.ConfigError("--override_selection changes the study's records; --list only reads them")
    for override in _OVERRIDE.value:
      target, sep, reason = override.partition("=")
      if not sep:
        raise errors.ConfigError(f"--override_selection={override!r}: expected '<task>/<method>=<who, when, why>'")
      print(runs.override_selection(study, _OUT.value, target, reason), flush=True)
    if _LIST.value:
      records = runs.load_records(_OUT.value, study)
      selected = runs.selections(study, records)
      for run in runs.in_run_order(study, runs.expand(study, selected), _ONLY.value):
        state = "done" if runs.is_done(run, records, study) else "pending"
        print(f"{state:8s} {run.phase:6s} {run.id}")
      print(f"{len(records)} done; selected: {sorted(f'{t}/{m}' for t, m in selected)}")
      return
    if not _REPORT_ONLY.value:
      runs.run_all(study, _OUT.value, _WORKDIRS.value, only=_ONLY.value, max_runs=_MAX_RUNS.value,
                   keep_workdirs=_KEEP.value, keep_params=_KEEP_PARAMS.value,
                   on_record=lambda r: print(f"recorded {r['id']} ({r['seconds'] / 60:.1f} min)", flush=True))
    records = runs.load_records(_OUT.value, study)
    report.write_report(study, records, runs.selections(study, records), _OUT.value)
    print(f"wrote {_OUT.value}/results.md ({len(records)} runs)")
  except GrowJaxError as e:
    errors.print_error("grow_jax.study", e)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
