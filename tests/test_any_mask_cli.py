"""The order-agnostic models from the command line, as a user runs them: completion of any
mask (exact, said so in the output and the picture's caption, with log p(hidden | visible)),
and scoring / detection of images with missing pixels (``--mask``)."""

from __future__ import annotations

import pytest

from chainrule.cli import main

from .conftest import run_cli as run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A MADE and a NADE trained for one epoch on 300 digits (tiny, quick)."""
    root = tmp_path_factory.mktemp("anymask")
    out = {}
    for name, opts in (("made", ["--masks", "2", "--ensemble", "2"]), ("nade", [])):
        out[name] = root / name
        argv = ["train", "--model", name, "--hidden", "8", "--epochs", "1", "--max-train", "300"]
        assert main([*argv, *opts, "--out", str(out[name]), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("spec", ["checkerboard", "random:0.5", "right-half"])
def test_complete_any_mask_is_exact_and_reports_the_conditional(runs, capsys, tmp_path, spec):
    png = tmp_path / "c.png"
    code, out, err = run(
        capsys, "complete", "--checkpoint", runs["made"], "--occlude", spec, "--n", "3",
        "--out", png, "--quiet",
    )  # fmt: skip
    assert code == 0 and png.is_file(), err
    assert "exact draws from p(hidden | visible)" in out and "not exact" not in out
    assert "log p(hidden | visible)" in out and "Traceback" not in err
    assert "note:" not in err  # no warning about prefixes


def test_complete_with_a_fixed_ordering_says_it_is_not_exact(runs, capsys, tmp_path):
    code, out, err = run(
        capsys, "complete", "--checkpoint", runs["nade"], "--occlude", "checkerboard",
        "--n", "2", "--out", tmp_path / "c.png", "--quiet",
    )  # fmt: skip
    assert code == 0 and "not exact" in out and "log p(hidden | visible)" not in out


def test_score_with_missing_pixels(runs, capsys, tmp_path):
    csv = tmp_path / "s.csv"
    code, out, err = run(
        capsys, "score", "--checkpoint", runs["made"], "--mask", "right-half",
        "--max-images", "40", "--out", csv, "--quiet",
    )  # fmt: skip
    assert code == 0 and csv.is_file(), err
    assert "32 of 64 values visible" in out and "-log p(visible)" in out
    full = tmp_path / "full.csv"
    assert (
        run(capsys, "score", "--checkpoint", runs["made"], "--max-images", "40", "--out", full)[0]
        == 0
    )
    visible = [float(r.split(",")[1]) for r in csv.read_text().splitlines()[1:]]
    whole = [float(r.split(",")[1]) for r in full.read_text().splitlines()[1:]]
    # -log p(visible) < -log p(all): the hidden half's values are summed out, never scored
    assert all(v < w for v, w in zip(visible, whole, strict=True))


def test_score_draws_nll_maps_of_a_single_model_and_says_why_not_of_an_ensemble(
    runs, capsys, tmp_path
):
    import chainrule

    assert not chainrule.load(runs["made"]).has_conditionals  # a mixture of 2 masks
    assert chainrule.load(runs["nade"]).has_conditionals
    for name, maps in (("made", False), ("nade", True)):
        csv = tmp_path / f"{name}.csv"
        code, out, err = run(
            capsys, "score", "--checkpoint", runs[name], "--max-images", "10", "--maps", "2",
            "--out", csv,
        )  # fmt: skip
        assert code == 0, err
        pngs = list(tmp_path.glob(f"{name}*.png"))
        assert bool(pngs) is maps, (name, pngs, out)
        assert ("no per-pixel NLL maps: this made is an ensemble" in err) is (not maps)


def test_a_mask_a_fixed_ordering_cannot_marginalize_is_one_line(runs, capsys, tmp_path):
    csv = tmp_path / "s.csv"
    code, out, err = run(
        capsys, "score", "--checkpoint", runs["nade"], "--mask", "right-half", "--out", csv
    )
    assert code == 1 and "order-agnostic" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not csv.exists()
    code, _, err = run(capsys, "score", "--checkpoint", runs["made"], "--mask", "random:2")
    assert code == 1 and "between 0 and 1" in err and len(err.strip().splitlines()) == 1


def test_detect_with_missing_pixels(runs, capsys, tmp_path):
    code, out, err = run(
        capsys, "detect", "--checkpoint", runs["made"], "--ood", "flip", "--mask",
        "checkerboard", "--max-images", "40", "--out-dir", tmp_path / "d", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "32 visible values of 64" in out and (tmp_path / "d" / "roc.png").is_file()
