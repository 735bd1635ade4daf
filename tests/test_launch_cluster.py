"""launch/ scripts executed, not just printed: against a fake TPU VM and a fake SLURM cluster (tests/fake_cluster/bin
first on PATH: gcloud, srun, sbatch, curl, python). Each fake worker or node is a local directory with its own
$HOME and its processes run on this machine, so every shell line the scripts send really runs; a quoting or
ordering mistake fails here. The heavy steps are stand-ins: uv (checks its command lines), the trainer
(tests/fake_cluster/fake_trainer.py, which prints the jax.distributed call grow_jax.distributed would make and,
in two tests, really makes it: two processes on localhost CPU, through JAX's own TPU or our SLURM setup)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import processes

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
FAKE = REPO / "tests" / "fake_cluster"
TPU = ["--name=grow", "--zone=us-central2-b", "--project=my-proj"]
WORKERS = 2

pytestmark = pytest.mark.skipif(any(not os.path.exists(f"/usr/bin/{c}") and not os.path.exists(f"/bin/{c}")
                                    for c in ("setsid", "ps")), reason="needs util-linux setsid and procps ps")


@pytest.fixture
def cluster(tmp_path):
  """The environment that puts the fakes first on PATH; worker/node directories under tmp_path."""
  env = {**os.environ,
         "PATH": f"{FAKE / 'bin'}{os.pathsep}{os.environ['PATH']}",
         "FAKE_TPU_ROOT": str(tmp_path / "tpu"), "FAKE_TPU_WORKERS": str(WORKERS),
         "FAKE_SLURM_ROOT": str(tmp_path / "slurm"), "FAKE_REAL_PYTHON": sys.executable,
         "FAKE_TPU_PORT": str(processes.free_port()), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  for var in ("GROW_JAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT", "FAKE_GCLOUD_DROP"):
    env.pop(var, None)
  yield env
  for pid_file in (tmp_path / "tpu").glob("worker*/grow_jax/run.pid"):  # a failed test may leave a trainer
    try:
      os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (ProcessLookupError, ValueError):
      pass


def launch(script, *args, env, expect=0, timeout=120):
  cmd = [sys.executable, str(LAUNCH / script)] if script.endswith(".py") else [str(LAUNCH / script)]
  proc = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
  assert proc.returncode == expect, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
  return proc


def worker(env, i):
  return Path(env["FAKE_TPU_ROOT"]) / f"worker{i}"


def provision(env):
  """What tpu_setup.sh leaves on each worker, minus the code: grow_jax/code and a venv whose python is fake."""
  for i in range(WORKERS):
    (worker(env, i) / "grow_jax" / "code").mkdir(parents=True)
    (worker(env, i) / "grow_jax" / "venv" / "bin").mkdir(parents=True)
    (worker(env, i) / "grow_jax" / "venv" / "bin" / "python").symlink_to(FAKE / "venv_python")


def json_objects(text):
  """Every JSON object printed in `text`: the workers share one stdout, so two reports can share a line."""
  decoder, found, i = json.JSONDecoder(), [], text.find("{")
  while i != -1:
    try:
      obj, end = decoder.raw_decode(text, i)
    except json.JSONDecodeError:
      end = i + 1
    else:
      found.append(obj)
    i = text.find("{", end)
  return found


def trainer_runs(home):
  path = Path(home) / "trainer.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_runs(home, count, timeout=30):
  """The trainer records on a worker once there are `count` of them (a detached trainer starts a moment later)."""
  deadline = time.monotonic() + timeout
  while len(runs := trainer_runs(home)) < count and time.monotonic() < deadline:
    time.sleep(0.1)
  assert len(runs) == count, runs
  return runs


def trainer_lines(text):
  """The fake trainers' reports in a job log. Tasks share the log, so one report can end where another begins."""
  decoder, marker = json.JSONDecoder(), "FAKE_TRAINER "
  return [decoder.raw_decode(part)[0] for part in text.split(marker)[1:]]


def alive(pid):
  stat = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
  return bool(stat) and not stat.startswith("Z")


# ------------------------------------------------------------------------------------------------- TPU VM


