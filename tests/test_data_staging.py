"""Staged data (grow_jax.data.stage): a task's records staged once, where the hub is reachable, are read back by
every process with no network; a staged read gives exactly the examples of a direct load; a copy holding another
task, other options or fewer splits is refused in one line naming both; the trainer runs on a staged copy with
the hub cut off; local directories and gs:// (the emulator); the command line."""

import json
import os
import subprocess
import sys
import uuid

import pytest

import fake_hub
from byte_tokenizer import byte_tokenizer
from config_files import ROOT, load_config
from grow_jax.data import pipeline, stage, tasks
from grow_jax.errors import DataError
from grow_jax.train import loop

TRANSLATION = {"dataset": "opus_books", "limit": 40}     # the first 40 records of the (fake) hub's train split


@pytest.fixture(autouse=True)
def _default_data_view():
  yield
  tasks.use_run_data(None)


@pytest.fixture
def hub(monkeypatch, tmp_path):
  """The fake hub, and the offline datasets' cache in a fresh directory."""
  monkeypatch.setenv("GROW_JAX_DATA_DIR", str(tmp_path / "offline_cache"))
  monkeypatch.delenv(tasks.ENV_STAGED, raising=False)
  return fake_hub.install(monkeypatch, tmp_path / "hf_cache")


def _cut_off(hub, monkeypatch, tmp_path):
  """No network from here on: the hub refuses, HF libraries are told they are offline, and the offline datasets'
  cache is an empty directory (nothing may be built from a task's own source)."""
  hub.reachable = False
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("GROW_JAX_DATA_DIR", str(tmp_path / "no_cache_here"))
  return len(hub.calls)


def _examples(task, split):
  return [e.to_dict() for e in task.examples(split)]


def test_a_staged_read_gives_the_direct_loads_examples_with_the_hub_cut_off(hub, monkeypatch, tmp_path):
  root = tmp_path / "staged"
  wanted = {("translation_en_fr", s): TRANSLATION for s in ("train", "validation", "test")}
  wanted.update({("winogrande", "validation"): {}, ("stdlib_text", "validation"): {}})
  direct = {(n, s): _examples(tasks.build_task(n, **o), s) for (n, s), o in wanted.items()}
  stage.stage_task(root, "translation_en_fr", TRANSLATION)
  stage.stage_task(root, "winogrande", {}, ["validation"])
  stage.stage_task(root, "stdlib_text", {}, ["validation"])
  assert stage.staged_tasks(root) == ["stdlib_text", "translation_en_fr", "winogrande"]
  manifest = json.loads((root / "translation_en_fr" / "manifest.json").read_text())
  assert (manifest["task"], manifest["counts"]) == ("translation_en_fr", {"train": 35, "validation": 3, "test": 2})
  assert manifest["options"] == {"dataset": "opus_books", "limit": 40, "data_files": None, "revision": None}
  calls = _cut_off(hub, monkeypatch, tmp_path)
  with pytest.raises(RuntimeError, match="could not load 'allenai/winogrande'"):      # the hub is really gone
    tasks.build_task("winogrande").examples("validation")
  for (name, split), options in wanted.items():
    staged = tasks.open_task(name, options, staged=str(root))
    assert _examples(staged, split) == direct[name, split], (name, split)
  monkeypatch.setenv(tasks.ENV_STAGED, str(root))                # what the launchers set on every worker
  assert _examples(tasks.get_task("winogrande"), "validation") == direct["winogrande", "validation"]
  assert len(hub.calls) == calls + 1 and not (tmp_path / "no_cache_here").exists()


def _paper_like(tmp_path, **options):
  """The tiny model on translation, evaluated as the paper configs are (the task, WinoGrande, stdlib prose)."""
  config = load_config("tiny", "steps=1,layers_n=1,seq_len=256")
  config.data.task = "translation_en_fr"
  for key, value in {**TRANSLATION, **options}.items():
    config.data.options[key] = value
  config.data.tokenizer = byte_tokenizer(tmp_path / f"tokenizer-{uuid.uuid4().hex[:6]}")
  config.eval.tasks = ("heldout_loss", "translation_en_fr:validation", "winogrande:validation",
                       "stdlib_text:validation")
  config.eval.max_examples = 2
  config.eval.max_new_tokens = 4
  return config


@pytest.mark.slow
def test_the_trainer_reads_every_task_from_the_staged_copy_with_no_network(hub, monkeypatch, tmp_path):
  config = _paper_like(tmp_path)
  assert pipeline.data_reads(config) == {"translation_en_fr": (TRANSLATION, ["train", "validation"]),
                                         "winogrande": ({}, ["validation"]), "stdlib_text": ({}, ["validation"])}
  manifests = stage.stage_config(config, tmp_path / "staged")
  assert {n: m["counts"] for n, m in manifests.items()} == {
      "translation_en_fr": {"train": 35, "validation": 3}, "winogrande": {"validation": 2},
      "stdlib_text": {"validation": manifests["stdlib_text"]["counts"]["validation"]}}
  calls = _cut_off(hub, monkeypatch, tmp_path)
  config.data.staged = str(tmp_path / "staged")
  out = loop.train_and_evaluate(config, str(tmp_path / "wd"))
  assert len(hub.calls) == calls and not (tmp_path / "no_cache_here").exists()      # nothing but the staged copy
  assert {"eval/translation_en_fr/chrf", "eval/winogrande/acc", "eval/stdlib_text/kl",
          "eval/heldout_loss/loss"} <= set(out), sorted(out)


