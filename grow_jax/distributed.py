"""Starting JAX's distributed system: which `jax.distributed.initialize(...)` call a process makes, and why.

Modes (the `mode` argument, else $GROW_JAX_DISTRIBUTED, else "auto"):

  off       single process: no call. For a laptop, one GPU box, one TPU VM host used alone.
  explicit  coordinator_address, num_processes and process_id are given (main.py's --coordinator_address,
            --num_processes, --process_id); every process sees all its local devices unless local_device_ids
            (or JAX's $JAX_LOCAL_DEVICE_IDS) says otherwise. JAX's cluster auto-detection is switched off
            (cluster_detection_method="deactivate"): inside a SLURM step it would otherwise quietly restrict
            each process to GPU $SLURM_LOCALID.
  tpu       a Cloud TPU VM slice: `jax.distributed.initialize()` with no arguments; JAX reads the coordinator,
            the process count and this worker's id from the TPU VM metadata server (GCE: tpus tpu-vm create,
            queued resources) or from $TPU_WORKER_HOSTNAMES/$TPU_WORKER_ID (GKE). Set by
            launch/tpu_run.sh and launch/tpu_setup.sh.
  slurm     inside an `srun` step: every argument is computed here from the SLURM_* variables (see
            slurm_kwargs), including local_device_ids, so both layouts work: one process per node driving all
            of the node's GPUs, and one process per GPU. Set by launch/slurm.sbatch.
  auto      explicit if coordinator_address or num_processes is given; else slurm inside an srun step of
            more than one task; else tpu on a Cloud TPU VM (libtpu installed and a TPU chip on the PCI bus, as
            JAX itself decides; a single-host VM then gets a 1-process distributed system, and a TPU VM that
            JAX cannot identify as a cluster falls back to off with a warning); else off.

Arguments given explicitly always win over what a mode derives from the environment (e.g. a coordinator
address in slurm mode). An unknown mode, or arguments that contradict the mode, raise DistributedConfigError
(a ValueError) before JAX starts.

grow_jax/main.py calls `initialize(--distributed, --coordinator_address, --num_processes, --process_id)` first
thing, before anything touches a device; a DistributedConfigError becomes one line and exit status 2.
Environment read here: GROW_JAX_DISTRIBUTED, SLURM_*, CUDA_VISIBLE_DEVICES, JAX_COORDINATOR_ADDRESS,
JAX_COORDINATOR_PORT, JAX_LOCAL_DEVICE_IDS, JAX_FORCE_TPU_INIT, TPU_LIBRARY_PATH.

The launchers also set JAX_PLATFORMS (tpu on a TPU VM, cuda on SLURM) so that a process that lost its
accelerator fails at start instead of training on the CPU.

Command line (no grow_jax import: runs as `python grow_jax/distributed.py` too):

    python -m grow_jax.distributed [--mode=MODE]        # prints the resolved call as JSON; JAX is not started
    python -m grow_jax.distributed --initialize         # starts it, then prints process index/count, devices
                                                        # and an all-gather of the process indices
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence

ENV_VAR = "GROW_JAX_DISTRIBUTED"
MODES = ("auto", "off", "explicit", "tpu", "slurm")

# The SLURM coordinator port when $JAX_COORDINATOR_PORT is unset: JAX's own choice (jax/_src/clusters/
# slurm_cluster.py), 61440 + job id mod 4096, i.e. 61440-65535: above Linux's ephemeral range (32768-60999,
# net.ipv4.ip_local_port_range), so no outgoing connection on the node can already hold it.
SLURM_PORT_BASE = 61440
SLURM_PORT_SPAN = 4096

# PCI ids of TPU chips, as in jax/_src/hardware_utils.py (vendor 0x1ae0 is Google).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})

log = logging.getLogger(__name__)


class DistributedConfigError(ValueError):
  """The mode, the arguments and the environment do not make one consistent distributed setup."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What initialize() does: `mode` is the resolved mode (never auto), `why` how it was chosen, `kwargs` the
  keyword arguments of jax.distributed.initialize (None: no call)."""
  mode: str
  why: str
  kwargs: dict | None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)


# ------------------------------------------------------------------------------------------ pure functions


def plan(mode: str | None, env: Mapping[str, str], *, coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None,
         local_device_ids: Sequence[int] | None = None, tpu_vm: bool = False) -> Plan:
  """The call initialize() makes, from the mode, the explicit arguments and an environment mapping; pure.

  `tpu_vm` says whether this machine is a Cloud TPU VM (tpu_vm_present()); only auto mode looks at it.
  """
  explicit = {k: v for k, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                ("process_id", process_id)) if v is not None}
  if local_device_ids is not None:
    local_device_ids = [int(i) for i in local_device_ids]
  if mode is not None:
    why = "argument"
  elif env.get(ENV_VAR, "").strip():
    mode, why = env[ENV_VAR].strip(), f"${ENV_VAR}"
  else:
    mode, why = "auto", "default"
  if mode not in MODES:
    raise DistributedConfigError(f"unknown distributed mode {mode!r} (from {why}); one of {', '.join(MODES)}")

  if mode == "auto":
    if "coordinator_address" in explicit or "num_processes" in explicit:
      mode, why = "explicit", "auto: coordinator_address/num_processes given"
    elif _in_srun_step(env) and _int_env(env, _slurm_ntasks_var(env), 1) > 1:
      mode, why = "slurm", f"auto: srun step of {env[_slurm_ntasks_var(env)]} tasks"
    elif tpu_vm:
      mode, why = "tpu", "auto: Cloud TPU VM"
    else:
      mode, why = "off", "auto: no coordinator arguments, no srun step, no TPU VM"

  if mode == "off":
    if explicit or local_device_ids is not None:
      raise DistributedConfigError(f"distributed mode off (from {why}) contradicts the arguments "
                                   f"{sorted([*explicit, *(['local_device_ids'] if local_device_ids else [])])}")
    return Plan("off", why, None)
  if mode == "explicit":
    missing = [k for k in ("coordinator_address", "num_processes", "process_id") if k not in explicit]
    if missing:
      raise DistributedConfigError(f"distributed mode explicit (from {why}) needs {', '.join(missing)} "
                                   f"(main.py: --{' --'.join(missing)})")
    kwargs = dict(explicit)
    ids = local_device_ids if local_device_ids is not None else _jax_local_device_ids(env)
    if ids is not None:
      kwargs["local_device_ids"] = ids
    kwargs["cluster_detection_method"] = "deactivate"
    return Plan("explicit", why, _check(kwargs, why))
  if mode == "tpu":
    kwargs = dict(explicit)
    if local_device_ids is not None:
      kwargs["local_device_ids"] = local_device_ids
    return Plan("tpu", why, kwargs)
  # slurm
  kwargs = slurm_kwargs(env, why)
  kwargs.update(explicit)
  if local_device_ids is not None:
    kwargs["local_device_ids"] = local_device_ids
  return Plan("slurm", why, _check(kwargs, why))


def slurm_kwargs(env: Mapping[str, str], why: str = "slurm") -> dict:
  """jax.distributed.initialize's arguments inside an srun step, from its SLURM_* variables.

  coordinator_address: $JAX_COORDINATOR_ADDRESS if set, else the step's first node (the first host of
    $SLURM_STEP_NODELIST, else $SLURM_JOB_NODELIST) on port $JAX_COORDINATOR_PORT, else 61440 + job id mod 4096.
  num_processes: the step's task count ($SLURM_STEP_NUM_TASKS, else $SLURM_NTASKS); process_id: $SLURM_PROCID.
  local_device_ids, the CUDA ordinals this process drives (ordinals count the GPUs CUDA_VISIBLE_DEVICES leaves
  visible, from 0, whatever their physical numbers), from V visible GPUs ($CUDA_VISIBLE_DEVICES, else
  $SLURM_GPUS_ON_NODE) and T tasks of the step on this node:
    $JAX_LOCAL_DEVICE_IDS set   -> those;
    no GPU information          -> [$SLURM_LOCALID] if T > 1 (JAX's own rule), else all devices (None);
    T == 1                      -> all V: one process per node drives every GPU of the node;
    V < T, or V == $SLURM_GPUS_PER_TASK
                                -> all V: SLURM bound this task to its own GPUs (--gpus-per-task, --gpu-bind);
    V divisible by T            -> the task's V/T consecutive ordinals from $SLURM_LOCALID * V/T: e.g. one
                                   process per GPU with --ntasks-per-node=8 --gpus-per-node=8 -> [$SLURM_LOCALID];
    else                        -> DistributedConfigError.
  """
  ntasks_var = _slurm_ntasks_var(env)
  for var in ("SLURM_JOB_ID", "SLURM_PROCID", ntasks_var):
    if not env.get(var, "").strip():
      raise DistributedConfigError(f"distributed mode slurm (from {why}) needs ${var}: start the processes "
                                   f"with srun inside a SLURM allocation")
  coordinator = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
  if not coordinator:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    if not nodelist.strip():
      raise DistributedConfigError(f"distributed mode slurm (from {why}) needs $SLURM_STEP_NODELIST or "
                                   f"$SLURM_JOB_NODELIST")
    port = env.get("JAX_COORDINATOR_PORT", "").strip() or str(
        SLURM_PORT_BASE + _int_env(env, "SLURM_JOB_ID") % SLURM_PORT_SPAN)
    coordinator = f"{first_host(nodelist)}:{port}"
  kwargs = {"coordinator_address": coordinator, "num_processes": _int_env(env, ntasks_var),
            "process_id": _int_env(env, "SLURM_PROCID")}
  ids = _jax_local_device_ids(env)
  if ids is None:
    ids = slurm_local_device_ids(env)
  if ids is not None:
    kwargs["local_device_ids"] = ids
  kwargs["cluster_detection_method"] = "deactivate"
  return kwargs


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """The local_device_ids rule of slurm_kwargs (without $JAX_LOCAL_DEVICE_IDS); None: every local device."""
  local_id = _int_env(env, "SLURM_LOCALID", 0)
  tasks = max(tasks_on_this_node(env), local_id + 1)
  visible = visible_gpu_count(env)
  if visible is None:
    return [local_id] if tasks > 1 else None
  if tasks == 1:
    return list(range(visible))
  per_task = env.get("SLURM_GPUS_PER_TASK", "").strip()
  if visible < tasks or (per_task.isdigit() and int(per_task) == visible):
    return list(range(visible))
  if visible % tasks:
    raise DistributedConfigError(
        f"{tasks} tasks on this node share {visible} visible GPUs, which does not divide evenly: use one task per "
        f"node (--ntasks-per-node=1), one per GPU, or set $JAX_LOCAL_DEVICE_IDS")
  per = visible // tasks
  return list(range(local_id * per, (local_id + 1) * per))


def visible_gpu_count(env: Mapping[str, str]) -> int | None:
  """How many GPUs this process can see: entries of $CUDA_VISIBLE_DEVICES, else $SLURM_GPUS_ON_NODE."""
  cuda = env.get("CUDA_VISIBLE_DEVICES")
  if cuda is not None:
    cuda = cuda.strip()
    if cuda in ("", "NoDevFiles", "-1"):   # SLURM writes NoDevFiles when the job has no GPU gres
      return None
    return len([d for d in cuda.split(",") if d.strip()])
  on_node = env.get("SLURM_GPUS_ON_NODE", "").strip()
  return int(on_node) if on_node.isdigit() else None


def tasks_on_this_node(env: Mapping[str, str]) -> int:
  """The srun step's task count on this node: $SLURM_STEP_TASKS_PER_NODE (else $SLURM_TASKS_PER_NODE, e.g.
  "2(x3),1") at index $SLURM_NODEID, else $SLURM_NTASKS_PER_NODE, else 1."""
  for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
    if env.get(var, "").strip():
      counts = expand_tasks_per_node(env[var])
      node = _int_env(env, "SLURM_NODEID", 0)
      if node < len(counts):
        return counts[node]
  per_node = env.get("SLURM_NTASKS_PER_NODE", "").strip()
  return int(per_node) if per_node.isdigit() else 1


def expand_tasks_per_node(value: str) -> list[int]:
  """SLURM's compressed per-node counts: "2(x3),1" -> [2, 2, 2, 1]."""
  counts = []
  for part in value.split(","):
    match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not match:
      raise DistributedConfigError(f"cannot read a tasks-per-node value {value!r}")
    counts += [int(match[1])] * int(match[2] or 1)
  return counts


