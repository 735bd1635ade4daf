"""gs:// workdirs against a real GCS API: the emulator of tests/gcs_emulator.py, which gcsfs (etils.epath),
tensorstore (orbax's arrays) and google-cloud-storage (tensorboardX) reach over HTTP as they would reach GCS.

A tiny run trains into gs://, is SIGKILLed, resumes bitwise-exactly, and its files are in the bucket (listed
through the API); evaluate reads that workdir and writes gs:// results and KL caches; the study's records and
results; one-line errors for a bucket that does not exist and for missing libraries.
"""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import orbax.checkpoint as ocp
import pytest

from config_files import ROOT
from grow_jax import files, tree_paths
from grow_jax.errors import WorkdirError
from grow_jax.study import report, runs
from grow_jax.train import checkpointing, loop
from grow_jax.train.writers import MetricWriter

STEPS = 30
ARGS = [f"--config={ROOT}/configs/tiny.py:steps={STEPS},layers_n=1,seq_len=16", "--config.checkpoint.every_steps=5",
        "--config.log_every_steps=1", "--config.checkpoint.keep=2"]
SMOKE = os.path.join(ROOT, "experiments", "studies", "forgetting_270m.py") + ":smoke"


def _prefix(name: str) -> str:
  """A fresh object prefix in the test bucket."""
  return f"{name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="module")
def env(gcs, tmp_path_factory):
  e = dict(os.environ)
  e.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
           JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **gcs.env)
  return e


