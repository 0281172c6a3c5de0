"""The command line: the main commands work, user mistakes are one line and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import chainrule
from chainrule.cli import main

from .conftest import run_cli as run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "fvsbn"
    code = main(
        [
            "train",
            "--model",
            "fvsbn",
            "--data",
            "digits",
            "--epochs",
            "2",
            "--max-train",
            "300",
            "--out",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    return run_dir


def test_train_eval_sample(trained_run, capsys, tmp_path):
    result = json.loads((trained_run / "result.json").read_text())
    code, out, err = run(capsys, "eval", "--checkpoint", str(trained_run))
    assert code == 0 and "nats per image" in out and "bits/dim" in out
    assert f"{result['test_nll_nats']:.3f}" in out
    png = tmp_path / "s.png"
    code, out, _ = run(
        capsys, "sample", "--checkpoint", str(trained_run), "--n", "9", "--out", str(png)
    )
    assert code == 0 and png.is_file() and png.stat().st_size > 100


def test_params_prints_exact_counts(capsys):
    code, out, _ = run(capsys, "params", "--shape", "1x28x28", "--levels", "2")
    assert code == 0
    assert " 784" in out and " 1567" in out and str(2**784 - 1) in out and "2^784 - 1" in out
    code, out, _ = run(capsys, "params", "--shape", "3x1x1", "--levels", "256")
    assert "16777215" in out and "256^3 - 1" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train", "--model", "fvsbn", "--data", "nope"], "unknown data set 'nope'"),
        (["train", "--model", "fvsbn", "--hidden-size", "3"], None),  # argparse: exit 2
        (["train", "--model", "fvsbn", "--lr", "-1", "--epochs", "1"], None),
        (["train", "--model", "fvsbn", "--option", "hidden=3"], "unknown option"),
        (["eval", "--checkpoint", "/nonexistent/run"], "no checkpoint"),
        (["params", "--shape", "28x28"], "CxHxW"),
    ],
)
def test_user_mistakes_are_one_clear_line(argv, match, capsys, tmp_path):
    if match is None:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path / "r")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "usage" not in err
        return
    argv = argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" else [])
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_and_foreign_checkpoints(trained_run, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    code, _, err = run(capsys, "eval", "--checkpoint", str(bad))
    assert code == 1 and "truncated or corrupt" in err
    # a checkpoint of another model: the config says independent, the weights are fvsbn's
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    spec = json.loads((other / "model.json").read_text())
    spec["model"] = "independent"
    spec["config"] = {}
    (other / "model.json").write_text(json.dumps(spec))
    code, _, err = run(capsys, "eval", "--checkpoint", str(other))
    assert code == 1 and "do not match" in err
    (other / "model.json").write_text("{not json")
    code, _, err = run(capsys, "sample", "--checkpoint", str(other))
    assert code == 1 and "not valid JSON" in err
    # nothing was written into the bad run folders
    assert not (other / "samples.png").exists() or (trained_run / "samples.png").exists()


def test_train_refuses_to_overwrite(trained_run, capsys):
    before = (trained_run / "model.safetensors").read_bytes()
    code, _, err = run(
        capsys, "train", "--model", "fvsbn", "--out", str(trained_run), "--epochs", "1"
    )
    assert code == 1 and "already holds a finished run" in err
    assert (trained_run / "model.safetensors").read_bytes() == before


def test_resume_from_cli(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--model",
                "fvsbn",
                "--epochs",
                "1",
                "--max-train",
                "200",
                "--out",
                str(run_dir),
                "--quiet",
                "--patience",
                "0",
            ]
        )
        == 0
    )
    code, out, err = run(capsys, "train", "--resume", str(run_dir), "--epochs", "2")
    assert code == 0 and "resuming" in err
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_console_script_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-m", "chainrule", "eval", "--checkpoint", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 1
    assert p.stderr.startswith("chainrule eval: error:") and "Traceback" not in p.stderr


def test_available_models_are_buildable_with_defaults():
    for name in chainrule.available_models():
        from chainrule.models import model_class

        cls = model_class(name)
        levels = None if cls.supports == ("real",) else 2
        m = chainrule.build(name, event_shape=(1, 4, 4), levels=levels)
        assert m.num_parameters() > 0


def test_flags_are_generated_from_the_config_dataclasses():
    """A flag per model-config field and per TrainConfig field (but the few the CLI hides),
    with the field's help where it has one."""
    import dataclasses

    from chainrule.cli import build_parser
    from chainrule.cli.options import TRAIN_FLAG_NAMES, TRAIN_HIDDEN
    from chainrule.models import model_class
    from chainrule.train import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {s: a for a in train._actions for s in a.option_strings}
    helps: dict[str, set] = {}
    for name in chainrule.available_models():
        for f in dataclasses.fields(model_class(name).Config):
            a = flags["--" + f.name.replace("_", "-")]
            assert a.dest == f.name and a.default is None
            if f.metadata.get("help"):
                helps.setdefault(f.name, set()).add(f.metadata["help"].replace("%", "%%"))
    for field, texts in helps.items():  # one of the models' wordings
        assert any(t in flags["--" + field.replace("_", "-")].help for t in texts), field
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_HIDDEN:
            continue
        a = flags["--" + TRAIN_FLAG_NAMES.get(f.name, f.name).replace("_", "-")]
        if f.metadata.get("help"):
            assert f.metadata["help"].replace("%", "%%") in a.help


def test_the_library_does_not_import_the_command_line():
    code = (
        "import sys, chainrule, chainrule.receptive_field, chainrule.recipes, chainrule.pretrained;"
        "assert not any(m.startswith('chainrule.cli') for m in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
