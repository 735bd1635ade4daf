"""A tensor-parallel group that spans two processes (as make_mesh lays tensor=4 on a v5e 4x4, whose hosts hold 2x2
chips): both processes address the same batch rows, so each must load exactly those rows, and the run trains as
one process does. Two JAX processes on localhost, 4 CPU devices each."""

import os
import subprocess
import sys

import numpy as np
import pytest

import processes

pytestmark = pytest.mark.slow   # every test here: two trainer processes with gloo, against one

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/tiny.py:steps=4,layers_n=1,seq_len=16,accum=2", "--config.log_every_steps=1",
        "--config.checkpoint.every_steps=4", "--config.eval_every_steps=2", "--config.mesh.data=1",
        "--config.mesh.fsdp=4", "--config.mesh.tensor=2"]


def test_tensor_group_across_two_processes_trains_like_one_process(tmp_path):
  port = processes.free_port()
  multi = tmp_path / "multi"
  worker = [sys.executable, os.path.abspath(__file__), *ARGS, f"--workdir={multi}",
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  procs = [subprocess.Popen([*worker, f"--process_id={i}"], cwd=ROOT, env=processes.cpu_env(4),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
  single = subprocess.run([sys.executable, "-m", "grow_jax.main", *ARGS, f"--workdir={tmp_path / 'single'}"],
                          cwd=ROOT, env=processes.cpu_env(8), capture_output=True, text=True, timeout=600)
  errs = [err for _, err in processes.finish(procs, timeout=600)]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  assert "tensor groups span the processes" in errs[0]

  train_multi, eval_multi = processes.losses(multi)
  train_single, eval_single = processes.losses(tmp_path / "single")
  assert len(train_multi) == 4 and len(eval_multi) == 2
  np.testing.assert_allclose(train_multi, train_single, rtol=1e-5)
  np.testing.assert_allclose(eval_multi, eval_single, rtol=1e-5)


def _tensor_across_processes(make_mesh):
  """make_mesh, with every tensor group made of one device of each process."""
  def make(mesh_config, devices=None):
    import jax
    from jax.sharding import Mesh
    mesh = make_mesh(mesh_config, devices)
    by_process = np.array(jax.devices()).reshape(jax.process_count(), -1)        # (processes, local)
    assert mesh.shape["tensor"] == jax.process_count()
    arranged = by_process.T.reshape(mesh.devices.shape)                         # tensor index = process
    print("tensor groups span the processes:", [[d.process_index for d in g] for g in arranged.reshape(-1, 2)],
          file=sys.stderr, flush=True)
    return Mesh(arranged, mesh.axis_names, axis_types=mesh.axis_types)
  return make


if __name__ == "__main__":          # one worker process: the trainer's command line on the arranged mesh
  from absl import app
  from grow_jax import main as main_lib
  from grow_jax.train import sharding
  sharding.make_mesh = _tensor_across_processes(sharding.make_mesh)
  app.run(main_lib.main, argv=["grow_jax.main", *sys.argv[1:]])
