"""A stand-in for the Hugging Face hub: `datasets.load_dataset` of a hub dataset answers from tests/fixtures/data
(each dataset's real schema, read by the `json` builder as the hub's files would be), records every call, and can
be cut off (`hub.reachable = False`: every hub call raises ConnectionError, as on a node without internet).

    def test_x(monkeypatch, tmp_path):
      hub = fake_hub.install(monkeypatch, tmp_path)
      ...
      assert hub.calls[-1]["revision"] == "refs/convert/parquet"
"""

import pathlib

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "data"
# hub dataset -> its fixture folder
DATASETS = {"wmt/wmt14": "wmt14", "Helsinki-NLP/opus_books": "opus_books", "allenai/winogrande": "winogrande",
            "allenai/scitail": "scitail", "allenai/sciq": "sciq", "allenai/math_qa": "math_qa"}


class FakeHub:
  def __init__(self, real_load, cache_dir):
    self.real_load, self.cache_dir = real_load, str(cache_dir)
    self.calls: list[dict] = []
    self.reachable = True

  def load_dataset(self, path, name=None, *, split=None, data_files=None, cache_dir=None, streaming=False,
                   revision=None, **kwargs):
    if path == "json":                         # local files (data_files): datasets' own builder
      return self.real_load("json", data_files=data_files, split=split, cache_dir=cache_dir or self.cache_dir,
                            streaming=streaming, **kwargs)
    self.calls.append(dict(path=path, name=name, split=split, streaming=streaming, revision=revision))
    if not self.reachable:
      raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")
    file = FIXTURES / DATASETS[path] / f"{split}.jsonl"
    return self.real_load("json", data_files={split: str(file)}, split=split, cache_dir=self.cache_dir,
                          streaming=streaming)


def install(monkeypatch, cache_dir) -> FakeHub:
  """Puts a FakeHub in place of datasets.load_dataset for the test; returns it."""
  import datasets
  hub = FakeHub(datasets.load_dataset, cache_dir)
  monkeypatch.setattr(datasets, "load_dataset", hub.load_dataset)
  return hub
