"""The paper configs launched end to end on the fake TPU VM and the fake SLURM cluster (tests/fake_cluster), with
the real trainer: `configs/paper_1b.py` through launch/tpu_run.sh on 2 workers, `configs/paper_4b.py` through
launch/slurm.sbatch on 2 nodes, each shrunk by --config overrides to the tiny random model (2 layers, 6 steps,
small batches and evaluations) but with the paper's mesh shape in miniature (data=1, fsdp=-1, tensor: the 1B run
has fsdp spanning the two processes, the 4B run tensor=4 spanning them), a gs:// workdir (the emulator), the
data staged beforehand (python -m grow_jax.data.stage's code, from the repository's fixtures through the fake
hub) and read by the workers with the hub and the offline caches cut off, a byte-level tokenizer staged on every
worker with launch/stage_model.sh, a kill mid-way and a resume by the same command.

Tasks: 1B trains on its default translation_en_fr (WMT14 from tests/fixtures), 4B on scitail, both evaluated as
the paper configs say (heldout_loss, the task's validation, WinoGrande, stdlib_text: two records each), before
and after. The kill lands at a known step: tests/fake_cluster/real_trainer.py holds the run before step 4
($FAKE_STALL_AT_STEP) until a stop signal, so the TPU run stopped by `tpu_run.sh --kill` (SIGTERM) saves step 4
and exits 0, and the SLURM job that loses a node (SIGKILL) falls back to its step-2 checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import fake_hub
import processes
from config_files import load_config
from byte_tokenizer import byte_tokenizer

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
FAKE = REPO / "tests" / "fake_cluster"
TPU = ["--name=grow", "--zone=us-central2-b", "--project=my-proj"]
STEPS, STALL = 6, 4
TOKENIZER = "~/models/byte-tokenizer"        # staged on every worker / node
# The paper configs shrunk: the tiny random model and everything small; the rest (mode, mesh shape, dtypes,
# packing, evaluations at start and end, the optimizer's schedule) as the config says.
ARG = f"mode=g_freeze,steps={STEPS},batch=8,seq_len=128"
SHRINK = {"init.source": "random:tiny", "model.num_layers": 2, "data.tokenizer": f"hf:{TOKENIZER}",
          "log_every_steps": 1, "checkpoint.every_steps": 2, "optimizer.warmup_steps": 2, "eval.max_examples": 2,
          "eval.batch_size": 8, "eval.max_new_tokens": 4, "eval.max_len": 96}
TIMEOUT = 600

pytestmark = pytest.mark.skipif(any(not os.path.exists(f"/usr/bin/{c}") and not os.path.exists(f"/bin/{c}")
                                    for c in ("setsid", "ps")), reason="needs util-linux setsid and procps ps")


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for every process of this file: a resumed run loads its programs."""
  return str(tmp_path_factory.mktemp("xla"))


@pytest.fixture
def cluster(tmp_path, gcs, compilation_cache):
  """The fakes first on PATH, the real trainer behind them, the emulator's gs://, no hub and no offline cache."""
  env = {**os.environ, **gcs.env,
         "PATH": f"{FAKE / 'bin'}{os.pathsep}{os.environ['PATH']}", "FAKE_REAL_PYTHON": sys.executable,
         "FAKE_REAL_TRAINER": "1", "FAKE_TPU_ROOT": str(tmp_path / "tpu"), "FAKE_TPU_WORKERS": "2",
         "FAKE_TPU_PORT": str(processes.free_port()), "FAKE_SLURM_ROOT": str(tmp_path / "slurm"),
         "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GROW_JAX_DATA_DIR": str(tmp_path / "no_offline_cache"),
         "GROW_JAX_COMPILATION_CACHE": compilation_cache, "TOKENIZERS_PARALLELISM": "false"}
  for var in ("GROW_JAX_DISTRIBUTED", "GROW_JAX_STAGED_DATA", "JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT",
              "FAKE_GCLOUD_DROP", "FAKE_STALL_AT_STEP", "XLA_FLAGS", "JAX_PLATFORMS"):
    env.pop(var, None)
  sessions = []
  yield env, sessions
  for pid_file in (tmp_path / "tpu").glob("worker*/grow_jax/run.pid"):      # a failed test may leave a trainer
    _kill_group(int(pid_file.read_text()))
  for proc in sessions:
    _kill_group(proc.pid)


def _kill_group(pgid):
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, ValueError):
    pass


def overrides(data=None):
  return {**SHRINK, **({"data.staged": data} if data else {})}


def flags(values):
  return [f"--config.{k}={v}" for k, v in values.items()]


