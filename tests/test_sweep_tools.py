"""The tools around a trained model, as a user meets them on the command line: receptive-field
mistakes are one line before any work, a full disk leaves the old PNG as it was, no progress bar
goes to a pipe, subsets are random draws, and messages name the flag to use."""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import chainrule
from chainrule import outputs
from chainrule.cli import main
from chainrule.data import load_dataset

from .conftest import run_cli as run

BAR_MARKS = ("\r", "█", "it/s", "s/it")


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 1, (code, out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def written(out: str) -> list[Path]:
    return [Path(m) for m in re.findall(r"^wrote (\S+)", out, flags=re.M)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sweep") / "fvsbn-digits"
    argv = ["train", "--model", "fvsbn", "--data", "digits", "--epochs", "1"]
    assert main([*argv, "--max-train", "200", "--out", str(run_dir), "--quiet"]) == 0
    return run_dir


@pytest.fixture
def no_compute(monkeypatch):
    """Make the receptive-field computation fail loudly: a check must come before it."""
    import chainrule.receptive_field as rf

    def boom(*a, **k):
        raise AssertionError("the receptive field was computed before the check")

    monkeypatch.setattr(rf, "receptive_field", boom)


def _disk_filling_write(calls: dict):
    """An ``os.write`` that writes one short chunk of a temporary output file, then fails with
    ENOSPC (other files, e.g. pytest's capture, are written as usual)."""
    real = os.write

    def fake(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ".tmp"
        if not target.endswith(".tmp"):
            return real(fd, data)
        calls["tmp"] = calls.get("tmp", 0) + 1
        if calls["tmp"] == 1:
            return real(fd, bytes(data[:64]))
        raise OSError(errno.ENOSPC, "No space left on device")

    return fake


@pytest.fixture
def full_disk(monkeypatch):
    calls: dict = {}
    monkeypatch.setattr(os, "write", _disk_filling_write(calls))
    return calls


RF = ["receptive-field", "--model", "row-lstm", "--shape", "1x8x8", "--layers", "2"]


# ---------------------------------------------------------------------- receptive-field
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--samples", "0"], "--samples must be a positive int"),
        (["--samples", "-1"], "--samples must be a positive int"),
        (["--scale", "0"], "--scale must be a positive int"),
        (["--channel", "1"], "--channel must be in 0..0"),
        (["--channel", "-1"], "--channel must be in 0..0"),
        (["--pixel", "8,0"], "--pixel must lie in the 8 x 8 image"),
        (["--scale", "100000"], "--scale 100000 would make a PNG"),
    ],
)
def test_receptive_field_mistakes_are_one_line_before_work(
    extra, match, no_compute, capsys, tmp_path
):
    out = tmp_path / "rf.png"
    err = one_line_error(*run(capsys, *RF, "--out", out, *extra))
    assert match in err and err.startswith("chainrule receptive-field: error: ")
    assert not out.exists()


def test_receptive_field_output_below_a_file_fails_first(no_compute, capsys, tmp_path):
    (tmp_path / "some_file").write_text("not a folder")
    before = sorted(tmp_path.iterdir())
    err = one_line_error(*run(capsys, *RF, "--out", tmp_path / "some_file" / "x.png"))
    assert "some_file is a file, not a folder" in err
    assert sorted(tmp_path.iterdir()) == before
    err = one_line_error(*run(capsys, *RF, "--out", tmp_path / "nowhere" / "x.png"))
    assert "does not exist" in err and not (tmp_path / "nowhere").exists()


def test_receptive_field_of_a_checkpoint_says_what_it_wrote(trained, capsys, tmp_path):
    out = tmp_path / "rf.png"
    code, stdout, err = run(capsys, "receptive-field", "--checkpoint", trained, "--out", out)
    assert code == 0, err
    assert "influenced by" in stdout and written(stdout) == [out] and out.is_file()
    from PIL import Image

    assert Image.open(out).size == (8 * 16, 8 * 16)
    assert not list(tmp_path.glob(".*.tmp"))


def test_receptive_field_on_a_full_disk_keeps_the_old_png(full_disk, capsys, tmp_path):
    out = tmp_path / "x.png"
    out.write_bytes(b"the good old picture")
    code, stdout, err = run(capsys, *RF, "--out", out)
    assert code != 0 and full_disk["tmp"] >= 2  # it did fail part way through the write
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "disk is full" in err and "wrote" not in stdout
    assert out.read_bytes() == b"the good old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no .x.png.*.tmp left


# ---------------------------------------------------------------------- every picture is atomic
def _draw_each(path: Path) -> None:
    from chainrule import plots
    from chainrule.completion import completion_grid, occlusion_mask
    from chainrule.receptive_field import save_receptive_field_png

    x = torch.randint(0, 2, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    yield lambda: plots.sample_grid(x, 2, path)
    metrics = [{"epoch": e, "train_nll": 3.0 - e, "valid_nll": 3.5 - e} for e in (1, 2)]
    yield lambda: plots.training_curve(metrics, path)
    yield lambda: plots.pixel_nll_maps(x, torch.rand(3, 4, 4), 2, path)
    yield lambda: plots.score_histogram(rng.normal(size=20), rng.normal(1, size=20), path)
    yield lambda: plots.roc_plot({"nll": (rng.normal(size=20), rng.normal(1, size=20))}, path)
    yield lambda: save_receptive_field_png(torch.rand(1, 4, 4), path, (3, 1), 0, scale=2)
    m = occlusion_mask("bottom-half", (1, 4, 4))
    yield lambda: completion_grid(x.double(), m, x.double().view(3, 1, 1, 4, 4), 2, path)


def test_every_picture_is_written_atomically(monkeypatch, tmp_path):
    from chainrule.plots import save_image

    path = tmp_path / "pic.png"
    draws = list(_draw_each(path))
    for draw in draws:  # on a healthy disk: a PNG
        path.unlink(missing_ok=True)
        assert draw() == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    real = os.write
    for draw in draws:  # on a full disk: the old file, untouched, and no temporary file
        path.write_bytes(b"old")
        calls: dict = {}
        monkeypatch.setattr(os, "write", _disk_filling_write(calls))
        with pytest.raises(outputs.OutputError, match="disk is full"):
            draw()
        monkeypatch.setattr(os, "write", real)
        assert calls["tmp"] == 2 and path.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pic.png"]
    with pytest.raises(outputs.OutputError, match="is a file, not a folder"):
        save_image(np.zeros((2, 2, 3), np.uint8), tmp_path / "pic.png" / "x.png")


# ---------------------------------------------------------------------- progress
def test_no_bar_characters_off_a_terminal(trained, capsys, tmp_path):
    code, out, err = run(capsys, "eval", "--checkpoint", trained)
    assert code == 0, err
    assert "NLL" in out
    code, out2, err2 = run(
        capsys, "score", "--checkpoint", trained, "--out", tmp_path / "s.csv", "--maps", "2"
    )
    assert code == 0, err2
    code, out3, err3 = run(
        capsys, "detect", "--checkpoint", trained, "--ood", "flip", "--out-dir", tmp_path / "d"
    )
    assert code == 0, err3
    for text in (out, err, out2, err2, out3, err3):
        assert not any(mark in text for mark in BAR_MARKS), text


def test_progress_shows_on_a_terminal_only(monkeypatch, capsys):
    from chainrule.anomaly import compression_bits, pixel_nll
    from chainrule.evaluate import per_image_nll
    from chainrule.probe import extract_features

    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).double()
    x = load_dataset("digits").test[:40]
    calls = [
        lambda p: per_image_nll(model, x, 2, batch_size=8, progress=p),
        lambda p: compression_bits(x, 2, progress=p),
        lambda p: pixel_nll(model, x, 2, batch_size=8, progress=p),
        lambda p: extract_features(model, x, 2, batch_size=8, progress=p),
    ]
    results = [call(False) for call in calls]
    assert capsys.readouterr() == ("", "")
    for call in calls:  # off a terminal: nothing even when asked for
        call(True)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a person is watching
    for call, before in zip(calls, results, strict=True):
        after = call(True)
        assert np.array_equal(np.asarray(after), np.asarray(before))  # same numbers with a bar
        out, err = capsys.readouterr()
        assert out == "" and ("it/s" in err or "s/it" in err), err
    for call in calls:  # progress=False: nothing, even on a terminal
        call(False)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(outputs, "QUIET", True)  # --quiet: nothing either
    for call in calls:
        call(True)
    assert capsys.readouterr() == ("", "")


def test_pixel_nll_batched_is_one_pass():
    from chainrule.anomaly import pixel_nll

    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).double()
    x = load_dataset("digits").test[:13]
    whole = pixel_nll(model, x, 2, batch_size=100)
    assert whole.shape == (13, 8, 8)
    assert torch.allclose(pixel_nll(model, x, 2, batch_size=4), whole)
    assert torch.allclose(whole.sum((1, 2)), -model.log_prob(x.double()).double())


