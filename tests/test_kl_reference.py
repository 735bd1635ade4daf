"""The KL(base ‖ model) reference on the device mesh: the base's hidden states and embedding are sharded
jax.Arrays put there once (not host numpy sent with every evaluation batch), the KL equals the former host-numpy
computation, and only process 0 writes the cache file."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from grow_jax.errors import ShardingError
from grow_jax.evaluate import ByteTokenizer
from grow_jax.evaluation import corpus, registry
from grow_jax.evaluation.evaluator import EvalTask, Evaluator
from grow_jax.evaluation.scoring import make_batches, scored_hidden
from grow_jax.model.config import get_preset
from grow_jax.train import sharding

import processes
from random_params import random_params

ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_preset("tiny")
TOK = ByteTokenizer()
TEXTS = ["The river runs through the old town.", "Water boils at one hundred degrees.",
         "She read the letter twice and put it back.", "The committee meets next week.", "Short."]
KW = dict(max_len=16, batch_size=4)


def base_params(config=CONFIG):
  params = random_params(config)
  params["embedder"]["input_embedding"] *= 0.125 / params["embedder"]["input_embedding"].std()
  return params


def perturbed(params):
  return jax.tree.map(lambda x: x * 1.05, params)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def on_mesh(params, mesh):
  return sharding.put_global(params, sharding.param_shardings(params, mesh))


def host_numpy_kl(config, params, base_config, base, texts, *, max_len, batch_size):
  """The former computation: hidden states fetched to host float32 numpy, then passed (with the numpy
  embedding) to every evaluation batch."""
  rows, _ = corpus.corpus_rows(TOK, texts, max_len)
  hidden_fn = jax.jit(scored_hidden, static_argnums=0)
  kl_total, count = 0.0, 0
  for b in make_batches(rows, batch_size=batch_size, chunk=64, pad_id=config.pad_token_id):
    hidden = np.asarray(jax.device_get(hidden_fn(base_config, base, b.inputs, b.input_mask, b.score_positions)),
                        np.float32)
    _, kl = jax.device_get(corpus._nll_and_kl(params, b.inputs, b.input_mask, b.score_positions, b.targets, hidden,
                                              base["embedder"]["input_embedding"], config=config,
                                              base_softcap=base_config.final_logit_softcap,
                                              chunk=min(64, b.targets.shape[1])))
    kl_total += float(np.asarray(kl)[b.score_mask].sum(dtype=np.float64))
    count += int(b.score_mask.sum())
  return kl_total / count


@pytest.mark.slow
def test_the_reference_lives_on_the_mesh_sharded_and_gives_the_host_numpy_kl(mesh):
  base = base_params()
  reference = corpus.BaseReference.from_texts(CONFIG, base, TOK, TEXTS, mesh=mesh, **KW)
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  assert len(reference.hidden) >= 2
  for hidden in reference.hidden:                  # batch rows over the data axes, put there once
    assert isinstance(hidden, jax.Array) and hidden.dtype == jnp.float32
    assert hidden.sharding.is_equivalent_to(rows, hidden.ndim), hidden.sharding
    assert hidden.addressable_shards[0].data.shape[0] == KW["batch_size"] // 4
  embedding = reference.embedding                  # like the model's embedder: V over tensor, D over fsdp
  assert isinstance(embedding, jax.Array)
  assert embedding.sharding.is_equivalent_to(NamedSharding(mesh, P("tensor", "fsdp")), 2), embedding.sharding
  assert embedding.addressable_shards[0].data.shape == (CONFIG.vocab_size // 2, CONFIG.embed_dim // 2)

  model = perturbed(base)
  kl = corpus.kl_divergence(CONFIG, on_mesh(model, mesh), reference)
  expected = host_numpy_kl(CONFIG, model, CONFIG, base, TEXTS, **KW)
  print(f"KL sharded {kl['kl']:.9g}, host numpy {expected:.9g}, rel {abs(kl['kl'] / expected - 1):.2g}")
  assert kl["kl"] > 1e-3
  assert kl["kl"] == pytest.approx(expected, rel=1e-5)
  assert corpus.kl_divergence(CONFIG, on_mesh(base, mesh), reference)["kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_a_bf16_base_keeps_bf16_hidden_states_and_the_same_kl():
  config = CONFIG.replace(dtype="bfloat16")
  base = base_params(config)
  reference = corpus.BaseReference.from_texts(config, base, TOK, TEXTS, **KW)
  assert all(h.dtype == jnp.bfloat16 for h in reference.hidden)          # half the float32 copy's bytes
  assert reference.nbytes == sum(h.size for h in reference.hidden) * 2
  model = perturbed(base)
  kl = corpus.kl_divergence(config, model, reference)["kl"]
  # The float32 copy held bfloat16 values and the model side casts them back to its compute dtype: no change.
  assert kl == pytest.approx(host_numpy_kl(config, model, config, base, TEXTS, **KW), rel=1e-6)


def test_the_batch_must_split_over_the_data_axes(mesh):
  with pytest.raises(ShardingError, match=r"batch_size=2 is not divisible by the data-parallel size data\*fsdp=4"):
    corpus.BaseReference.from_texts(CONFIG, base_params(), TOK, TEXTS, mesh=mesh, max_len=16, batch_size=2)


@pytest.mark.slow
def test_the_trainers_evaluations_put_the_reference_on_its_mesh(mesh, monkeypatch):
  base = base_params()
  seen = []
  kl_divergence = corpus.kl_divergence
  monkeypatch.setattr(corpus, "kl_divergence", lambda c, p, ref: seen.append(ref) or kl_divergence(c, p, ref))
  ctx = registry.EvalContext(CONFIG, tokenizer=TOK, batch_size=4, max_len=16, base_model=lambda: (CONFIG, base),
                             mesh=mesh)
  result = registry.build("smoke_kl", ctx)(on_mesh(perturbed(base), mesh))
  [reference] = seen
  assert reference.mesh is mesh and result["kl"] > 1e-3
  # Evaluator(mesh=...) directly, as the CLI's library use does.
  evaluator = Evaluator(TOK, [EvalTask("kl", "kl", TEXTS)], base=(CONFIG, base), mesh=mesh, **KW)
  assert evaluator._prepare(evaluator.tasks[0]).mesh is mesh


@pytest.mark.slow
@pytest.mark.parametrize("process", [0, 1])
def test_only_process_0_writes_the_cache_file(tmp_path, monkeypatch, process):
  base, model = base_params(), perturbed(base_params())
  alone = corpus.kl_divergence(CONFIG, model, corpus.BaseReference.from_texts(CONFIG, base, TOK, TEXTS, **KW))
  monkeypatch.setattr(jax, "process_index", lambda *args, **kwargs: process)
  reference = corpus.BaseReference.from_texts(CONFIG, base, TOK, TEXTS, cache_dir=str(tmp_path), base_id="b", **KW)
  written = sorted(p.name for p in tmp_path.iterdir())
  # Another process computes its own copy in memory and writes nothing: no two writers of one gs:// object.
  assert written == ([f"kl_base_{reference.key}.npz"] if process == 0 else [])
  assert corpus.kl_divergence(CONFIG, model, reference)["kl"] == pytest.approx(alone["kl"], rel=1e-6)
  if process == 0:                                 # a later process 1 reads the file back and writes nothing
    monkeypatch.setattr(jax, "process_index", lambda *args, **kwargs: 1)
    monkeypatch.setattr(corpus, "_final_hidden", None)
    monkeypatch.setattr(corpus.files, "write_with", None)
    again = corpus.BaseReference.from_texts(CONFIG, base, TOK, TEXTS, cache_dir=str(tmp_path), base_id="b", **KW)
    assert corpus.kl_divergence(CONFIG, model, again)["kl"] == pytest.approx(alone["kl"], rel=1e-6)


TWO_PROCESSES = """
import json, logging, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
logging.basicConfig(level=logging.INFO, format="%(message)s")
import test_kl_reference as t
base = t.base_params()
mesh = t.sharding.make_mesh({"data": 2, "fsdp": 2})
model = t.on_mesh(t.perturbed(base), mesh)
kl = []
for _ in range(2):              # computed (process 0 writes the file), then read back by both
  reference = t.corpus.BaseReference.from_texts(t.CONFIG, base, t.TOK, t.TEXTS, mesh=mesh, cache_dir=sys.argv[1],
                                                base_id="b", **t.KW)
  kl.append(t.corpus.kl_divergence(t.CONFIG, model, reference)["kl"])
print("KL " + json.dumps(kl), flush=True)
"""


@pytest.mark.slow
def test_two_processes_build_one_reference_and_process_0_alone_writes_it(tmp_path):
  """2 processes x 2 CPU devices (gloo): the hidden states gathered from both, the file written once, read back by
  both (process 0 decides), and the KL of one process with the whole mesh."""
  port = processes.free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(tmp_path / "cache"), f"localhost:{port}", str(i)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = processes.finish(procs)
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  kls = [processes.tagged(out, "KL") for out, _ in outs]
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2}, devices=jax.devices()[:4])      # the same mesh, one process
  single = corpus.kl_divergence(CONFIG, on_mesh(perturbed(base_params()), mesh),
                                corpus.BaseReference.from_texts(CONFIG, base_params(), TOK, TEXTS, mesh=mesh, **KW))
  for kl in kls:
    assert kl == pytest.approx([single["kl"]] * 2, rel=1e-6)
  assert len(list((tmp_path / "cache").iterdir())) == 1
  assert [", saved to " in err for _, err in outs] == [True, False]       # one writer
  assert all("loaded from " in err for _, err in outs)
