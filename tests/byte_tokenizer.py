"""A tokenizer for tests with random tiny models: an `hf:` tokenizer directory holding one token per byte plus Gemma's
special tokens (260 ids, fits random:tiny), loadable by grow_jax's tokenizer and by transformers."""


def byte_tokenizer(directory) -> str:
  """Writes the tokenizer into `directory` (created; it must not exist) and returns its source, 'hf:<directory>'."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
  vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tk.decoder = decoders.ByteLevel()
  tk.add_special_tokens(specials)
  directory.mkdir()
  tk.save(str(directory / "tokenizer.json"))
  return f"hf:{directory}"
