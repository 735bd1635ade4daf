"""grow_jax.distributed: the jax.distributed.initialize call each mode makes, computed from an environment mapping
without starting JAX (the launch tests run it inside fake SLURM nodes and TPU workers, and once for real)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grow_jax import distributed
from grow_jax.distributed import DistributedConfigError, plan

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "grow_jax" / "distributed.py"


def srun_env(procid=0, ntasks=2, localid=0, nodeid=0, tasks_per_node="1(x2)", nodelist="gpu-[07-08]", **extra):
  """What srun puts in a task's environment (plus `extra`)."""
  env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist,
         "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_PROCID": str(procid),
         "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid), "SLURM_STEP_TASKS_PER_NODE": tasks_per_node}
  env.update(extra)
  return env


# --------------------------------------------------------------------------------------------------- modes


def test_off_by_default_on_a_plain_machine():
  assert plan(None, {}) == distributed.Plan("off", "auto: no coordinator arguments, no srun step, no TPU VM", None)


def test_the_argument_beats_the_environment_variable_which_beats_auto():
  assert plan("off", {"GROW_JAX_DISTRIBUTED": "tpu"}).mode == "off"
  assert plan(None, {"GROW_JAX_DISTRIBUTED": "tpu"}) == distributed.Plan("tpu", "$GROW_JAX_DISTRIBUTED", {})
  assert plan(None, {"GROW_JAX_DISTRIBUTED": " "}).mode == "off"   # blank: unset


def test_unknown_mode_is_an_error():
  with pytest.raises(DistributedConfigError, match=r"unknown distributed mode 'gpu' \(from \$GROW_JAX_DISTRIBUTED\)"):
    plan(None, {"GROW_JAX_DISTRIBUTED": "gpu"})


def test_explicit_passes_the_three_arguments_and_switches_jax_detection_off():
  # Inside a SLURM step JAX's own detection would add local_device_ids=[SLURM_LOCALID]: one GPU per node.
  got = plan(None, srun_env(), coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
  assert got.mode == "explicit"
  assert got.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                        "cluster_detection_method": "deactivate"}


def test_explicit_honours_local_device_ids_and_jax_local_device_ids():
  args = dict(coordinator_address="h:1", num_processes=2, process_id=0)
  assert plan("explicit", {}, local_device_ids=(0, 1), **args).kwargs["local_device_ids"] == [0, 1]
  assert plan("explicit", {"JAX_LOCAL_DEVICE_IDS": "2,3"}, **args).kwargs["local_device_ids"] == [2, 3]


@pytest.mark.parametrize("args, message", [
    ({"coordinator_address": "h:1"}, "needs num_processes, process_id"),
    ({"num_processes": 2}, "needs coordinator_address, process_id"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "process_id=2 and num_processes=2"),
    ({"coordinator_address": "h", "num_processes": 2, "process_id": 0}, "must be HOST:PORT"),
])
def test_explicit_checks_its_arguments(args, message):
  with pytest.raises(DistributedConfigError, match=message):
    plan(None, {}, **args)


def test_off_with_coordinator_arguments_is_a_contradiction():
  with pytest.raises(DistributedConfigError, match=r"mode off \(from argument\) contradicts"):
    plan("off", {}, coordinator_address="h:1", num_processes=2, process_id=0)


def test_tpu_leaves_everything_to_jax_but_passes_what_is_given():
  assert plan("tpu", {}).kwargs == {}
  assert plan("tpu", {}, coordinator_address="w0:8476").kwargs == {"coordinator_address": "w0:8476"}


@pytest.mark.parametrize("env, tpu_vm, mode", [
    (srun_env(), True, "slurm"),                                    # an srun step of 2 tasks
    (srun_env(ntasks=1, tasks_per_node="1"), False, "off"),         # a 1-task step: nothing to coordinate
    ({k: v for k, v in srun_env().items() if "STEP" not in k}, False, "off"),   # the batch script's own shell
    ({k: v for k, v in srun_env().items() if "NTASKS" not in k and "NUM_TASKS" not in k}, False, "off"),
    ({}, True, "tpu"),
    ({}, False, "off"),
])
def test_auto_detection(env, tpu_vm, mode):
  assert plan(None, env, tpu_vm=tpu_vm).mode == mode


