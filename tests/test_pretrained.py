"""Pretrained weights shipped in the package: ``pretrained:NAME`` for chainrule.load and every
command, checked against their sha256 before loading."""

from __future__ import annotations

import json
import shutil

import pytest

import chainrule
from chainrule import pretrained, recipes

from .conftest import run_cli as run


def one_line(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """The shipped files copied to a temporary folder, and the loader pointed at it."""
    d = tmp_path / "pretrained"
    shutil.copytree(pretrained.DIRECTORY, d, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(pretrained, "DIRECTORY", d)
    return d


def test_the_registry_matches_the_shipped_files():
    reg = pretrained.index()
    assert "digits-ladder-nade" in reg
    for name, e in reg.items():
        assert e["recipe"] in recipes.RECIPES, name
        assert e["data"] == recipes.recipe(e["recipe"])["data"]
        assert isinstance(e["test_nll_nats"], float) and e["date"] and e["command"]
        assert pretrained.sha256(pretrained.resolve(name)) == e["sha256"]
        model = chainrule.load(f"pretrained:{name}")
        assert model.name == e["model"] == recipes.recipe(e["recipe"])["model"]
    assert pretrained.total_bytes() <= pretrained.MAX_TOTAL_BYTES


def test_sample_from_shipped_weights_writes_a_png_without_training(capsys, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)  # the default output goes here, never into the package
    before = sorted(p.name for p in pretrained.DIRECTORY.iterdir())
    code, out, err = run(capsys, "sample", "--checkpoint", "pretrained:digits-ladder-nade",
                         "--n", "16", "--quiet")  # fmt: skip
    assert code == 0, err
    png = tmp_path / "digits-ladder-nade-samples-n16-seed0.png"
    assert png.is_file() and f"wrote {png.name}" in out
    assert Image.open(png).size[0] > 8
    assert sorted(p.name for p in pretrained.DIRECTORY.iterdir()) == before


def test_eval_of_shipped_weights_finds_their_data_and_their_nll(capsys):
    e = pretrained.entry("digits-ladder-nade")
    code, out, err = run(capsys, "eval", "--checkpoint", "pretrained:digits-ladder-nade", "--quiet")
    assert code == 0, err
    assert out.startswith("digits test (270 images): NLL")
    assert f"NLL {e['test_nll_nats']:.3f} nats" in out


def test_a_corrupted_shipped_file_is_refused_in_one_line(package_copy, capsys):
    path = package_copy / "digits-ladder-nade.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="does not match its sha256"):
        chainrule.load("pretrained:digits-ladder-nade")
    code, out, err = run(capsys, "sample", "--checkpoint", "pretrained:digits-ladder-nade",
                         "--out", package_copy.parent / "s.png")  # fmt: skip
    line = one_line(code, err)
    assert "digits-ladder-nade.safetensors does not match its sha256" in line
    assert not (package_copy.parent / "s.png").exists()


def test_an_unknown_name_lists_the_names(capsys):
    with pytest.raises(
        ValueError, match="no pretrained weights named 'nope'; available: .*digits-ladder-nade"
    ):
        chainrule.load("pretrained:nope")
    code, out, err = run(capsys, "eval", "--checkpoint", "pretrained:nope")
    assert "available:" in one_line(code, err)


def test_listings_show_which_recipes_have_weights(capsys):
    code, out, err = run(capsys, "pretrained")
    assert code == 0 and "pretrained:digits-ladder-nade" in out
    code, out, err = run(capsys, "recipes", "digits-ladder-nade")
    assert "weights: pretrained:digits-ladder-nade" in out
    assert f"test NLL {pretrained.entry('digits-ladder-nade')['test_nll_nats']:.3f}" in out


def test_adding_a_finished_run_is_one_call(package_copy, capsys, tmp_path):
    from chainrule.pretrained.__main__ import main as pretrained_main

    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--recipe", "digits-ladder-markov-k2", "--out", run_dir,
                         "--quiet")  # fmt: skip
    assert code == 0, err
    assert pretrained_main(["add", str(run_dir), "--recipe", "digits-ladder-markov-k2"]) == 0
    assert "added pretrained:digits-ladder-markov-k2" in capsys.readouterr().out
    e = pretrained.entry("digits-ladder-markov-k2")
    result = json.loads((run_dir / "result.json").read_text())
    assert e["test_nll_nats"] == result["test_nll_nats"] and e["data"] == "digits"
    assert "--recipe digits-ladder-markov-k2" in e["command"]
    model = chainrule.load("pretrained:digits-ladder-markov-k2")
    assert model.name == "markov" and model.config.order == 2
    # an unfinished run or an unknown recipe is refused
    (run_dir / "result.json").unlink()
    assert pretrained_main(["add", str(run_dir), "--recipe", "digits-ladder-markov-k2"]) == 1
    assert pretrained_main(["add", str(tmp_path), "--recipe", "nope"]) == 1
