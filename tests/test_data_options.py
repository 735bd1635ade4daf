"""Task options in the config (`config.data.options`): they reach the task's loader, from a config file and from
`--config.data.options.KEY=...`; an option the task does not take is one ConfigError line; and the hub tasks'
`limit` reads the first N records, streamed, without touching the rest."""

import json

import pytest
from absl import flags
from ml_collections import config_flags

import fake_hub
from config_files import ROOT
from grow_jax.data import pipeline, tasks
from grow_jax.errors import ConfigError, TaskError
from grow_jax.train import config as config_lib

OPUS = fake_hub.FIXTURES / "opus_books" / "train.jsonl"


@pytest.fixture(autouse=True)
def _default_data_view():
  yield
  tasks.use_run_data(None)          # a test that handed a config to the process leaves no data view behind


def _config(task="translation_en_fr", **options):
  config = config_lib.base_config()
  config.data.task = task
  for key, value in options.items():
    config.data.options[key] = value
  return config


def _parse(argv):
  """What grow_jax.main's --config flags make of `argv` (a fresh flag set, as the trainer's command line)."""
  fv, argv = flags.FlagValues(), ["prog", *argv]
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


class CountingTokenizer:
  """Bytes as ids (pad 0, eos 1, bos 2); counts the texts it encodes."""

  pad_id, eos_id, bos_id = 0, 1, 2

  def __init__(self):
    self.encoded = 0

  def encode(self, text, add_bos=False, add_eos=False):
    self.encoded += 1
    return ([self.bos_id] if add_bos else []) + [b + 3 for b in text.encode("utf-8")] + ([self.eos_id] if add_eos else [])


def test_the_config_has_a_slot_for_every_option_of_every_builtin_task():
  builtin = [n for n in tasks.list_tasks() if tasks.TASKS.get(n).__module__.startswith("grow_jax.")]
  options = {o for n in builtin for o in tasks.task_options(n)}
  assert options == set(tasks.CONFIG_OPTIONS)
  assert set(config_lib.base_config().data.options) == set(tasks.CONFIG_OPTIONS)
  assert all(v is None for v in config_lib.base_config().data.options.values())     # None: the task's default


def test_options_from_the_command_line_reach_the_hub_loader(monkeypatch, tmp_path):
  hub = fake_hub.install(monkeypatch, tmp_path)
  config = _parse([f"--config={ROOT}/configs/tiny.py", "--config.data.task=translation_en_fr",
                   "--config.data.options.revision=refs/convert/parquet", "--config.data.options.limit=1",
                   "--config.data.seq_len=256"])
  config_lib.check(config)
  assert pipeline.task_options(config, "translation_en_fr") == {"revision": "refs/convert/parquet", "limit": 1}
  assert pipeline.task_options(config, "winogrande") == {}                 # other tasks: their defaults
  tokenizer = CountingTokenizer()
  batches = pipeline.batch_iterator(config, "train", batch_size=8, model_config=None, tokenizer=tokenizer,
                                    finite=True)
  assert hub.calls == [dict(path="wmt/wmt14", name="fr-en", split="train", streaming=True,
                            revision="refs/convert/parquet")]
  assert tokenizer.encoded == 2                     # one example (limit=1): its prompt and its target
  assert sum(int(b["loss_mask"].any(axis=1).sum()) for b in batches) == 1        # one row holds it


def test_options_from_a_config_file_reach_the_loader_and_the_runs_evaluations(monkeypatch, tmp_path):
  hub = fake_hub.install(monkeypatch, tmp_path)
  config = _config(dataset="opus_books", limit=40)
  config_lib.check(config)
  pipeline.use_config(config)               # the trainer's hand-off: evaluations name the task without options
  validation = tasks.get_task("translation_en_fr").examples("validation")
  assert hub.calls and all(c["path"] == "Helsinki-NLP/opus_books" for c in hub.calls)
  assert [e.id for e in validation] == [e.id for e in tasks.build_task(
      "translation_en_fr", dataset="opus_books", limit=40).examples("validation")]
  tasks.use_run_data(None)
  assert tasks.get_task("translation_en_fr").splits == ("train", "validation", "test")   # wmt14 again
  assert tasks.get_task("translation_en_fr").description.endswith("(wmt14)")


