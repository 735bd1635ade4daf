"""Targeted growth: criteria, the budget as a share of ALL-LAYER growth, the growth-plan JSON, ranking agreement,
the CLI on a real (tiny) pilot run, the trainer's `growth.plan`, and the ΔW heat-maps."""

import json
import os

import numpy as np
import pytest

from config_files import ROOT, load_config
from grow_jax.errors import ConfigError
from grow_jax.growth import analysis, heatmaps, plan as plan_lib
from grow_jax.model.config import get_preset
from grow_jax.train import config as config_lib, setup

M270 = get_preset("gemma3_270m")
TINY6 = get_preset("tiny", num_layers=6)


def fake_stats(rel, erank=None):
  """Stats rows with the given per-layer relative norm (each of gate/up/down) and effective rank."""
  rows = []
  for i, r in enumerate(rel):
    row = {"layer": i, "fro": 10 * r}
    for m in analysis.MATRICES:
      row.update({f"{m}/rel": r, f"{m}/fro": 10 * r / 3 ** 0.5, f"{m}/erank": (erank or rel)[i], f"{m}/srank": 1.0})
    rows.append(row)
  return rows


@pytest.mark.slow
def test_budget_is_a_share_of_all_layer_growth_not_of_all_parameters():
  rel = [0.01 * ((7 * i) % 18 + 1) for i in range(18)]         # a permutation of 0.01 .. 0.18
  plan = plan_lib.make_plan(M270, fake_stats(rel), fraction=0.30)
  per_layer = 3 * 2048 * 640                                    # G-Freeze x2: one copy's gate, up, down
  assert plan["trainable_all_layers"] == 18 * per_layer and plan["layer_trainable"] == [per_layer] * 18
  assert len(plan["layers"]) == 5 and plan["trainable"] == 5 * per_layer     # not all 18 (the embedding's 168M)
  assert plan["layers"] == sorted(analysis.top_k(rel, 5)) and plan["order"][0] == rel.index(max(rel))
  assert plan["share_of_all_layers"] == pytest.approx(5 / 18)
  assert len(plan_lib.make_plan(M270, fake_stats(rel), fraction=1 / 3)["layers"]) == 6
  assert len(plan_lib.layers_at(plan, fraction=0.5)) == 9
  g_train = plan_lib.make_plan(M270, fake_stats(rel), num_layers=4, method="g_train")
  assert g_train["layer_trainable"][0] == 5 * 2048 * 640 and g_train["budget_kind"] == "layers"
  with pytest.raises(ConfigError, match="fraction=0.01: below one layer's share"):
    plan_lib.make_plan(M270, fake_stats(rel), fraction=0.01)
  with pytest.raises(ConfigError, match="exactly one of num_layers or fraction"):
    plan_lib.make_plan(M270, fake_stats(rel))
  with pytest.raises(ConfigError, match="method='sft': expected an MLP growth method"):
    plan_lib.make_plan(M270, fake_stats(rel), num_layers=2, method="sft")


def test_criteria_are_a_registry():
  rel, erank = [0.1, 0.5, 0.2, 0.4, 0.3, 0.05], [6.0, 1.0, 5.0, 2.0, 4.0, 3.0]
  stats = fake_stats(rel, erank)
  assert plan_lib.layer_scores(stats, "update") == pytest.approx([3 * r for r in rel])   # Σ over gate/up/down
  assert plan_lib.make_plan(TINY6, stats, num_layers=2)["layers"] == [1, 3]
  assert plan_lib.make_plan(TINY6, stats, num_layers=2, criterion="erank")["layers"] == [0, 2]
  plan_lib.register_criterion("negfro", "test: smallest first")(lambda row: -row["fro"])
  try:
    assert plan_lib.make_plan(TINY6, stats, num_layers=1, criterion="negfro")["layers"] == [5]
  finally:
    del plan_lib.CRITERIA["negfro"]
  with pytest.raises(ConfigError, match=r"criterion='nuclear': expected one of \['erank', 'fro', 'srank', 'update'\]"):
    plan_lib.layer_scores(stats, "nuclear")