def first_host(nodelist: str) -> str:
  """The first host of a SLURM hostlist: "gpu-[07-09,12],cpu1" -> "gpu-07", "r[1-2]-n[03-04]" -> "r1-n03"."""
  depth, end = 0, len(nodelist)
  for i, ch in enumerate(nodelist):
    depth += ch == "["
    depth -= ch == "]"
    if ch == "," and depth == 0:
      end = i
      break
  first = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m[1])[0].strip(), nodelist[:end].strip())
  if not first or "[" in first or "]" in first:
    raise DistributedConfigError(f"cannot read the first host of the SLURM node list {nodelist!r}")
  return first


def tpu_vm_present(env: Mapping[str, str] = os.environ, sysfs: str = "/sys/bus/pci/devices") -> bool:
  """Whether JAX will treat this machine as a Cloud TPU VM, by JAX's own test (jax/_src/cloud_tpu_init.py):
  $JAX_FORCE_TPU_INIT, or libtpu installed ($TPU_LIBRARY_PATH or the libtpu package) and at least one TPU chip
  on the PCI bus. Reads files only; imports neither jax nor libtpu."""
  if "JAX_FORCE_TPU_INIT" in env:
    return True
  library = env.get("TPU_LIBRARY_PATH")
  if not ((library and os.path.isfile(library)) or importlib.util.find_spec("libtpu") is not None):
    return False
  for vendor_path in glob.glob(os.path.join(sysfs, "*", "vendor")):
    try:
      with open(vendor_path) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
        if f.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def _in_srun_step(env: Mapping[str, str]) -> bool:
  # srun sets SLURM_STEP_NODELIST (JAX's own SLURM detection needs it too); a batch script's shell has no step.
  return all(env.get(v, "").strip() for v in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NODELIST"))


def _slurm_ntasks_var(env: Mapping[str, str]) -> str:
  return "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS", "").strip() else "SLURM_NTASKS"