@pytest.mark.slow
def test_tpu_setup_installs_with_uv_and_starts_jax_distributed_on_every_worker(cluster):
  if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode:
    pytest.skip("not a git checkout with a commit")
  start = time.monotonic()
  proc = launch("tpu_setup.sh", *TPU, env=cluster)
  for i in range(WORKERS):
    home = worker(cluster, i)
    # The archive of this checkout is unpacked, uv installed by its (fake) installer and run as tpu_setup says.
    assert (home / "grow_jax" / "code" / "grow_jax" / "distributed.py").exists()
    assert not (home / "grow_jax.tar.gz").exists()
    assert (home / "uv.log").read_text().splitlines() == [
        "uv venv -q --python 3.11 grow_jax/venv",
        "uv pip install -q --python grow_jax/venv/bin/python -e './grow_jax/code[tpu]'"]
  # Both workers really started jax.distributed together, with GROW_JAX_DISTRIBUTED=tpu: no arguments, JAX's
  # own TPU cluster detection (fed TPU_WORKER_HOSTNAMES/TPU_WORKER_ID by the fake venv python), then an all-gather.
  reports = sorted((r for r in json_objects(proc.stdout) if isinstance(r, dict) and "process_index" in r),
                   key=lambda r: r["process_index"])
  assert [(r["process_index"], r["process_count"], r["allgather"]) for r in reports] == [(0, 2, [0, 1]), (1, 2, [0, 1])]
  assert all(r["plan"] == {"mode": "tpu", "why": "$GROW_JAX_DISTRIBUTED", "kwargs": {}} for r in reports)
  assert time.monotonic() - start < 60
  # Again: uv is kept, the virtualenv made anew.
  launch("tpu_setup.sh", *TPU, env=cluster)
  assert (worker(cluster, 0) / "uv.log").read_text().count("uv venv") == 2
  assert (worker(cluster, 0) / "uv.log").read_text().count("uv pip install") == 2


def test_tpu_setup_refuses_while_a_run_is_alive(cluster):
  provision(cluster)
  launch("tpu_run.sh", *TPU, "--config=configs/x.py", "--workdir=gs://b/w", "--env=FAKE_SLEEP=60", env=cluster)
  err = launch("tpu_setup.sh", *TPU, "--git-url=https://example.com/x.git", env=cluster, expect=1).stderr
  assert "grow_jax.main is running: stop it with tpu_run.sh --kill" in err
  launch("tpu_run.sh", *TPU, "--kill", env=cluster)


def test_tpu_run_starts_attaches_refuses_and_kills(cluster):
  provision(cluster)
  start = [*TPU, "--config=configs/x.py", "--workdir=gs://b/w", "--env=FAKE_SLEEP=60", "--", "--config.name=a b"]
  launch("tpu_run.sh", *start, env=cluster)
  pids = []
  for i in range(WORKERS):
    [run] = wait_for_runs(worker(cluster, i), 1)
    assert run["argv"] == ["--config=configs/x.py", "--workdir=gs://b/w", "--config.name=a b"]
    assert run["cwd"] == str(worker(cluster, i) / "grow_jax" / "code")
    assert run["env"]["GROW_JAX_DISTRIBUTED"] == "tpu" and run["env"]["FAKE_LAUNCHED_JAX_PLATFORMS"] == "tpu"
    assert alive(run["pid"])  # after the ssh session ended
    pids.append(run["pid"])
  # The same command again (what gcloud's retry sends) attaches; a different one is refused.
  assert launch("tpu_run.sh", *start, env=cluster).stderr.count("the same command is running: attaching") == WORKERS
  other = launch("tpu_run.sh", *start[:-1], "--config.name=b", env=cluster, expect=1).stderr
  assert "grow_jax.main is running another command (~/grow_jax/run.cmd): stop it with --kill" in other
  assert all(len(trainer_runs(worker(cluster, i))) == 1 for i in range(WORKERS))
  launch("tpu_run.sh", *TPU, "--kill", env=cluster)
  assert not any(alive(pid) for pid in pids)
  assert not (worker(cluster, 0) / "grow_jax" / "run.pid").exists()
  # After the kill a different command starts.
  launch("tpu_run.sh", *start[:-1], "--config.name=b", env=cluster)
  for i in range(WORKERS):
    assert wait_for_runs(worker(cluster, i), 2)[1]["argv"][-1] == "--config.name=b"
  launch("tpu_run.sh", *TPU, "--kill", env=cluster)