def test_other_layer_sets_and_agreement():
  stats = fake_stats([0.1, 0.5, 0.2, 0.4, 0.3, 0.05])
  plan = plan_lib.make_plan(TINY6, stats, fraction=0.5)
  assert plan["layers"] == [1, 3, 4]
  assert plan_lib.layers_at(plan, fraction=1 / 3, which="bottom") == [0, 5]
  random = plan_lib.layers_at(plan, fraction=0.5, which="random", seed=3)
  assert len(random) == 3 and random == plan_lib.layers_at(plan, fraction=0.5, which="random", seed=3)
  same = plan_lib.agreement(plan, plan, ks=[2])
  assert same["spearman"] == pytest.approx(1.0) and same["top_k_overlap"] == {"2": 1.0, "3": 1.0}
  reverse = plan_lib.make_plan(TINY6, fake_stats([0.5, 0.1, 0.4, 0.2, 0.3, 0.6]), num_layers=1)
  other = plan_lib.agreement(plan, reverse, ks=[2])
  assert other["spearman"] < -0.5 and other["top_k_overlap"]["1"] == 0.0


def test_plan_files_and_model_checks(tmp_path):
  plan = plan_lib.make_plan(TINY6, fake_stats([0.1, 0.5, 0.2, 0.4, 0.3, 0.05]), num_layers=2, base="random:tiny")
  path = str(tmp_path / "plan.json")
  plan_lib.write_plan(plan, path)
  assert plan_lib.read_plan(path) == json.loads(json.dumps(plan))
  plan_lib.check_model(plan, TINY6)
  with pytest.raises(ConfigError, match=r"config.growth.plan: the plan is for another model .*num_layers=6 \(this model 7\)"):
    plan_lib.check_model(plan, get_preset("tiny"), field="config.growth.plan")
  (tmp_path / "bad.json").write_text('{"layers": [1]}')
  with pytest.raises(ConfigError, match=r"x='.*bad.json': not a growth plan \(format None"):
    plan_lib.read_plan(str(tmp_path / "bad.json"), "x")
  with pytest.raises(ConfigError, match="no such file"):
    plan_lib.read_plan(str(tmp_path / "nope.json"))


# ---- a real pilot (tiny, trained by the CLI) ----------------------------------------------------------
@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
  root = tmp_path_factory.mktemp("pilot")
  wd, out = str(root / "wd"), str(root / "plan.json")
  code = plan_lib.main([f"--pilot_config={os.path.join(ROOT, 'configs', 'tiny.py')}:steps=4,layers_n=3,seq_len=16",
                        "--pilot_set=checkpoint.every_steps=2", "--pilot_set=checkpoint.keep=5",
                        f"--pilot={wd}", "--num_layers=1", f"--out={out}"])
  assert code == 0
  return wd, out, root