def test_a_staged_copy_with_other_options_is_refused_before_anything_is_written(hub, tmp_path):
  stage.stage_config(_paper_like(tmp_path), tmp_path / "staged")
  config = _paper_like(tmp_path, limit=30)
  config.data.staged = str(tmp_path / "staged")
  with pytest.raises(DataError) as e:
    loop.train_and_evaluate(config, str(tmp_path / "wd"))
  assert str(e.value).startswith(f"staged data {tmp_path}/staged/translation_en_fr holds task 'translation_en_fr' "
                                 "with options {'limit': 40}; this run asks for task 'translation_en_fr' with "
                                 "options {'limit': 30}: ")
  assert "\n" not in str(e.value) and not (tmp_path / "wd").exists()


def test_a_task_or_a_split_not_staged_is_refused_naming_what_is_there(hub, tmp_path):
  root = tmp_path / "staged"
  stage.stage_task(root, "translation_en_fr", TRANSLATION, ["train"])
  config = _paper_like(tmp_path)
  config.data.staged = str(root)
  with pytest.raises(DataError) as e:
    pipeline.use_config(config)
  assert str(e.value) == (f"staged data {root}/translation_en_fr holds splits ['train'] of task 'translation_en_fr', "
                          "not 'validation'; stage it: python -m grow_jax.data.stage --task=translation_en_fr "
                          f"--splits=train,validation --option=dataset=opus_books --limit=40 --out={root} --overwrite")
  stage.stage_task(root, "translation_en_fr", TRANSLATION, overwrite=True)
  with pytest.raises(DataError, match=r"^staged data .*/staged holds no task 'winogrande' \(it holds "
                                      r"\['translation_en_fr'\]\); stage it where its source is reachable: "
                                      r"python -m grow_jax.data.stage --task=winogrande --out="):
    pipeline.use_config(config)
  with pytest.raises(DataError, match=r"holds no task 'sciq' \(it holds no staged task\)"):
    tasks.open_task("sciq", staged=str(tmp_path / "empty"))


def test_restaging_keeps_a_matching_copy_and_replaces_another_only_when_told(hub, tmp_path):
  root = tmp_path / "staged"
  stage.stage_task(root, "translation_en_fr", TRANSLATION)
  calls = len(hub.calls)
  stage.stage_task(root, "translation_en_fr", {**TRANSLATION, "cache_dir": str(tmp_path / "elsewhere")},
                   ["validation"])                           # where caches live is no difference; nothing read
  assert len(hub.calls) == calls
  with pytest.raises(DataError, match=r"already holds task 'translation_en_fr' with options \{'limit': 40\} and "
                                      r"splits \['test', 'train', 'validation'\]; asked for options "
                                      r"\{'limit': 10\} .*pass --overwrite"):
    stage.stage_task(root, "translation_en_fr", {**TRANSLATION, "limit": 10})
  stage.stage_task(root, "translation_en_fr", {**TRANSLATION, "limit": 10}, overwrite=True)
  assert stage.read_manifest(root, "translation_en_fr")["counts"]["train"] < 10


def test_stage_to_gcs_and_read_back(gcs, hub, tmp_path):
  root = f"gs://{gcs.bucket}/staged-{uuid.uuid4().hex[:8]}"
  stage.stage_task(root, "translation_en_fr", TRANSLATION, ["train", "validation"])
  prefix = root[len(f"gs://{gcs.bucket}/"):] + "/translation_en_fr/"
  assert gcs.names(prefix) == ["manifest.json", "train.jsonl", "validation.jsonl"]
  direct = _examples(tasks.build_task("translation_en_fr", **TRANSLATION), "train")
  hub.reachable = False
  staged = tasks.open_task("translation_en_fr", TRANSLATION, staged=root)
  assert _examples(staged, "train") == direct and len(direct) == 35
  assert stage.staged_tasks(root) == ["translation_en_fr"]


@pytest.mark.slow
def test_the_command_line_stages_what_a_config_reads(tmp_path):
  wmt = {s: str(fake_hub.FIXTURES / "wmt14" / f"{s}.jsonl") for s in ("train", "validation")}
  out = tmp_path / "staged"
  env = {**os.environ, "PYTHONPATH": ROOT, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "grow_jax.data.stage", f"--config={ROOT}/configs/tiny.py",
         "--config.data.task=translation_en_fr", f"--config.data.options.data_files={wmt!r}", f"--out={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"{out}/translation_en_fr: task translation_en_fr, splits {{'train': 2, 'validation': 1}}" in proc.stdout
  assert f"--config.data.staged={out}" in proc.stdout
  manifest = stage.read_manifest(out, "translation_en_fr")
  assert manifest["options"]["data_files"] == wmt
  proc = subprocess.run([sys.executable, "-m", "grow_jax.data.stage", f"--out={out}"], capture_output=True,
                        text=True, timeout=300, env=env, cwd=tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "grow_jax.data.stage: error: DataError: give --task=NAME (with --splits, --option, --limit) or "
      "--config=FILE (stage what it reads), not both or neither")
