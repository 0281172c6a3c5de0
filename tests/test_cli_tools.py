"""End to end on digits: train, score, detect against shifted sets, features, probe; and the
user's mistakes (another shape, an empty set, binary vs 8-bit data) as one line and exit 1."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import chainrule
from chainrule.cli import main
from chainrule.data import load_dataset

from .conftest import run_cli as run


def written(out: str) -> list[Path]:
    """The files a command says it wrote (every command ends with that list)."""
    return [Path(m) for m in re.findall(r"^wrote (\S+)", out, flags=re.M)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "fvsbn-digits"
    argv = [
        "train",
        "--model",
        "fvsbn",
        "--data",
        "digits",
        "--epochs",
        "3",
        "--out",
        str(run_dir),
        "--quiet",
    ]
    assert main(argv) == 0
    return run_dir


def test_score_writes_csv_and_nll_maps(trained, capsys, tmp_path):
    out_csv = tmp_path / "scores.csv"
    code, out, err = run(capsys, "score", "--checkpoint", trained, "--out", out_csv, "--maps", "4")
    assert code == 0, err
    files = written(out)
    assert files[0] == out_csv and files[1].suffix == ".png" and all(f.is_file() for f in files)
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 270 and set(rows[0]) >= {
        "nll_nats",
        "bits_per_dim",
        "png_bits",
        "complexity_bits",
        "label",
    }
    nll = np.array([float(r["nll_nats"]) for r in rows])
    # the CSV's NLL is the model's, image by image
    model = chainrule.load(trained)
    x = load_dataset("digits").test
    assert np.allclose(nll, -model.log_prob(x).double().detach().numpy(), atol=1e-4)
    bpd = np.array([float(r["bits_per_dim"]) for r in rows])
    assert np.allclose(bpd, nll / (64 * np.log(2)), atol=1e-5)
    result = json.loads((trained / "result.json").read_text())
    assert nll.mean() == pytest.approx(result["test_nll_nats"], abs=1e-3)
    code, out, _ = run(
        capsys, "score", "--checkpoint", trained, "--out", out_csv, "--images", "3,5"
    )
    assert code == 0 and len(written(out)) == 2


def test_detect_against_shifted_sets(trained, capsys, tmp_path):
    code, out, err = run(
        capsys, "detect", "--checkpoint", trained, "--ood", "noise", "--out-dir", tmp_path / "n"
    )
    assert code == 0, err
    files = written(out)
    names = {f.name for f in files}
    assert {
        "hist_nll.png",
        "hist_bits_per_dim.png",
        "hist_complexity.png",
        "roc.png",
        "scores.csv",
        "detect.json",
    } <= names
    assert all(f.is_file() and f.stat().st_size > 100 for f in files)
    report = json.loads((tmp_path / "n" / "detect.json").read_text())
    m = report["metrics"]
    assert m["nll"]["auroc"] > 0.98  # noise is far from digits
    assert 0.0 <= m["nll"]["false_alarm_rate"] <= 0.2
    assert "AUROC" in out and "false alarms" in out
    code, out, err = run(
        capsys,
        "detect",
        "--checkpoint",
        trained,
        "--in",
        "digits",
        "--ood",
        "flip",
        "--score",
        "nll",
        "--out-dir",
        tmp_path / "f",
        "--false-alarm",
        "0.1",
    )
    assert code == 0, err
    flip = json.loads((tmp_path / "f" / "detect.json").read_text())["metrics"]
    assert set(flip) == {"nll"} and 0.5 < flip["nll"]["auroc"] < 1.0  # upside-down digits: harder
    assert flip["nll"]["auroc"] < m["nll"]["auroc"]


def test_features_and_probe(trained, capsys, tmp_path):
    npz = tmp_path / "feats.npz"
    code, out, err = run(capsys, "features", "--checkpoint", trained, "--out", npz)
    assert code == 0, err
    assert written(out) == [npz]
    with np.load(npz) as z:
        assert z["train"].shape == (1257, 64) and z["test_y"].shape == (270,)
        model = chainrule.load(trained)
        expected = model.features(load_dataset("digits").test).detach().numpy()
        assert np.allclose(z["test"], expected, atol=1e-5)
    out_csv = tmp_path / "probe.csv"
    code, out, err = run(
        capsys,
        "probe",
        "--checkpoint",
        trained,
        "--features",
        npz,
        "--out",
        out_csv,
        "--json",
        tmp_path / "probe.json",
    )
    assert code == 0, err
    assert "fvsbn features" in out and "raw pixels" in out and written(out)[0] == out_csv
    r = json.loads((tmp_path / "probe.json").read_text())
    assert 0.5 < r["features"]["test_accuracy"] <= 1.0 and 0.8 < r["pixels"]["test_accuracy"] <= 1.0
    code, out2, _ = run(capsys, "probe", "--checkpoint", trained)  # computes the features itself
    assert code == 0 and "files written: none" in out2
    acc = re.findall(r"test accuracy (\d\.\d+)", out)
    assert acc == re.findall(r"test accuracy (\d\.\d+)", out2)  # same features, same probe


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_user_mistakes_are_one_line(trained, capsys, tmp_path):
    rng = np.random.default_rng(0)
    other_shape = _npz(tmp_path / "big.npz", x=rng.integers(0, 2, (40, 28, 28)).astype(np.uint8))
    eight_bit = _npz(tmp_path / "grey.npz", x=rng.integers(0, 256, (40, 8, 8)).astype(np.uint8))
    empty = _npz(
        tmp_path / "empty.npz",
        train=np.zeros((5, 8, 8), np.uint8),
        valid=np.zeros((5, 8, 8), np.uint8),
        test=np.zeros((0, 8, 8), np.uint8),
    )
    # binary and 8-bit values mixed in one set: the set is 8-bit, the model binary
    mixed_x = rng.integers(0, 2, (40, 8, 8)).astype(np.uint8)
    mixed_x[0, 0, 0] = 200
    mixed = _npz(tmp_path / "mixed.npz", x=mixed_x)
    unlabelled = _npz(tmp_path / "nolabels.npz", x=rng.integers(0, 2, (40, 8, 8)).astype(np.uint8))
    cases = [
        (["detect", "--ood", other_shape], "shape 1x28x28 but the model expects 1x8x8"),
        (["detect", "--ood", eight_bit], "256 levels but the model was built for levels=2"),
        (["detect", "--ood", mixed], "256 levels but the model was built for levels=2"),
        (["detect", "--ood", "digits:levels"], "17 levels"),
        (["detect", "--ood", empty], "empty"),
        (["detect", "--in", other_shape, "--ood", "noise"], "shape 1x28x28"),
        (["detect", "--ood", "noise", "--score", "likelihood"], "--score must name"),
        (["score", "--data", eight_bit], "256 levels"),
        (["score", "--data", other_shape], "shape 1x28x28"),
        (["score", "--images", "999"], "--images must be indices"),
        (["features", "--data", other_shape], "shape 1x28x28"),
        (["probe", "--data", unlabelled], "no labels"),
        (["probe", "--data", other_shape], "no labels"),
        (["probe", "--features", tmp_path / "missing.npz"], "no such file"),
        (["detect", "--ood", "nothing"], "unknown data set"),
    ]
    for argv, match in cases:
        code, out, err = run(capsys, argv[0], "--checkpoint", trained, *argv[1:])
        assert code == 1, (argv, out, err)
        assert match in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    code, _, err = run(capsys, "detect", "--checkpoint", tmp_path / "no-run", "--ood", "noise")
    assert code == 1 and "no checkpoint" in err and err.count("\n") == 1


def test_noise_ood_of_an_8bit_model_uses_its_levels(capsys, tmp_path):
    model = chainrule.build("independent", event_shape=(1, 8, 8), levels=17)
    chainrule.save(model.fit(load_dataset("digits:levels").train.double()), tmp_path / "run")
    code, out, err = run(
        capsys,
        "detect",
        "--checkpoint",
        tmp_path / "run",
        "--in",
        "digits:levels",
        "--ood",
        "noise",
        "--score",
        "nll",
        "--out-dir",
        tmp_path / "d",
    )
    assert code == 0, err
    m = json.loads((tmp_path / "d" / "detect.json").read_text())["metrics"]["nll"]
    assert m["auroc"] > 0.99
    assert torch.get_default_dtype() == torch.float64  # untouched by the command