@pytest.mark.parametrize("drop, sleep, status", [
    (None, 0, 3),      # --wait returns the trainer's status
    (0.5, 2, 3),       # the connection drops while waiting: the retry attaches and returns the status
    (3, 0, 0),         # it drops after the run ended: the retry reports that run instead of training again
])
def test_tpu_run_wait_survives_gcloud_retries(cluster, drop, sleep, status):
  provision(cluster)
  env = {**cluster, **({"FAKE_GCLOUD_DROP": str(drop)} if drop else {})}
  proc = launch("tpu_run.sh", *TPU, "--config=configs/x.py", "--workdir=gs://b/w", f"--env=FAKE_SLEEP={sleep}",
                f"--env=FAKE_EXIT={status}", "--wait", env=env, expect=status)
  for i in range(WORKERS):
    assert len(trainer_runs(worker(cluster, i))) == 1   # never a second trainer
    assert (worker(cluster, i) / "grow_jax" / "run.log").read_text().count("UTC") == 1   # one `date -u` banner
  if drop:
    log = (Path(cluster["FAKE_TPU_ROOT"]) / "gcloud.log").read_text()
    assert log.count("connection dropped") == WORKERS
    assert proc.stderr.count("attaching" if sleep else "already ran to its end") == WORKERS


@pytest.mark.slow
def test_sweep_on_tpu_records_no_failure_when_gcloud_retries(cluster):
  provision(cluster)
  env = {**cluster, "FAKE_GCLOUD_DROP": "0.5"}
  launch("sweep.py", "tests/fixtures/launch/tiny_sweep.py", "--workdir=gs://b/exp", "--mode=tpu",
         "--", *TPU, "--env=FAKE_SLEEP=1.5", env=env)
  for i in range(WORKERS):
    runs = trainer_runs(worker(cluster, i))
    assert [r["argv"][1] for r in runs] == [f"--workdir=gs://b/exp/tiny_sweep/mode={m},seed=0" for m in ("g_freeze", "sft")]


def test_stage_model_copies_to_the_same_path_on_every_worker(cluster, tmp_path):
  home = tmp_path / "laptop"
  model = home / "models" / "gemma-3-1b-it"
  model.mkdir(parents=True)
  (model / "config.json").write_text("{}")
  (model / "it's model.safetensors").write_text("weights v1")
  env = {**cluster, "HOME": str(home)}
  out = launch("stage_model.sh", *TPU, "--src=~/models/gemma-3-1b-it", env=env).stdout
  for i in range(WORKERS):
    staged = worker(cluster, i) / "models" / "gemma-3-1b-it"
    assert sorted(p.name for p in staged.iterdir()) == ["config.json", "it's model.safetensors"]
    assert f"{staged}: " in out
  # Again, after the model changed: replaced, nothing left over.
  (model / "it's model.safetensors").write_text("weights v2")
  (model / "config.json").unlink()
  launch("stage_model.sh", *TPU, f"--src={model}", env=env)
  for i in range(WORKERS):
    models = worker(cluster, i) / "models"
    assert sorted(p.name for p in models.iterdir()) == ["gemma-3-1b-it"]
    assert [p.read_text() for p in (models / "gemma-3-1b-it").iterdir()] == ["weights v2"]


def test_stage_model_from_gcs(cluster):
  bucket = Path(cluster["FAKE_TPU_ROOT"]) / "gcs" / "bkt" / "gemma"
  (bucket / "sub dir").mkdir(parents=True)
  (bucket / "config.json").write_text("{}")
  (bucket / "sub dir" / "tokenizer.json").write_text("t")
  launch("stage_model.sh", *TPU, "--src=gs://bkt/gemma/", "--dest=~/models/gemma", env=cluster)
  for i in range(WORKERS):
    staged = worker(cluster, i) / "models" / "gemma"
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*")) == [
        "config.json", "sub dir", "sub dir/tokenizer.json"]


# -------------------------------------------------------------------------------------------------- SLURM