# ---------------------------------------------------------------------------------------------------- SLURM


def test_slurm_one_process_per_node_drives_every_visible_gpu():
  # SLURM gave this job GPUs 4-7 of the node: CUDA numbers them 0-3 for the process (JAX's ordinals).
  got = plan("slurm", srun_env(procid=1, nodeid=1, CUDA_VISIBLE_DEVICES="4,5,6,7"))
  assert got.kwargs == {"coordinator_address": "gpu-07:61586", "num_processes": 2, "process_id": 1,
                        "local_device_ids": [0, 1, 2, 3], "cluster_detection_method": "deactivate"}


def test_slurm_port_is_jax_default_range_above_linux_ephemeral_ports():
  for job in ("0", "4095", "4242", "99999999"):
    port = int(plan("slurm", srun_env(SLURM_JOB_ID=job)).kwargs["coordinator_address"].rsplit(":", 1)[1])
    assert 61000 <= 61440 <= port <= 65535   # Linux's ip_local_port_range ends at 60999
  assert plan("slurm", srun_env(JAX_COORDINATOR_PORT="7000")).kwargs["coordinator_address"] == "gpu-07:7000"
  assert plan("slurm", srun_env(JAX_COORDINATOR_ADDRESS="10.1.1.1:9")).kwargs["coordinator_address"] == "10.1.1.1:9"


@pytest.mark.parametrize("visible, tasks, localid, per_task, expected", [
    ("0,1,2,3,4,5,6,7", "8(x2)", 5, None, [5]),       # --ntasks-per-node=8 --gpus-per-node=8: one GPU per process
    ("3", "8(x2)", 3, "1", [0]),                       # --gpus-per-task=1: each task sees only its GPU
    ("0,1,2,3", "2(x2)", 1, None, [2, 3]),             # two processes per node, two GPUs each
    ("2,3", "2(x2)", 1, "2", [0, 1]),                  # --gpus-per-task=2: bound, each sees its two
    ("0,1,2,3", "1(x2)", 0, None, [0, 1, 2, 3]),
    (None, "4(x2)", 2, None, [2]),                     # no GPU variables: JAX's own rule, [SLURM_LOCALID]
    (None, "1(x2)", 0, None, None),                    # ... and with one task per node, everything
    ("NoDevFiles", "1(x2)", 0, None, None),            # SLURM's marker for a job without GPUs
])
def test_slurm_local_device_ids(visible, tasks, localid, per_task, expected):
  extra = {k: v for k, v in (("CUDA_VISIBLE_DEVICES", visible), ("SLURM_GPUS_PER_TASK", per_task)) if v is not None}
  kwargs = plan("slurm", srun_env(localid=localid, tasks_per_node=tasks, ntasks=16, procid=localid, **extra)).kwargs
  assert kwargs.get("local_device_ids") == expected


def test_slurm_gpu_count_falls_back_to_slurm_gpus_on_node_and_jax_local_device_ids_wins():
  assert plan("slurm", srun_env(SLURM_GPUS_ON_NODE="2")).kwargs["local_device_ids"] == [0, 1]
  assert plan("slurm", srun_env(SLURM_GPUS_ON_NODE="2", JAX_LOCAL_DEVICE_IDS="1")).kwargs["local_device_ids"] == [1]


def test_slurm_uneven_gpu_split_is_an_error():
  with pytest.raises(DistributedConfigError, match="3 tasks on this node share 4 visible GPUs"):
    plan("slurm", srun_env(tasks_per_node="3(x2)", ntasks=6, CUDA_VISIBLE_DEVICES="0,1,2,3"))


