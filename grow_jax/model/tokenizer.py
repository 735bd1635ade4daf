"""The model's own tokenizer: `load_tokenizer(source)` -> `Tokenizer` (encode/decode, special ids, padding).

Sources are those of `formats.load_checkpoint`:
  "hf:<dir>"     tokenizer.json of the directory (fast path), else tokenizer.model converted once by transformers;
  "gguf:<file>", "gemma3-270m"   the vocabulary in the GGUF metadata, built once without torch
                 (gguf_import.tokenizer_from_gguf, ~20 s: the file's 262k vocabulary strings) and cached as
                 tokenizer.json in the cache directory (later loads ~1 s).

The runtime is the `tokenizers` library on that tokenizer.json. Special tokens are never added implicitly:
`encode(text, add_bos=True)` prepends BOS (id 2 for Gemma) unless the text already starts with it, as Gemma
expects one BOS at the start of a sequence and none elsewhere.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from grow_jax import files, formats
from grow_jax.errors import CheckpointError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# transformers writes these into tokenizer_config.json; they describe the writing session, not the tokenizer.
_SESSION_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash")

_DEFAULT_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
END_OF_TURN = "<end_of_turn>"
START_OF_TURN = "<start_of_turn>"


class Tokenizer:
  """A Gemma tokenizer: a `tokenizers.Tokenizer` plus the special tokens of its tokenizer_config.json."""

  def __init__(self, tokenizer, config: dict[str, Any] | None = None):
    self._tk = tokenizer
    self.config = {k: v for k, v in (config or {}).items() if k not in _SESSION_KEYS}
    specials = {**_DEFAULT_SPECIALS, **{k: _token_text(self.config[k]) for k in _DEFAULT_SPECIALS
                                        if self.config.get(k)}}
    ids = {k: tokenizer.token_to_id(v) for k, v in specials.items()}
    missing = [f"{k}={specials[k]!r}" for k in ("bos_token", "eos_token", "pad_token") if ids[k] is None]
    if missing:
      raise CheckpointError(f"tokenizer has no id for {', '.join(missing)}; expected a Gemma vocabulary")
    self.bos_id: int = ids["bos_token"]
    self.eos_id: int = ids["eos_token"]
    self.pad_id: int = ids["pad_token"]
    self.unk_id: int | None = ids["unk_token"]
    self.end_of_turn_id: int | None = tokenizer.token_to_id(END_OF_TURN)
    self.start_of_turn_id: int | None = tokenizer.token_to_id(START_OF_TURN)

  # ---- construction ----------------------------------------------------------------------------------
  @classmethod
  def from_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
    """From a directory holding tokenizer.json (and optionally tokenizer_config.json)."""
    import tokenizers
    directory = pathlib.Path(directory)
    path = directory / TOKENIZER_JSON
    if not path.is_file():
      raise CheckpointError(f"{str(directory)!r} has no {TOKENIZER_JSON}")
    try:
      tk = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:
      raise CheckpointError(f"cannot read tokenizer {str(path)!r}: {e}") from e
    config = {}
    if (directory / TOKENIZER_CONFIG).is_file():
      config = json.loads((directory / TOKENIZER_CONFIG).read_text())
    return cls(tk, config)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes tokenizer.json and tokenizer_config.json (loadable by transformers.AutoTokenizer)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self._tk.save(str(directory / TOKENIZER_JSON))
    config = {"tokenizer_class": "GemmaTokenizer", **_DEFAULT_SPECIALS, **self.config}
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

  # ---- properties ------------------------------------------------------------------------------------
  @property
  def vocab_size(self) -> int:
    """Number of token ids (special tokens included). A model's embedding may be larger (4B: 262208)."""
    return self._tk.get_vocab_size(with_added_tokens=True)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end a generation: EOS, and <end_of_turn> for chat-formatted text."""
    return tuple(i for i in (self.eos_id, self.end_of_turn_id) if i is not None)

  def token_to_id(self, token: str) -> int | None:
    return self._tk.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tk.id_to_token(int(token_id))

  # ---- encode / decode -------------------------------------------------------------------------------
  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """Token ids of `text`. Special-token strings in the text ("<bos>", "<end_of_turn>") become their ids.

    add_bos prepends BOS unless the text already starts with it; add_eos appends EOS.
    """
    ids = self._tk.encode(text, add_special_tokens=False).ids
    return self._add_specials(ids, add_bos, add_eos)

  def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
    encodings = self._tk.encode_batch(list(texts), add_special_tokens=False)
    return [self._add_specials(e.ids, add_bos, add_eos) for e in encodings]

  def _add_specials(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
    ids = list(ids)
    if add_bos and (not ids or ids[0] != self.bos_id):
      ids.insert(0, self.bos_id)
    if add_eos:
      ids.append(self.eos_id)
    return ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """Text of token ids (numpy/jax arrays fine). Special tokens are kept unless skip_special_tokens."""
    return self._tk.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=skip_special_tokens)

  def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
    return [self.decode(ids, skip_special_tokens) for ids in batch]

  def pad(self, sequences: Sequence[Sequence[int]], length: int | None = None,
          side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, T) int32, input_mask (B, T) bool) with pad_id filling; T = `length` or the longest.

    side='left' aligns the ends (for generation prompts), 'right' the starts (for training/scoring).
    A sequence longer than `length` is an error, not silently cut.
    """
    if side not in ("left", "right"):
      raise ValueError(f"pad(side={side!r}): expected 'left' or 'right'")
    longest = max((len(s) for s in sequences), default=0)
    T = longest if length is None else int(length)
    if longest > T:
      raise ValueError(f"pad(length={T}): a sequence has {longest} tokens; expected at most {T}")
    tokens = np.full((len(sequences), T), self.pad_id, np.int32)
    mask = np.zeros((len(sequences), T), bool)
    for b, seq in enumerate(sequences):
      n = len(seq)
      if n == 0:
        continue
      cols = slice(0, n) if side == "right" else slice(T - n, T)
      tokens[b, cols] = np.asarray(seq, np.int32)
      mask[b, cols] = True
    return tokens, mask

  def encode_padded(self, texts: Sequence[str], add_bos: bool = True, length: int | None = None,
                    side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """encode_batch + pad: (tokens, input_mask) ready for `model.forward`."""
    return self.pad(self.encode_batch(texts, add_bos=add_bos), length=length, side=side)

  def __repr__(self) -> str:
    return (f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, end_of_turn_id={self.end_of_turn_id})")


def _token_text(value) -> str:
  """tokenizer_config.json stores a special token as a string or an AddedToken dict."""
  return value["content"] if isinstance(value, dict) else str(value)


# ---- loading -----------------------------------------------------------------------------------------
def load_tokenizer(source: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> Tokenizer:
  """The tokenizer of a checkpoint source ('hf:<dir>', 'gguf:<file>', 'gemma3-270m')."""
  src = formats.parse_source(source, cache=cache)
  if src.kind == "random":
    raise CheckpointError(f"tokenizer source {src.text!r}: random weights come without a tokenizer; name one "
                          "(e.g. 'gemma3-270m', or config.data.tokenizer for training on text)")
  if src.kind == "hf":
    if (src.path / TOKENIZER_JSON).is_file():
      return Tokenizer.from_dir(src.path)
    if not (src.path / "tokenizer.model").is_file():
      raise CheckpointError(f"{str(src.path)!r} holds neither {TOKENIZER_JSON} nor tokenizer.model")
    target = _tokenizer_cache_dir(src, cache, (src.path / "tokenizer.model").stat())
    return _cached(target, lambda tmp: _transformers_tokenizer(str(src.path)).save_pretrained(str(tmp)))
  target = _tokenizer_cache_dir(src, cache, None if src.sha256 else src.path.stat())
  return _cached(target, lambda tmp: _gguf_tokenizer(src.path).save(tmp))


def _tokenizer_cache_dir(src: formats.Source, cache, stat) -> pathlib.Path:
  import hashlib
  key = src.sha256 or f"{src.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return formats.cache_dir(cache) / "tokenizers" / f"{src.path.stem}.{digest}"


def _cached(target: pathlib.Path, write) -> Tokenizer:
  """The tokenizer cached in `target`, else `write(tmp_dir)` builds it there and it is renamed into place."""
  if (target / TOKENIZER_JSON).is_file():
    try:
      return Tokenizer.from_dir(target)
    except CheckpointError:
      pass  # unreadable cache entry: rebuild it
  files.write_dir(target, write)
  return Tokenizer.from_dir(target)


def _gguf_tokenizer(path: pathlib.Path) -> Tokenizer:
  """A GGUF file's tokenizer (no torch, no transformers)."""
  from grow_jax.formats import gguf_import
  backend = gguf_import.tokenizer_from_gguf(gguf_import.open_gguf(path), path)
  config = {**_DEFAULT_SPECIALS, "mask_token": "<mask>"}
  return Tokenizer(backend, config)


def _transformers_tokenizer(path: str):
  """transformers' tokenizer of an HF directory that has only tokenizer.model (sentencepiece; no torch needed)."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import transformers
  try:
    return transformers.AutoTokenizer.from_pretrained(path)
  except Exception as e:
    raise CheckpointError(f"transformers could not build a tokenizer from {path!r}: {e}") from e