# ---------------------------------------------------------------------- probe
def test_probe_not_converging_is_one_line(trained, capsys, tmp_path):
    code, out, err = run(capsys, "probe", "--checkpoint", trained, "--max-iter", "1")
    assert code == 0, err
    assert "test accuracy" in out
    notes = [line for line in err.splitlines() if "did not converge" in line]
    assert len(notes) == 1, err
    assert "raise --max-iter" in notes[0] and "iteration" in notes[0]
    assert "ConvergenceWarning" not in err and "Traceback" not in err
    assert not any(mark in out + err for mark in BAR_MARKS)


def test_linear_probe_reports_convergence():
    from chainrule.probe import convergence_note, linear_probe, probe_vs_pixels, raw_pixels

    digits = load_dataset("digits")
    px = raw_pixels(digits)
    r = linear_probe(px, max_iter=1, note=False, c_grid=(0.1, 1.0))
    assert r["not_converged_C"] == [0.1, 1.0] and r["max_iter"] == 1
    line = convergence_note([("pixels", r), ("more pixels", r)])
    assert line.count("did not converge") == 1 and "(pixels)" in line and "\n" not in line
    rng = np.random.default_rng(0)
    easy = {}
    for split in ("train", "valid", "test"):
        y = rng.integers(0, 2, 60)
        easy[split], easy[f"{split}_y"] = rng.normal(size=(60, 3)) + 3.0 * y[:, None], y
    ok = linear_probe(easy, note=False)
    assert ok["not_converged_C"] == [] and convergence_note([("easy", ok)]) is None
    with pytest.raises(ValueError, match="max_iter"):
        linear_probe(px, max_iter=0)
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).double()
    feats = {s: px[s] * 2.0 for s in ("train", "valid", "test")}  # no labels: taken from the data
    res = probe_vs_pixels(model, digits, feats=feats, c_grid=(0.1,), max_iter=1, note=False)
    assert res["features"]["test_accuracy"] == pytest.approx(res["pixels"]["test_accuracy"])
    with pytest.raises(ValueError, match="do not match"):
        probe_vs_pixels(model, digits, feats={**feats, "test": feats["test"][:5]})