def test_an_option_the_task_does_not_take_is_one_config_error_naming_it_the_task_and_its_options():
  config = _config("translation_en_fr")
  with config.data.options.unlocked():
    config.data.options.colour = "red"                      # a config file may add keys; check refuses them
  with pytest.raises(ConfigError) as e:
    config_lib.check(config)
  assert str(e.value) == ("config.data.options.colour='red': task 'translation_en_fr' does not take option "
                          "'colour'; its options: ['dataset', 'data_files', 'cache_dir', 'streaming', 'revision', "
                          "'limit']")
  with pytest.raises(ConfigError, match=r"^config.data.options.shots=3: task 'winogrande' does not take option "
                                        r"'shots'; its options: \['config', "):
    config_lib.check(_config("winogrande", shots=3))           # a known key, but not this task's
  with pytest.raises(ConfigError, match=r"^config.data.options.limit=5: task 'synthetic' takes no options$"):
    config_lib.check(_config("synthetic", limit=5))
  with pytest.raises(TaskError, match=r"task 'sciq' does not take options \['shots'\]; its options: \['style'"):
    tasks.get_task("sciq", shots=3)


def test_an_unknown_option_on_the_command_line_is_refused_naming_it():
  with pytest.raises(Exception, match="nonsense"):
    _parse([f"--config={ROOT}/configs/tiny.py", "--config.data.options.nonsense=1"])


@pytest.mark.parametrize("options, fragment", [
    ({"limit": 0}, "config.data.options.limit=0: expected a positive number of records"),
    ({"dataset": "europarl"}, "config.data.options: task 'translation_en_fr': unknown dataset 'europarl'"),
])
def test_bad_option_values_are_config_errors(options, fragment):
  with pytest.raises(ConfigError, match=fragment):
    config_lib.check(_config(**options))


def test_limit_streams_the_first_records_and_never_reads_the_rest(tmp_path):
  lines = OPUS.read_text().splitlines()
  first, rest = tmp_path / "train-00000.jsonl", tmp_path / "train-00001.jsonl"
  first.write_text("\n".join(lines[:40]) + "\n")
  rest.write_text("this shard is not JSON: reading it fails\n")          # as the 40M pairs after the first N
  files = {"train": [str(first), str(rest)]}
  task = tasks.build_task("translation_en_fr", data_files=files, limit=25, cache_dir=str(tmp_path / "hf"))
  examples = task.examples("train")
  assert [e.id for e in examples] == [json.loads(l)["id"] for l in lines[:25]]
  again = tasks.build_task("translation_en_fr", data_files=files, limit=25, cache_dir=str(tmp_path / "hf2"))
  assert again.examples("train") == examples                              # the same N, the same examples
  with pytest.raises(Exception):                  # without the limit the whole split is read (and fails here)
    tasks.build_task("translation_en_fr", data_files=files, cache_dir=str(tmp_path / "hf3")).examples("train")


def test_limit_must_be_positive():
  with pytest.raises(TaskError, match=r"task 'sciq': limit=0; expected a positive number of records"):
    tasks.build_task("sciq", limit=0)


def test_paper_configs_read_a_stated_number_of_records_of_a_hub_task():
  from config_files import load_config
  config = load_config("paper_1b")
  assert (config.data.task, config.data.options.limit) == ("translation_en_fr", config_lib.PAPER_LIMIT)
  assert load_config("paper_1b", "limit=1000").data.options.limit == 1000
  assert load_config("paper_4b", "limit=0").data.options.limit is None                   # 0: every record
  assert load_config("paper_1b", "task=gettext_en_fr").data.options.limit is None        # offline: no limit
  with pytest.raises(ConfigError, match="config arg limit=-1"):
    load_config("paper_1b", "limit=-1")


def test_evaluating_a_workdir_reads_its_task_with_the_options_it_trained_on(monkeypatch, tmp_path):
  from grow_jax import evaluate, formats
  from grow_jax.evaluation import items
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(_config("arithmetic_cloze", seed=7, num_problems=300).to_json_best_effort())
  monkeypatch.setattr(evaluate, "load_for_eval", lambda *a, **k: formats.load_checkpoint("random:tiny"))
  written = tmp_path / "items.jsonl"
  evaluate.run(str(workdir), ["arithmetic_cloze:validation"], tokenizer="bytes", limit=3, batch_size=4, max_len=64,
               items=str(written))
  scored = [item["id"] for item in items.read_items(str(written))["arithmetic_cloze"]]
  trained_on = [e.id for e in tasks.build_task("arithmetic_cloze", seed=7, num_problems=300).examples("validation")]
  default = [e.id for e in tasks.build_task("arithmetic_cloze").examples("validation")]
  assert scored == trained_on[:3] and scored != default[:3]
  assert tasks.get_task("arithmetic_cloze").examples("validation")[0].id == default[0]    # the view is put back
