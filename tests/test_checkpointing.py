"""Checkpoints: restore onto other meshes, leaf-by-leaf mismatch errors, a foreign workdir left untouched."""

import os

import jax
import numpy as np
import pytest

from config_files import load_config
from grow_jax import tree_paths
from grow_jax.train import checkpointing
from grow_jax.train import sharding
from grow_jax.train import loop as train
from grow_jax.train import setup as setup_lib
from grow_jax import model
from grow_jax.errors import CheckpointMismatchError


def _mesh(data, fsdp, tensor):
  return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor), jax.devices()[:data * fsdp * tensor])


def _config(arg=""):
  return load_config("tiny", arg)


def _state(config, mesh):
  mc, base = setup_lib.init_params(config, mesh)
  train_setup, state = setup_lib.build(config, mc, base, mesh)
  return mc, train_setup, state


def _meta(config, mc, train_setup, mesh, step):
  return checkpointing.make_meta(config, mc, train_setup.method, sharding.describe(mesh), step)


@pytest.mark.slow
def test_save_on_one_mesh_restore_on_others(tmp_path):
  config = _config("mode=g_freeze,layers_n=2")
  mesh = _mesh(1, 2, 4)
  mc, setup, state = _state(config, mesh)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ck"), keep=2)
  ckpt.save(3, state, {"batch_index": 3}, _meta(config, mc, setup, mesh, 3))
  ckpt.close()
  host = jax.tree.map(np.asarray, state)

  for shape in ((1, 4, 2), (1, 1, 1)):
    other = _mesh(*shape)
    reader = checkpointing.Checkpointer(str(tmp_path / "ck"), read_only=True)
    meta = reader.read_meta(3)
    mc2 = checkpointing.model_config_from_meta(meta, "test")
    assert mc2 == mc
    setup2, _ = setup_lib.build(config, mc2, _abstract(mc2), other, abstract=True)
    restored, data_state, meta2 = reader.restore(3, setup2.abstract_state)
    assert data_state == {"batch_index": 3} and meta2["step"] == 3
    for (path, a), (_, b) in zip(tree_paths.flatten_items(host), tree_paths.flatten_items(restored)):
      np.testing.assert_array_equal(np.asarray(b), a, err_msg=path)
    leaf = tree_paths.get(restored["params"], "layer_0/mlp/grown_1/linear")
    assert leaf.sharding.mesh.shape == other.shape


def _abstract(mc):
  return model.abstract_params(mc)


def test_restore_mismatch_names_paths_and_shapes(tmp_path):
  config = _config("mode=g_freeze,layers_n=1")
  mesh = _mesh(1, 1, 1)
  mc, setup, state = _state(config, mesh)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ck"))
  ckpt.save(1, state, {}, _meta(config, mc, setup, mesh, 1))
  ckpt.close()
  # Another model: 3x growth instead of 2x (grown_1 has the same shape, grown_2 is new).
  config3 = _config("mode=g_freeze,layers_n=1,grow=3")
  mc3 = setup_lib.grown_model_config(config3, setup_lib.base_model_config(config3))
  setup3, _ = setup_lib.build(config3, mc3, _abstract(mc3), mesh, abstract=True)
  reader = checkpointing.Checkpointer(str(tmp_path / "ck"), read_only=True)
  with pytest.raises(CheckpointMismatchError) as e:
    reader.restore(1, setup3.abstract_state)
  msg = str(e.value)
  assert "params/layer_0/mlp/grown_2/linear" in msg and "missing in the checkpoint" in msg
  # The original branch is linear / 3 and of the same shape; a different width shows both shapes:
  config_w = _config("mode=g_freeze,layers_n=1")
  config_w.model.hidden_dim = 64
  mcw = setup_lib.grown_model_config(config_w, setup_lib.base_model_config(config_w))
  setupw, _ = setup_lib.build(config_w, mcw, _abstract(mcw), mesh, abstract=True)
  with pytest.raises(CheckpointMismatchError, match=r"params/layer_0/mlp/linear: checkpoint .* has "
                     r"\(128, 64\) float32, expected \(64, 64\) float32"):
    reader.restore(1, setupw.abstract_state)


def test_workdir_of_another_model_fails_before_writing(tmp_path):
  workdir = tmp_path / "wd"
  config = _config("mode=g_freeze,layers_n=1")
  mesh = _mesh(1, 1, 1)
  mc, setup, state = _state(config, mesh)
  ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
  ckpt.save(2, state, {"batch_index": 2}, _meta(config, mc, setup, mesh, 2))
  ckpt.close()
  (workdir / "config.json").write_text("previous run")
  before = {p: os.stat(p).st_mtime_ns for p in workdir.rglob("*")}
  other = _config("mode=sft,layers_n=1")                  # ungrown: another model shape
  with pytest.raises(CheckpointMismatchError, match="holds a checkpoint of another model"):
    train.train_and_evaluate(other, str(workdir))
  assert (workdir / "config.json").read_text() == "previous run"
  assert {p: os.stat(p).st_mtime_ns for p in workdir.rglob("*")} == before