def test_probe_warnings_other_than_convergence_pass_through(monkeypatch):
    import warnings

    from chainrule.probe import _fit_quietly

    class Noisy:
        def fit(self, x, y):
            from sklearn.exceptions import ConvergenceWarning

            warnings.warn("stopped early", ConvergenceWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)

    with pytest.warns(UserWarning, match="something else") as rec:
        assert _fit_quietly(Noisy(), None, None) is False
    assert not any("stopped early" in str(w.message) for w in rec)


# ---------------------------------------------------------------------- detect: messages, subsets
def test_unknown_ood_set_lists_the_special_sets(trained, capsys, tmp_path):
    for spec in ("nosuchset", "flip:nosuchset"):
        err = one_line_error(
            *run(capsys, "detect", "--checkpoint", trained, "--ood", spec, "--out-dir", tmp_path)
        )
        assert "unknown data set 'nosuchset'" in err
        for special in ("noise", "flip[:NAME]", "hflip[:NAME]", "invert[:NAME]", "digits"):
            assert special in err, err


def test_eight_bit_ood_set_hint_names_the_ood_flag(trained, capsys, tmp_path):
    err = one_line_error(*run(capsys, "detect", "--checkpoint", trained, "--ood", "digits:levels"))
    assert "--ood digits:binarize" in err and "--data" not in err
    from chainrule.anomaly import ood_binarize_hint

    assert ood_binarize_hint("flip:mnist") == "--ood flip:mnist:binarize"
    assert ood_binarize_hint("notmnist:levels=4") == "--ood notmnist:binarize"
    assert ood_binarize_hint("npz:/tmp/a.npz") == "--ood NAME:binarize"


def test_detect_subsets_are_seeded_random_draws():
    from chainrule.anomaly import _subset, detect
    from chainrule.evaluate import per_image_nll

    digits = load_dataset("digits")
    model = chainrule.build("independent", event_shape=(1, 8, 8), levels=2).double()
    model.fit(digits.train.double())
    det = detect(model, digits, "digits", scores=("nll",), max_images=50, seed=3)
    idx = outputs.random_subset(len(digits.test), 50, 3)
    expected = per_image_nll(model, digits.test[idx], 2).numpy()
    assert np.allclose(det.scores_in["nll"], expected)
    assert len(det.scores_out["nll"]) == 50
    assert not torch.equal(idx, torch.arange(50))  # not the first 50
    assert torch.equal(_subset(digits.test, 50), digits.test[outputs.random_subset(270, 50, 0)])
    assert _subset(digits.test, None) is digits.test and _subset(digits.test, 10**6) is digits.test
    for bad in (0, -3):
        with pytest.raises(ValueError, match="positive int"):
            detect(model, digits, "noise", max_images=bad)
