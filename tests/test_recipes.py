"""Recipes: `chainrule recipes` lists them, `chainrule train --recipe NAME` runs one (printed,
recorded in config.json, overridable flag by flag)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chainrule import recipes
from chainrule.cli.options import train_flags
from chainrule.models.registry import make_config, model_class
from chainrule.train import TrainConfig

from .conftest import run_cli as run


def one_line(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_is_a_valid_model_and_training_setting(name):
    r = recipes.recipe(name)
    assert r["description"] and "\n" not in r["description"]
    cls = model_class(r["model"])
    make_config(r["model"], **r.get("options", {}))  # options of the model
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(r.get("train", {})) <= fields
    settings = {**dataclasses.asdict(TrainConfig()), **getattr(cls, "train_defaults", {})}
    TrainConfig(**{**settings, **r.get("train", {})}).validate()
    # every training setting of a recipe can be given as a flag (its command is runnable)
    flags = {tf.field for tf in train_flags()}
    assert set(r.get("train", {})) <= flags
    assert recipes.recipe_command(name).startswith(f"chainrule train --model {r['model']} ")


def test_the_nade_recipe_is_the_background_run():
    assert (
        recipes.recipe_args("nade-binarized-mnist")
        == (
            "--model nade --data binarized-mnist --hidden 500 --lr 0.002 --lr-schedule cosine-time "
            "--time-budget 55 --epochs 500 --patience 0 --batch-size 256 --init-output-bias"
        ).split()
    )


def test_the_ladder_and_the_presets_are_there():
    names = recipes.names()
    for rung in ("independent", "markov-k1", "markov-k2", "fvsbn", "nade", "pixelcnn",
                 "row-lstm", "diagonal-bilstm"):  # fmt: skip
        assert f"digits-ladder-{rung}" in names
    for model in ("pixelcnn", "row-lstm", "diagonal-bilstm"):
        r = recipes.recipe(f"{model}-cpu-small-binarized-mnist")
        assert r["options"] == {"preset": "cpu-small"}
        assert r["train"]["lr_schedule"] == "cosine-time" and r["train"]["time_budget_min"]
    assert "rnade-mnist" in names
    with pytest.raises(ValueError, match="unknown recipe 'nope'; recipes: nade-binarized-mnist"):
        recipes.recipe("nope")


def test_recipes_command_lists_names_settings_and_results(capsys):
    code, out, err = run(capsys, "recipes")
    assert code == 0
    for name in recipes.names():
        assert name in out and recipes.recipe_command(name) in out
    assert "test NLL 1018.700 nats" in out  # rnade-mnist's recorded result
    code, out, err = run(capsys, "recipes", "--json")
    doc = json.loads(out)
    assert set(doc) == set(recipes.names()) | set(recipes.MIXTURES)
    assert all(doc[n]["kind"] == "mixture" and doc[n]["commands"] for n in recipes.MIXTURES)
    assert doc["nade-binarized-mnist"]["train"]["time_budget_min"] == 55
    code, out, err = run(capsys, "recipes", "nope")
    assert "unknown recipe 'nope'" in one_line(code, err)


def test_train_recipe_prints_and_records_its_settings(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--recipe", "digits-ladder-markov-k1", "--out", out)
    assert code == 0, err
    assert (
        "recipe settings: chainrule train --model markov --data digits --order 1 --closed-form"
        in err
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["name"] == "digits-ladder-markov-k1"
    assert cfg["recipe"]["settings"]["options"] == {"order": 1}
    assert cfg["recipe"]["overrides"] == {}
    assert cfg["model"] == "markov" and cfg["options"]["order"] == 1 and cfg["train"]["closed_form"]
    # a resume may not switch recipe
    code, stdout, err = run(capsys, "train", "--resume", out, "--recipe", "digits-ladder-fvsbn")
    assert "--recipe cannot change on --resume" in one_line(code, err)


def test_flags_beside_a_recipe_override_it_and_say_so(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--recipe", "digits-ladder-markov-k1", "--order", "2",
                            "--seed", "3", "--out", out)  # fmt: skip
    assert code == 0, err
    assert "overridden by the command line: --order 2 (recipe: 1)" in err
    assert "overridden by the command line: --seed 3 (recipe: not set)" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["options"]["order"] == 2 and cfg["train"]["seed"] == 3
    assert cfg["recipe"]["overrides"] == {"order": 2, "seed": 3}


def test_an_unknown_recipe_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--recipe", "nope", "--out", tmp_path / "r")
    line = one_line(code, err)
    assert "unknown recipe 'nope'" in line and "digits-ladder-nade" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", list(recipes.MIXTURES))
def test_every_mixture_recipe_is_commands_the_cli_accepts(name, capsys):
    import shlex

    from chainrule.cli import build_parser

    commands = recipes.mixture_commands(name)
    assert commands[-1].startswith("chainrule mix ") and len(commands) >= 2
    parser = build_parser()
    for c in commands:
        argv = shlex.split(c)[1:]
        args = parser.parse_args(argv)  # argparse exits (status 2) on a flag it does not know
        if argv[0] == "train":
            r = recipes.recipe(args.recipe)  # the member's recipe exists
            assert args.out and r["model"]
    # `chainrule recipes` shows the commands; `train --recipe` says it is several, in one line
    code, out, _ = run(capsys, "recipes")
    assert code == 0 and all(c in out for c in commands)
    code, out, err = run(capsys, "train", "--recipe", name)
    line = one_line(code, err)
    assert "mixture recipe" in line and commands[-1] in line