@pytest.mark.slow
def test_cli_makes_a_plan_from_a_pilot_and_compares_two(pilot, capsys):
  wd, out, root = pilot
  plan = plan_lib.read_plan(out)
  assert len(plan["layers"]) == 1 and plan["base"] == "random:tiny" and plan["criterion"] == "update"
  assert plan["pilot"] == {"workdir": wd, "step": 4, "total_steps": 4, "seed": 0, "mode": "sft", "task": "synthetic"}
  assert all(row["fro"] > 0 for row in plan["stats"]) and plan["model"]["num_layers"] == 3
  early = str(root / "plan_step2.json")
  assert plan_lib.main([f"--pilot={wd}", "--step=2", "--fraction=0.7", "--criterion=erank", f"--out={early}"]) == 0
  assert plan_lib.read_plan(early)["pilot"]["step"] == 2 and len(plan_lib.read_plan(early)["layers"]) == 2
  capsys.readouterr()
  assert plan_lib.main([f"--compare={out},{early}", "--k=2"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert set(result["top_k_overlap"]) == {"1", "2"} and -1.0 <= result["spearman"] <= 1.0
  assert plan_lib.main([f"--compare={out}"]) == 1
  assert "expected two plan files" in capsys.readouterr().err


def test_a_params_file_pilot_ranks_the_layer_that_moved(tmp_path, capsys):
  """A kept params file (e.g. a study's sweep run) is a pilot too; it needs --base, as it does not name one."""
  from grow_jax import formats
  from grow_jax.formats import params_file
  config, params = formats.load_checkpoint("random:tiny")
  assert config.num_layers >= 3
  params["layer_1"]["mlp"]["linear"] = np.asarray(params["layer_1"]["mlp"]["linear"]) * 1.5
  path, out = tmp_path / "pilot.safetensors", tmp_path / "plan.json"
  params_file.save_params_file(path, config, params)
  assert plan_lib.main([f"--pilot={path}", "--base=random:tiny", "--num_layers=1", f"--out={out}"]) == 0
  plan = plan_lib.read_plan(str(out))
  assert plan["layers"] == [1] and plan["pilot"]["params_file"] == str(path) and plan["base"] == "random:tiny"
  capsys.readouterr()
  assert plan_lib.main([f"--pilot={path}", "--num_layers=1"]) == 1
  assert "is a params file, which does not name its starting weights: pass --base" in capsys.readouterr().err
  assert plan_lib.main([f"--pilot={path}", "--base=random:tiny", "--step=3", "--num_layers=1"]) == 1
  assert "--step=3: a params file holds one step" in capsys.readouterr().err


@pytest.mark.slow
def test_the_trainer_grows_the_plans_layers(pilot):
  _, out, _ = pilot
  layer = plan_lib.read_plan(out)["layers"][0]
  config = load_config("tiny", "mode=g_freeze,layers_n=3")
  config.growth.plan = out
  config_lib.check(config)
  mc = setup.grown_model_config(config, setup.base_model_config(config))
  assert [len(mc.layer_mlp_branches(i)) for i in range(3)] == [2 if i == layer else 1 for i in range(3)]
  assert config_lib.growth_layers_spec(config) == str(layer)
  config.growth.layers = "0"
  with pytest.raises(ConfigError, match="config.growth.layers='0': expected 'all' when growth.plan="):
    config_lib.check(config)
  other = load_config("tiny", "mode=g_freeze,layers_n=2")
  other.growth.plan = out
  with pytest.raises(ConfigError, match=r"config.growth.plan: the plan is for another model .*num_layers=3 \(this model 2\)"):
    setup.grown_model_config(other, setup.base_model_config(other))


def test_the_base_norm_control_sees_a_ranking_made_by_the_base_weights():
  stats = fake_stats([1.0] * 6)
  for row, norm in zip(stats, [4.0, 1.0, 3.0, 6.0, 2.0, 5.0]):   # the same ||ΔW|| everywhere, ||W_down|| varies
    row["down/rel"] = row["down/fro"] / norm
  by_rel = plan_lib.make_plan(TINY6, stats, criterion="update", num_layers=2)
  assert heatmaps.base_norm_control(by_rel) == pytest.approx(1.0)          # scores follow 1/||W_down|| exactly
  opposite = {**by_rel, "scores": [-x for x in by_rel["scores"]]}
  assert heatmaps.base_norm_control(opposite) == pytest.approx(-1.0)


def test_heatmaps_are_deterministic_and_measure_localisation(tmp_path, capsys):
  a = plan_lib.make_plan(TINY6, fake_stats([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), num_layers=2)
  b = plan_lib.make_plan(TINY6, fake_stats([6.0, 0.0, 0.0, 1.0, 1.0, 2.0]), num_layers=2)
  loc = heatmaps.localisation({"even": a, "peaked": b}, ks=(3,))
  assert loc["even"]["top3"] == pytest.approx(0.5) and loc["even"]["even3"] == 0.5
  assert loc["peaked"]["top3"] == pytest.approx(0.9)
  assert heatmaps.matrix_grid(b, "rel").shape == (6, 3)
  paths = []
  for name in ("a.json", "b.json"):
    plan_lib.write_plan(a if name == "a.json" else b, str(tmp_path / name))
  for out in ("one", "two"):
    assert heatmaps.main([f"--plans={tmp_path / 'a.json'},{tmp_path / 'b.json'}", "--labels=even,peaked",
                          f"--out={tmp_path / out}"]) == 0
    paths.append(tmp_path / f"{out}.png")
  assert paths[0].read_bytes() == paths[1].read_bytes() and len(paths[0].read_bytes()) > 1000
  assert "spearman_update_norm" in json.loads((tmp_path / "one.json").read_text())["agreement"]
  assert "share of update norm in top 3 layers" in (tmp_path / "one.md").read_text()
  assert heatmaps.main([f"--plans={tmp_path / 'a.json'}", "--labels=x,y", f"--out={tmp_path / 'bad'}"]) == 1
  assert "expected 1 distinct names" in capsys.readouterr().err