def sbatch(env, *args, expect=0):
  proc = subprocess.run(["sbatch", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  output = Path(env["FAKE_SLURM_ROOT"]) / "grow_jax-4242.out"
  log = output.read_text() if output.exists() else ""
  assert proc.returncode == expect, f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}\njob log:\n{log}"
  return sorted(trainer_lines(log), key=lambda r: int(r["env"]["SLURM_PROCID"])), log


@pytest.mark.parametrize("options, layout", [
    # one process per node drives all its GPUs
    (["--nodes=2", "--gpus-per-node=4"], [("node01", [0, 1, 2, 3]), ("node02", [0, 1, 2, 3])]),
    # one process per GPU, every process seeing the node's GPUs: each drives GPU SLURM_LOCALID
    (["--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2"],
     [("node01", [0]), ("node01", [1]), ("node02", [0]), ("node02", [1])]),
    # one process per GPU bound by SLURM (--gpus-per-task=1): each drives its only GPU
    (["--nodes=2", "--ntasks-per-node=2", "--gpus-per-task=1"],
     [("node01", [0]), ("node01", [0]), ("node02", [0]), ("node02", [0])]),
])
def test_slurm_every_process_gets_its_distributed_arguments(cluster, options, layout):
  env = {k: v for k, v in cluster.items() if not k.endswith("MEM_FRACTION")}
  runs, _ = sbatch(env, *options, "launch/slurm.sbatch", "--config=configs/x.py", "--workdir=/shared/w",
                   "--", "--config.name=a b")
  assert [(Path(r["home"]).name, r["plan"]["kwargs"]["local_device_ids"]) for r in runs] == layout
  for i, run in enumerate(runs):
    assert run["argv"] == ["--config=configs/x.py", "--workdir=/shared/w", "--config.name=a b"]
    assert run["env"]["JAX_PLATFORMS"] == "cuda" and run["env"]["GROW_JAX_DISTRIBUTED"] == "slurm"
    assert run["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9" and "XLA_CLIENT_MEM_FRACTION" not in run["env"]
    assert run["plan"] == {"mode": "slurm", "kwargs": {
        "coordinator_address": "node01:61586", "num_processes": len(layout), "process_id": i,
        "local_device_ids": layout[i][1], "cluster_detection_method": "deactivate"}}


@pytest.mark.slow
def test_slurm_really_starts_jax_distributed_on_two_nodes(cluster):
  env = {**cluster, "FAKE_SLURM_NODELIST": "localhost,127.0.0.1", "JAX_COORDINATOR_PORT": str(processes.free_port()),
         "FAKE_TRAINER_INIT": "1"}
  start = time.monotonic()
  runs, log = sbatch(env, "--nodes=2", "--gpus-per-node=2", "launch/slurm.sbatch", "--config=configs/x.py",
                     "--workdir=/shared/w", "--jax-platforms=cpu")
  assert time.monotonic() - start < 30, log
  assert [(r["process_index"], r["process_count"], r["allgather"]) for r in runs] == [(0, 2, [0, 1]), (1, 2, [0, 1])]
  assert [r["plan"]["kwargs"]["coordinator_address"] for r in runs] == [f"localhost:{env['JAX_COORDINATOR_PORT']}"] * 2


def test_slurm_stages_the_model_on_every_node_before_training(cluster, tmp_path):
  model = tmp_path / "shared" / "gemma"
  model.mkdir(parents=True)
  (model / "config.json").write_text("{}")
  runs, log = sbatch(cluster, "--nodes=2", "launch/slurm.sbatch", "--config=configs/x.py", "--workdir=/shared/w",
                     f"--stage-src={model}", "--stage-dest=~/local/gemma")
  slurm = Path(cluster["FAKE_SLURM_ROOT"])
  for node in ("node01", "node02"):
    assert (slurm / node / "local" / "gemma" / "config.json").read_text() == "{}"
    assert f"{slurm / node / 'local' / 'gemma'}: " in log
  assert len(runs) == 2 and log.index("local/gemma: ") < log.index("FAKE_TRAINER")


@pytest.mark.slow
def test_slurm_a_failing_process_fails_the_job(cluster):
  # Both record themselves, then fail after a pause: a task that failed at once would get its peer killed
  # (--kill-on-bad-exit) before a loaded machine had even started it.
  runs, log = sbatch({**cluster, "FAKE_EXIT": "5", "FAKE_SLEEP": "5"}, "--nodes=2", "launch/slurm.sbatch", "--config=configs/x.py",
                     "--workdir=/shared/w", expect=5)
  assert len(runs) == 2