def _cmd(workdir):
  return [sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={workdir}"]


def _run(workdir, env, cwd):
  proc = subprocess.run(_cmd(workdir), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _committed(gcs, prefix):
  """Checkpoint steps whose commit file orbax has written (on GCS a step is complete once it has one)."""
  names = gcs.names(prefix + "checkpoints/")
  return sorted(int(n.split("/")[0]) for n in names                # <step>/commit_success.txt (items have theirs)
                if n.count("/") == 1 and n.endswith("/commit_success.txt") and n.split("/")[0].isdigit())


def _metrics(gcs, prefix):
  return [json.loads(line) for line in gcs.read(prefix + "metrics.jsonl").decode().splitlines()]


def _final_state(workdir, step):
  manager = ocp.CheckpointManager(f"{workdir}/checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()})
  assert step in manager.all_steps(), manager.all_steps()
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  return {p: np.asarray(x) for p, x in tree_paths.flatten_items(state)}


@pytest.mark.slow
def test_a_gs_run_trains_is_killed_and_resumes_bitwise_exactly_with_its_files_in_the_bucket(gcs, env, tmp_path):
  prefix = _prefix("resume")
  root = f"gs://{gcs.bucket}/{prefix}"
  cwd = tmp_path / "cwd"                       # the runs' working directory: nothing may land on local disk
  cwd.mkdir()

  _run(root + "reference", env, cwd)
  reference = _final_state(root + "reference", STEPS)
  objects = gcs.names(prefix + "reference/")
  assert json.loads(gcs.read(prefix + "reference/config.json"))["total_steps"] == STEPS
  events = [n for n in objects if n.startswith("tensorboard/events.out.tfevents.")]
  assert events and all(b"loss" in gcs.read(prefix + "reference/" + n) for n in events)    # scalars uploaded
  assert _committed(gcs, prefix + "reference/") == [STEPS - 5, STEPS]                     # keep=2
  records = _metrics(gcs, prefix + "reference/")
  assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
  assert [r["step"] for r in records if "eval/heldout_loss/loss" in r] == list(range(10, STEPS + 1, 10))

  seed = random.randrange(1 << 30)
  rng = random.Random(seed)
  kill_at, delay = rng.choice(range(5, STEPS - 5, 5)), rng.uniform(0.0, 0.5)
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen(_cmd(root + "killed"), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 300
      while max(_committed(gcs, prefix + "killed/"), default=0) < kill_at:
        log_tail = (tmp_path / "killed.log").read_text()[-2000:] if proc.poll() is not None else ""
        assert proc.poll() is None, f"run ended before the kill (seed {seed}): {log_tail}"
        assert time.time() < deadline, "run too slow"
        time.sleep(0.05)
      time.sleep(delay)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    finally:
      if proc.poll() is None:
        proc.kill()
  saved = checkpointing.Checkpointer(root + "killed/checkpoints", read_only=True).all_steps()
  assert saved and max(saved) < STEPS, (saved, seed)

  resumed = _run(root + "killed", env, cwd)
  assert f"resume order -> workdir checkpoint {root}killed/checkpoints/" in resumed.stderr, resumed.stderr[-2000:]
  final = _final_state(root + "killed", STEPS)
  assert final.keys() == reference.keys()
  for path, a in reference.items():
    np.testing.assert_array_equal(final[path], a, err_msg=f"{path} (killed after step {kill_at}, seed {seed})")
  steps = [r["step"] for r in _metrics(gcs, prefix + "killed/") if "loss" in r]
  assert steps == list(range(1, STEPS + 1))                     # truncated on resume, each step once
  assert len([n for n in gcs.names(prefix + "killed/") if n.startswith("tensorboard/events.")]) == 2
  assert not os.listdir(cwd)

  # evaluate: --checkpoint a gs:// workdir, --out a gs:// object.
  from grow_jax import evaluate
  results = evaluate.run(root + "killed", ["smoke_ppl"], out=root + "eval/results.json", tokenizer="bytes",
                         limit=2, batch_size=4, max_len=64)
  assert json.loads(gcs.read(prefix + "eval/results.json")) == results


def test_metrics_jsonl_on_gs_is_uploaded_at_flush_and_truncated_on_resume(gcs):
  prefix = _prefix("metrics")
  workdir = f"gs://{gcs.bucket}/{prefix}run"
  writer = MetricWriter(workdir, tensorboard=False, progress=False)
  for step in (1, 2, 3, 4):
    writer.write_scalars(step, {"loss": float(step)})
  assert gcs.names(prefix) == []                       # an object cannot be appended to: it is rewritten at flush
  writer.flush()
  assert [r["step"] for r in _metrics(gcs, prefix + "run/")] == [1, 2, 3, 4]
  writer.close()
  resumed = MetricWriter(workdir, initial_step=2, tensorboard=False, progress=False)
  assert [r["step"] for r in _metrics(gcs, prefix + "run/")] == [1, 2]      # truncated to the checkpoint at once
  resumed.write_scalars(3, {"loss": 30.0})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in _metrics(gcs, prefix + "run/")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_bucket_that_does_not_exist_is_one_line_and_is_not_created(gcs, tiny_config):
  bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
  with pytest.raises(WorkdirError, match=rf"^workdir gs://{bucket}/run is not writable: no such bucket ") as e:
    loop.train_and_evaluate(tiny_config("steps=2,layers_n=1,seq_len=16"), f"gs://{bucket}/run")
  assert "\n" not in str(e.value)
  assert gcs.client().lookup_bucket(bucket) is None


def test_gs_paths_without_the_gcs_libraries_name_the_extra(monkeypatch):
  monkeypatch.setattr(files, "_installed", lambda module: module != "gcsfs")
  with pytest.raises(WorkdirError, match=r"^--out gs://b/x: gs:// paths need gcsfs; install the gcs extra"):
    files.check_writable("gs://b/x", "--out")


@pytest.mark.slow
def test_evaluate_writes_gs_results_and_reads_its_gs_kl_cache_back(gcs, caplog):
  from grow_jax import evaluate
  prefix = _prefix("evaluate")
  root = f"gs://{gcs.bucket}/{prefix}"
  kwargs = dict(tokenizer="bytes", base="random:tiny", cache_dir=root + "cache", limit=2, batch_size=4, max_len=64)
  first = evaluate.run("random:tiny", ["smoke_kl"], out=root + "first.json", **kwargs)
  [cached] = gcs.names(prefix + "cache/")
  assert cached.startswith("kl_base_") and cached.endswith(".npz")
  caplog.set_level(logging.INFO, logger="grow_jax.evaluation.corpus")
  again = evaluate.run("random:tiny", ["smoke_kl"], out=root + "again.json", **kwargs)
  assert f"loaded from {root}cache/{cached}" in caplog.text
  assert again == first == json.loads(gcs.read(prefix + "again.json"))


def _record(run, **final):
  return {"id": run.id, "task": run.task, "method": run.method, "hparams": [list(kv) for kv in run.hparams],
          "seed": run.seed, "phase": run.phase, "steps": 3, "train_seconds": 1.0, "eval_seconds": 1.0,
          "seconds": 2.0, "final": final, "curve": [{"step": 2, "gettext_en_fr/chrf": 1.0 + run.seed}]}


def test_study_records_and_results_on_gs_are_the_local_ones(gcs, tmp_path):
  study = runs.load_study(SMOKE)
  prefix = _prefix("study")
  outs = {"local": str(tmp_path / "out"), "gs": f"gs://{gcs.bucket}/{prefix}out"}
  todo = runs.pending(study, {})
  finals = [{"gettext_en_fr:test_heldout/chrf": 3.0 + i, "gettext_en_fr:validation/chrf": 2.0 * i,
             "capitals_gen:test/exact_match_norm": 0.5, "capitals_gen:validation/exact_match_norm": 0.6}
            for i in range(len(todo))]
  records = {r.id: _record(r, **final) for r, final in zip(todo, finals)}
  written = {}
  for where, out in outs.items():
    for run in todo:
      runs.write_record(out, run, records[run.id])
    assert runs.load_records(out) == records
    loaded = runs.load_records(out)
    report.write_report(study, loaded, runs.selections(study, loaded), out)
    root = files.as_path(out)
    written[where] = {p.name: p.read_bytes().replace(out.encode(), b"OUT") for p in root.iterdir() if p.name != "runs"}
  assert set(written["gs"]) == {"results.csv", "results.md", "translation_pareto.png", "translation_curves.png"}
  assert written["gs"] == written["local"]                      # byte-identical tables and plots

  # A run's curve is read from its workdir's metrics.jsonl; the workdir is removed after the run.
  workdir = f"gs://{gcs.bucket}/{prefix}wd"
  files.write_text(workdir + "/metrics.jsonl", json.dumps({"step": 2, "loss": 1.0}) + "\n"
                   + json.dumps({"step": 2, "eval/x/acc": 0.5, "eval/seconds": 1.0}) + "\n")
  files.write_text(workdir + "/checkpoints/2/state/a", "x")
  assert runs.read_curve(workdir) == [{"step": 2, "x/acc": 0.5}]
  files.remove_tree(workdir)
  assert gcs.names(prefix + "wd/") == []