def _jax_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  value = env.get("JAX_LOCAL_DEVICE_IDS", "").strip()
  if not value:
    return None
  try:
    return [int(i) for i in value.split(",")]
  except ValueError:
    raise DistributedConfigError(f"$JAX_LOCAL_DEVICE_IDS must be comma-separated integers, not {value!r}") from None


def _int_env(env: Mapping[str, str], var: str, default: int | None = None) -> int:
  value = env.get(var, "").strip()
  if not value and default is not None:
    return default
  try:
    return int(value)
  except ValueError:
    raise DistributedConfigError(f"${var} must be an integer, not {value!r}") from None


def _check(kwargs: dict, why: str) -> dict:
  n, i = kwargs.get("num_processes"), kwargs.get("process_id")
  if not isinstance(n, int) or n < 1 or not isinstance(i, int) or not 0 <= i < n:
    raise DistributedConfigError(f"process_id={i} and num_processes={n} (from {why}) do not fit "
                                 f"0 <= process_id < num_processes")
  if ":" not in str(kwargs.get("coordinator_address", "")):
    raise DistributedConfigError(f"coordinator_address must be HOST:PORT, not {kwargs.get('coordinator_address')!r}")
  return kwargs


# ----------------------------------------------------------------------------------------------- start JAX


def initialize(mode: str | None = None, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               *, env: Mapping[str, str] | None = None) -> Plan:
  """Starts jax.distributed as `plan` says (nothing in mode off); returns the plan. Must run before anything
  touches a JAX device. A second call after a successful one does nothing."""
  env = os.environ if env is None else env
  wants_auto = (mode or env.get(ENV_VAR, "").strip() or "auto") == "auto"
  resolved = plan(mode, env, coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id, local_device_ids=local_device_ids,
                  tpu_vm=wants_auto and tpu_vm_present(env))
  log.info("grow_jax.distributed: mode %s (%s): %s", resolved.mode, resolved.why,
           "no jax.distributed.initialize" if resolved.kwargs is None
           else f"jax.distributed.initialize(**{resolved.kwargs})")
  if resolved.kwargs is None:
    return resolved
  import jax
  if jax.distributed.is_initialized():
    return resolved
  try:
    jax.distributed.initialize(**resolved.kwargs)
  except (ValueError, OSError) as e:  # JAX found no cluster to fill in the missing arguments / no metadata server
    if resolved.mode == "tpu" and wants_auto:
      log.warning("grow_jax.distributed: this TPU VM is not a cluster JAX recognizes (%s); single process", e)
      return Plan("off", f"{resolved.why}; JAX: {e}", None)
    if not isinstance(e, ValueError):
      raise
    raise DistributedConfigError(f"jax.distributed.initialize(**{resolved.kwargs}) in mode {resolved.mode} "
                                 f"({resolved.why}): {e}") from e
  return resolved


