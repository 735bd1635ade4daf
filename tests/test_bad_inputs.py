"""The record of bad inputs: each one is refused with one line that names the field or path, what was found and
what was expected — before anything is written to the workdir, and without a traceback.

The trainer raises a `grow_jax.errors.GrowJaxError` for each (the command lines print exactly those as one
line, exit status 1: `test_the_command_line_prints_one_line` shows it end to end for a sample), so most cases
run in-process, which keeps the table fast.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from config_files import ROOT, load_config
from grow_jax import formats
from grow_jax.data import tasks as task_lib
from grow_jax.errors import GrowJaxError
from grow_jax.model.config import get_preset
from grow_jax.train import loop


def _set(path: str, value):
  def change(config, tmp):
    node = config
    *parents, leaf = path.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return change


def _source(make):
  """A case whose init source is a file or directory `make(tmp)` builds."""
  def change(config, tmp):
    config.init.source = make(tmp)
    config.model.num_layers = None             # architecture overrides are for random:<preset> only
  return change


def _hf_dir(tmp, *, truncate=False, wrong_shapes=False, config_only=False):
  config = get_preset("tiny", num_layers=1)
  params = formats.load_checkpoint("random:tiny", num_layers=1)[1]
  out = formats.save_hf(config, params, tmp / "hf")
  if truncate:
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
  if wrong_shapes:
    hf = json.loads((out / "config.json").read_text())
    hf["intermediate_size"] = 64
    (out / "config.json").write_text(json.dumps(hf))
  if config_only:
    (out / "model.safetensors").unlink()
  return f"hf:{out}"


def _gguf_of_another_architecture(tmp):
  import gguf
  path = tmp / "llama.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(1)
  writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return f"gguf:{path}"


def _not_a_gguf(tmp):
  path = tmp / "model.gguf"
  path.write_bytes(b"this is not a GGUF file\n" * 10)
  return f"gguf:{path}"


def _task(name, records_by_split, write=None):
  """A temporary data task reading `records_by_split` (or a file `write(tmp)` makes)."""
  def change(config, tmp):
    from grow_jax.data import cache
    if write is not None:
      path = write(tmp)
      source = lambda split: cache.read_split(path, split)
    else:
      source = lambda split: records_by_split[split]
    task_lib.register_task(name, replace=True)(lambda: task_lib.Task(
        name=name, splits=("train", "validation"), source=source, prompt=lambda r: r["q"],
        target=lambda r: r["a"], metrics=("exact_match",)))
    config.data.task = name
    config.data.tokenizer = "gemma3-270m"
    config.eval.tasks = ()
  return change


def _non_utf8(tmp):
  path = tmp / "dataset"
  path.mkdir()
  (path / "train.jsonl").write_bytes(b'{"q": "caf\xe9", "a": "x"}\n')
  (path / "validation.jsonl").write_bytes(b"")
  return path


CASES = [
    # (id, change, fragments the one line must contain)
    ("lr_negative", _set("optimizer.learning_rate", -1.0), ["config.optimizer.learning_rate=-1.0", "> 0"]),
    ("lr_zero", _set("optimizer.learning_rate", 0.0), ["config.optimizer.learning_rate=0.0"]),
    ("lr_nan", _set("optimizer.learning_rate", math.nan), ["config.optimizer.learning_rate=nan", "finite"]),
    ("batch_zero", _set("batch_size", 0), ["config.batch_size=0", "positive"]),
    ("seq_len_zero", _set("data.seq_len", 0), ["config.data.seq_len=0"]),
    ("steps_negative", _set("total_steps", -5), ["config.total_steps=-5"]),
    ("warmup_negative", _set("optimizer.warmup_steps", -1), ["config.optimizer.warmup_steps=-1"]),
    ("schedule_unknown", _set("optimizer.schedule", "exp"), ["schedule='exp'", "'cosine'"]),
    ("mode_unknown", _set("train.mode", "g_frozen"), ["config.train.mode='g_frozen'", "g_freeze"]),
    ("dtype_unknown", _set("model.dtype", "float64"), ["config.model.dtype='float64'", "bfloat16"]),
    ("growth_layer_out_of_range", lambda c, t: (_set("train.mode", "g_freeze")(c, t),
                                                _set("growth.layers", "0,9")(c, t)),
     ["config.growth.layers", "[9] out of range 0..1"]),
    ("factor_1_with_growth_mode", lambda c, t: (_set("train.mode", "g_freeze")(c, t),
                                                _set("growth.factor", 1)(c, t)),
     ["config.growth.factor=1", "'g_freeze' trains grown MLP copies"]),
    ("lora_rank_zero", lambda c, t: (_set("train.mode", "lora")(c, t), _set("train.lora_rank", 0)(c, t)),
     ["config.train.lora_rank=0", "positive"]),
    ("checkpoint_keep_zero", _set("checkpoint.keep", 0), ["config.checkpoint.keep=0"]),
    ("mesh_larger_than_devices", _set("mesh.data", 16), ["config.mesh=data=16", "needs 16 devices", "8"]),
    ("seed_negative", _set("seed", -1), ["config.seed=-1", ">= 0"]),
    ("grad_clip_negative", _set("optimizer.grad_clip_norm", -1.0), ["config.optimizer.grad_clip_norm=-1.0"]),
    ("noise_negative", _set("growth.noise_scale", -0.1), ["config.growth.noise_scale=-0.1"]),
    ("eval_task_unknown", _set("eval.tasks", ("heldout_loss", "nosuch:test")), ["eval.tasks", "nosuch"]),
    ("data_task_unknown", _set("data.task", "nosuch_task"), ["config.data.task='nosuch_task'", "synthetic"]),
    ("source_missing_dir", _source(lambda t: f"hf:{t}/no_such_model"), ["no_such_model", "does not exist"]),
    ("source_empty_dir", _source(lambda t: (t / "empty").mkdir() or f"hf:{t}/empty"),
     ["empty", "config.json"]),
    ("source_unknown_preset", _set("init.source", "random:huge"), ["unknown model preset 'huge'"]),
    ("source_not_gguf", _source(_not_a_gguf), ["model.gguf", "not a readable GGUF"]),
    ("source_gguf_other_architecture", _source(_gguf_of_another_architecture),
     ["llama.gguf", "general.architecture='llama'", "'gemma3'"]),
    ("source_truncated_safetensors", _source(lambda t: _hf_dir(t, truncate=True)),
     ["model.safetensors", "cannot read"]),
    ("source_shapes_do_not_match", _source(lambda t: _hf_dir(t, wrong_shapes=True)),
     ["model.layers.0.mlp.gate_proj.weight", "shape (128, 64)", "expected (64, 64)"]),
    ("source_without_weights", _source(lambda t: _hf_dir(t, config_only=True)),
     ["holds neither model.safetensors"]),
    ("data_empty_split", _task("bad_empty_split", {"train": [], "validation": []}),
     ["config.data.task='bad_empty_split'", "train", "no usable examples"]),
    ("data_malformed_record", _task("bad_record", {"train": [{"q": "x"}], "validation": []}),
     ["bad_record", "train", "missing field 'a'"]),
    ("data_not_utf8", _task("bad_utf8", None, write=_non_utf8), ["train.jsonl:1", "not UTF-8"]),
]


@pytest.mark.parametrize("change, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, change, fragments):
  config = load_config("tiny", "steps=2,layers_n=2,seq_len=16")
  change(config, tmp_path)
  workdir = tmp_path / "wd"
  with pytest.raises(GrowJaxError) as e:
    loop.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message
  assert not workdir.exists()


def test_the_table_is_the_record():
  assert len(CASES) >= 25


def test_the_garbled_po_catalog_is_named_with_its_line():
  from grow_jax.data import gettext_catalogs
  with pytest.raises(GrowJaxError, match=r"catalog broken\.po.*line") as e:
    gettext_catalogs.build_records([("broken.po", b'msgid "a"\nmsgstr "b"\nmsgstr\n')])
  assert "\n" not in str(e.value)
  with pytest.raises(GrowJaxError, match=r"empty\.po"):
    gettext_catalogs.read_catalog(b"", "empty.po")


def _cli(module, *args, tmp):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=180, env=dict(os.environ, PYTHONPATH=ROOT))
  lines = [l for l in proc.stderr.splitlines() if l.startswith(f"{module}: error:")]
  return proc.returncode, lines, proc.stderr


@pytest.mark.parametrize("module, args, fragment", [
    ("grow_jax.main", ["--config=configs/tiny.py:steps=2", "--config.optimizer.learning_rate=nan"],
     "config.optimizer.learning_rate=nan"),
    ("grow_jax.main", ["--config=configs/tiny.py:steps=2", "--config.train.mode=lora", "--config.train.lora_rank=0"],
     "config.train.lora_rank=0"),
    ("grow_jax.evaluate", ["--checkpoint=gguf:/no/such.gguf", "--tokenizer=bytes", "--tasks=smoke_ppl"],
     "/no/such.gguf"),
    ("grow_jax.evaluate", ["--checkpoint=random:tiny", "--tokenizer=bytes", "--tasks=nope"], "unknown ['nope']"),
    ("grow_jax.convert", ["--src=hf:/no/such/dir", "--dst=hf:/tmp/never"], "/no/such/dir"),
])
@pytest.mark.slow
def test_the_command_line_prints_one_line(tmp_path, module, args, fragment):
  if module == "grow_jax.main":
    args = args + [f"--workdir={tmp_path / 'wd'}"]
  rc, lines, stderr = _cli(module, *args, tmp=tmp_path)
  assert rc == 1, stderr[-3000:]
  assert len(lines) == 1 and fragment in lines[0], stderr[-3000:]
  assert "Traceback" not in stderr
  assert not (tmp_path / "wd").exists()


def test_convert_without_tokenizer_files_converts_the_weights_and_says_so(tmp_path):
  source = _hf_dir(tmp_path)                          # weights and config.json, no tokenizer files
  rc, _, stderr = _cli("grow_jax.convert", f"--src={source}", f"--dst=hf:{tmp_path / 'out'}", tmp=tmp_path)
  assert rc == 0, stderr[-3000:]
  assert "tokenizer skipped" in stderr and "Traceback" not in stderr
  assert formats.load_checkpoint(f"hf:{tmp_path / 'out'}")[0] == get_preset("tiny", num_layers=1)