def stage(monkeypatch, tmp_path, config_name, arg, values, out):
  """Stages every task and split the run reads into `out` (what `python -m grow_jax.data.stage --config=...
  --out=...` does) where the hub is reachable: here the fake hub serving tests/fixtures."""
  from grow_jax.data import stage as stage_lib
  from grow_jax.train import config as config_lib
  config = config_lib.apply_overrides(load_config(config_name, arg), values)
  monkeypatch.setenv("GROW_JAX_DATA_DIR", str(tmp_path / "stage_cache"))
  with monkeypatch.context() as m:
    fake_hub.install(m, tmp_path / "hf_cache")
    manifests = stage_lib.stage_config(config, out)
  return {name: manifest["counts"] for name, manifest in manifests.items()}


def launch(script, *args, env, expect=0, timeout=120):
  proc = subprocess.run([str(LAUNCH / script), *args], cwd=REPO, capture_output=True, text=True, env=env,
                        timeout=timeout)
  assert proc.returncode == expect, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
  return proc


def wait_for(condition, what, ended, timeout=TIMEOUT):
  """Polls `condition` until it holds; `ended()` returns the run's log once the run has ended (None before)."""
  deadline = time.monotonic() + timeout
  while not condition():
    log = ended()
    assert log is None, f"the run ended before {what}:\n{log}"
    assert time.monotonic() < deadline, f"no {what} after {timeout} s"
    time.sleep(0.5)


def stalled(homes):
  return lambda: all((h / "fake_stall.json").exists() for h in homes)


def checkpoint_steps(workdir):
  from grow_jax.train import checkpointing
  return checkpointing.Checkpointer(f"{workdir}/checkpoints", read_only=True).all_steps()


def checkpoint_meta(workdir, step):
  from grow_jax.train import checkpointing
  return checkpointing.Checkpointer(f"{workdir}/checkpoints", read_only=True).read_meta(step)


def metrics(gcs, workdir):
  name = workdir[len(f"gs://{gcs.bucket}/"):] + "/metrics.jsonl"
  return [json.loads(line) for line in gcs.read(name).decode().splitlines()]


def check_finished(env, gcs, workdir, task_metric):
  """metrics.jsonl after the resume: steps 1..STEPS trained once each (the resumed run re-logs the steps after
  its checkpoint), evaluations before and after with the heldout loss and the task's own validation metric; and
  no process built a dataset from its own source (the offline datasets' cache was never made)."""
  assert not Path(env["GROW_JAX_DATA_DIR"]).exists()
  records = metrics(gcs, workdir)
  assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
  evals = [r for r in records if "eval/heldout_loss/loss" in r]
  assert [r["step"] for r in evals] == [0, STEPS]
  for r in evals:
    assert {task_metric, "eval/winogrande/acc", "eval/stdlib_text/kl"} <= set(r), sorted(r)


# ------------------------------------------------------------------------------------------------- TPU VM


def worker(env, i):
  return Path(env["FAKE_TPU_ROOT"]) / f"worker{i}"


@pytest.mark.slow
def test_paper_1b_on_a_tpu_vm_stopped_by_kill_and_resumed(cluster, gcs, monkeypatch, tmp_path):
  env, _ = cluster
  root = f"gs://{gcs.bucket}/launch-paper-{uuid.uuid4().hex[:8]}"
  data, workdir = f"{root}/data", f"{root}/1b_gfreeze_translation"
  arg = f"{ARG},tensor=2"                      # 2 workers x 4 devices: data=1, fsdp=4 (across the workers), tensor=2
  values = overrides(data)
  assert stage(monkeypatch, tmp_path, "paper_1b", arg, values, data) == {
      "translation_en_fr": {"train": 2, "validation": 1}, "winogrande": {"validation": 2},
      "stdlib_text": {"validation": 659}}
  launch("stage_model.sh", *TPU, f"--src={byte_tokenizer(tmp_path / 'byte-tokenizer')[3:]}",
         f"--dest={TOKENIZER}", env=env)
  for i in range(2):         # what tpu_setup.sh leaves: the code (this checkout's, linked) and a venv
    (worker(env, i) / "grow_jax" / "venv" / "bin").mkdir(parents=True)
    (worker(env, i) / "grow_jax" / "venv" / "bin" / "python").symlink_to(FAKE / "venv_python")
    for part in ("grow_jax", "configs"):
      (worker(env, i) / "grow_jax" / "code" / part).parent.mkdir(exist_ok=True)
      (worker(env, i) / "grow_jax" / "code" / part).symlink_to(REPO / part)
  run = [*TPU, f"--config=configs/paper_1b.py:{arg}", f"--workdir={workdir}",
         "--env=XLA_FLAGS=--xla_force_host_platform_device_count=4"]
  homes = [worker(env, i) for i in range(2)]

  def ended():
    if any((h / "grow_jax" / "run.status").exists() for h in homes):
      return "\n".join((h / "grow_jax" / "run.log").read_text()[-5000:] for h in homes)
    return None

  launch("tpu_run.sh", *run, "--", *flags(values), env={**env, "FAKE_STALL_AT_STEP": str(STALL)})
  wait_for(stalled(homes), f"both workers held before step {STALL}", ended)
  launch("tpu_run.sh", *TPU, "--kill", env=env, timeout=180)
  logs = [(h / "grow_jax" / "run.log").read_text() for h in homes]
  # SIGTERM: every worker finishes the step, the checkpoint is saved, the trainer exits 0.
  assert [(h / "grow_jax" / "run.status").read_text().strip() for h in homes] == ["0", "0"], logs[0][-5000:]
  assert f"stopped by signal SIGTERM at step {STALL}; checkpoint saved" in logs[0]
  assert checkpoint_steps(workdir) == [2, STALL]                 # the paper config keeps 2
  assert checkpoint_meta(workdir, STALL)["mesh"] == "data=1,fsdp=4,tensor=2"

  # The same command again (no hold): it resumes from step 4 and finishes.
  launch("tpu_run.sh", *run, "--wait", "--", *flags(values), env=env, timeout=TIMEOUT)
  log = (homes[0] / "grow_jax" / "run.log").read_text()[len(logs[0]):]
  assert f"resume order -> workdir checkpoint {workdir}/checkpoints/{STALL}; model ready at step {STALL}" in log
  assert checkpoint_steps(workdir) == [STALL, STEPS]
  check_finished(env, gcs, workdir, "eval/translation_en_fr/chrf")