def test_slurm_outside_srun_names_the_missing_variable():
  with pytest.raises(DistributedConfigError, match=r"needs \$SLURM_PROCID: start the processes with srun"):
    plan("slurm", {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"})


def test_slurm_explicit_arguments_override_the_environment():
  kwargs = plan("slurm", srun_env(), coordinator_address="head:1234").kwargs
  assert kwargs["coordinator_address"] == "head:1234" and kwargs["process_id"] == 0


@pytest.mark.parametrize("nodelist, first", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,001-003]", "node007"), ("gpu-[07-08]-ib", "gpu-07-ib"), ("r[1-2]-n[03-04],x", "r1-n03"),
    (" a1 ", "a1"),
])
def test_first_host_of_a_hostlist(nodelist, first):
  assert distributed.first_host(nodelist) == first


def test_tasks_per_node_expansion():
  assert distributed.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
  assert distributed.tasks_on_this_node({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3"}) == 1
  assert distributed.tasks_on_this_node({"SLURM_NTASKS_PER_NODE": "4"}) == 4
  assert distributed.tasks_on_this_node({}) == 1


# ------------------------------------------------------------------------------------------ TPU VM probe


def fake_pci(root, devices):
  for i, (vendor, device) in enumerate(devices):
    d = root / f"0000:00:0{i}.0"
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
  return str(root)


def test_tpu_vm_needs_libtpu_and_a_tpu_chip_like_jax(tmp_path):
  libtpu = tmp_path / "libtpu.so"
  libtpu.write_text("")
  tpu = fake_pci(tmp_path / "tpu", [("0x8086", "0x1234"), ("0x1ae0", "0x0063")])   # a v5e chip
  other = fake_pci(tmp_path / "other", [("0x1ae0", "0x0001"), ("0x10de", "0x2330")])   # gVNIC, an H100
  assert distributed.tpu_vm_present({"TPU_LIBRARY_PATH": str(libtpu)}, sysfs=tpu)
  assert not distributed.tpu_vm_present({"TPU_LIBRARY_PATH": str(libtpu)}, sysfs=other)
  if importlib.util.find_spec("libtpu") is None:
    assert not distributed.tpu_vm_present({}, sysfs=tpu)
  assert distributed.tpu_vm_present({"JAX_FORCE_TPU_INIT": "1"}, sysfs=other)


# -------------------------------------------------------------------------------------- standalone use


def test_module_imports_no_jax_and_no_grow_jax_module():
  text = SOURCE.read_text()
  top_level = [l for l in text.splitlines() if l.startswith(("import ", "from "))]
  assert not [l for l in top_level if "jax" in l.split("#")[0].replace("__future__", "")], top_level


def test_command_line_prints_the_plan_standalone(tmp_path):
  (tmp_path / "jax").mkdir()
  (tmp_path / "jax" / "__init__.py").write_text("raise ImportError('the plan must not import jax')\n")
  env = {**os.environ, **srun_env(procid=1, nodeid=1, CUDA_VISIBLE_DEVICES="0,1"), "PYTHONPATH": str(tmp_path),
         "GROW_JAX_DISTRIBUTED": "slurm"}
  proc = subprocess.run([sys.executable, str(SOURCE)], capture_output=True, text=True, env=env, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)["kwargs"] == {"coordinator_address": "gpu-07:61586", "num_processes": 2,
                                               "process_id": 1, "local_device_ids": [0, 1],
                                               "cluster_detection_method": "deactivate"}
  bad = subprocess.run([sys.executable, str(SOURCE), "--mode=explicit"], capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and bad.stderr.startswith("grow_jax.distributed: error: distributed mode explicit")


def test_initialize_in_mode_off_does_not_touch_jax(monkeypatch):
  monkeypatch.setitem(sys.modules, "jax", None)   # importing jax would raise
  assert distributed.initialize("off", env={}).kwargs is None