def _main(argv: Sequence[str]) -> int:
  """python -m grow_jax.distributed: print (or make) this process's jax.distributed.initialize call."""
  from absl import flags
  prog = "python -m grow_jax.distributed"
  args = flags.FlagValues()
  flags.DEFINE_enum("mode", None, MODES, f"default ${ENV_VAR}, else auto", flag_values=args)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0", flag_values=args)
  flags.DEFINE_integer("num_processes", None, "how many processes", flag_values=args)
  flags.DEFINE_integer("process_id", None, "this process's index", flag_values=args)
  flags.DEFINE_bool("initialize", False, "start it, then print process index/count, device counts and an "
                    "all-gather", flag_values=args)
  if "--help" in argv or "-h" in argv:
    print(f"usage: {prog} [flags]\n\n{args.get_help()}")
    return 0
  try:            # grow_jax.cli.parse's rules (this module imports nothing from grow_jax)
    rest = args([prog, *argv])[1:]
    if rest:
      raise flags.Error(f"unexpected arguments {rest}")
  except flags.Error as e:
    print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
    return 2
  explicit = dict(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                  process_id=args.process_id)
  try:
    if not args.initialize:
      wants_auto = (args.mode or os.environ.get(ENV_VAR, "").strip() or "auto") == "auto"
      print(plan(args.mode, os.environ, tpu_vm=wants_auto and tpu_vm_present(), **explicit).to_json(), flush=True)
      return 0
    resolved = initialize(args.mode, **explicit)
  except DistributedConfigError as e:
    print(f"grow_jax.distributed: error: {e}", file=sys.stderr, flush=True)
    return 2
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  gathered = multihost_utils.process_allgather(np.array([jax.process_index()]))
  print(json.dumps({"plan": dataclasses.asdict(resolved), "process_index": jax.process_index(),
                    "process_count": jax.process_count(), "local_device_count": jax.local_device_count(),
                    "device_count": jax.device_count(), "platform": jax.devices()[0].platform,
                    "allgather": np.asarray(gathered).reshape(-1).tolist()}, sort_keys=True), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