# -------------------------------------------------------------------------------------------------- SLURM


@pytest.mark.slow
def test_paper_4b_on_slurm_loses_a_node_and_the_job_resubmitted_resumes(cluster, gcs, monkeypatch, tmp_path):
  env, sessions = cluster
  root = f"gs://{gcs.bucket}/launch-paper-{uuid.uuid4().hex[:8]}"
  data, workdir = f"{root}/data", f"{root}/4b_gfreeze_scitail"
  arg = f"{ARG},task=scitail"                  # paper_4b's tensor=4, accum=2: 2 nodes x 2 devices, tensor across both
  values = overrides()
  assert stage(monkeypatch, tmp_path, "paper_4b", arg, values, data) == {
      "scitail": {"train": 3, "validation": 2}, "winogrande": {"validation": 2}, "stdlib_text": {"validation": 659}}
  env.update(FAKE_SLURM_NODELIST="localhost,127.0.0.1", JAX_COORDINATOR_PORT=str(processes.free_port()),
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             GROW_JAX_STAGED_DATA=data)               # sbatch passes the submitting shell's environment on
  (tmp_path / "shared").mkdir()
  tokenizer = byte_tokenizer(tmp_path / "shared" / "byte-tokenizer")[3:]
  job = ["--nodes=2", "launch/slurm.sbatch", f"--config=configs/paper_4b.py:{arg}", f"--workdir={workdir}",
         "--jax-platforms=cpu", f"--stage-src={tokenizer}", f"--stage-dest={TOKENIZER}", "--", *flags(values)]
  slurm = Path(env["FAKE_SLURM_ROOT"])
  homes = [slurm / "localhost", slurm / "127.0.0.1"]
  job_log = slurm / "grow_jax-4242.out"

  def submit(extra=None):
    proc = subprocess.Popen(["sbatch", *job], cwd=REPO, env={**env, **(extra or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    sessions.append(proc)
    return proc

  first = submit({"FAKE_STALL_AT_STEP": str(STALL)})

  def ended():
    return job_log.read_text()[-8000:] if first.poll() is not None else None

  wait_for(stalled(homes), f"both nodes held before step {STALL}", ended)
  wait_for(lambda: 2 in checkpoint_steps(workdir), "a checkpoint at step 2", ended)
  # The second node dies (SIGKILL, no clean stop); srun --kill-on-bad-exit takes the job down.
  os.kill(json.loads((homes[1] / "fake_stall.json").read_text())["pid"], signal.SIGKILL)
  assert first.wait(timeout=120) != 0
  assert checkpoint_steps(workdir) == [2]
  meta = checkpoint_meta(workdir, 2)               # 4 devices, 2 on each node: every tensor group spans both
  assert meta["mesh"] == "data=1,fsdp=1,tensor=4" and meta["train"]["mode"] == "g_freeze"
  killed_log = job_log.read_text()

  # The same job submitted again: it resumes from step 2 and finishes.
  second = submit()
  assert second.wait(timeout=TIMEOUT) == 0, job_log.read_text()[len(killed_log):][-8000:]
  log = job_log.read_text()[len(killed_log):]
  assert f"resume order -> workdir checkpoint {workdir}/checkpoints/2; model ready at step 2" in log
  assert checkpoint_steps(workdir) == [4, STEPS]
  check_finished(env, gcs, workdir, "eval/scitail/acc")
