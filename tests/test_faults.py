"""Training that survives faults: SIGKILL at any moment, non-finite losses, unusable run
folders, truncated and mismatched checkpoints and state files."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import chainrule
from chainrule.checkpoint import CheckpointError
from chainrule.cli import main
from chainrule.data import load_dataset
from chainrule.train import TrainConfig, TrainingError, train

# digits, fvsbn, 320 images in batches of 32: 10 steps per epoch
ARGS = [
    "--model",
    "fvsbn",
    "--data",
    "digits",
    "--epochs",
    "3",
    "--max-train",
    "320",
    "--batch-size",
    "32",
    "--lr",
    "0.02",
    "--patience",
    "0",
    "--dtype",
    "float64",
    "--quiet",
]

#: a child that trains through the CLI, each step slowed down so that a kill lands mid-epoch
SLOW_CHILD = textwrap.dedent("""
    import sys, time
    import chainrule.training.trainer as T
    _orig = T.to_model_input
    def slow(*a, **k):
        time.sleep(0.06)
        return _orig(*a, **k)
    T.to_model_input = slow
    from chainrule.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")

#: a child that SIGKILLs itself inside the atomic write of the N-th state file, after the
#: temporary file is written and before it is renamed over the old one
KILL_IN_WRITE_CHILD = textwrap.dedent("""
    import os, signal, sys
    import chainrule.checkpoint as C
    _orig, calls = C.os.replace, [0]
    def replace(src, dst):
        if str(dst).endswith("state.safetensors"):
            calls[0] += 1
            if calls[0] == int(os.environ["KILL_AT_WRITE"]):
                os.kill(os.getpid(), signal.SIGKILL)
        return _orig(src, dst)
    C.os.replace = replace
    from chainrule.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")


def _child(code: str, argv: list[str], **env) -> subprocess.Popen:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _state(run: Path) -> dict | None:
    try:
        return json.loads((run / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _reference(tmp_path: Path, capsys) -> Path:
    """The uninterrupted run, in this process (float32 default dtype like the child's)."""
    ref = tmp_path / "ref"
    old = torch.get_default_dtype()
    torch.set_default_dtype(
        torch.float32
    )  # chainrule.build in the CLI: the child's initial weights
    try:
        assert main(["train", *ARGS, "--out", str(ref)]) == 0
    finally:
        torch.set_default_dtype(old)
    capsys.readouterr()
    return ref


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = chainrule.load(a).state_dict(), chainrule.load(b).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-12)
    sa, sb = load_file(a / "state.safetensors"), load_file(b / "state.safetensors")
    for k in sa:
        if k.startswith(("model.", "optim.")):
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-12)
    ra = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb, strict=True):
        for key in ("train_nll", "valid_nll", "lr"):
            assert abs(x[key] - y[key]) < 1e-9, (key, x, y)
    res_a, res_b = (json.loads((p / "result.json").read_text()) for p in (a, b))
    assert abs(res_a["test_nll_nats"] - res_b["test_nll_nats"]) < 1e-9


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_run(tmp_path, capsys):
    run = tmp_path / "killed"
    child = _child(SLOW_CHILD, ["train", *ARGS, "--checkpoint-every", "2", "--out", str(run)])
    deadline = time.time() + 120
    try:
        while True:  # wait until the child is inside epoch 2 with a mid-epoch checkpoint
            s = _state(run)
            if s is not None and s["epoch"] == 1 and s["step"] >= 2:
                break
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.time() < deadline, "the child never reached epoch 2"
            time.sleep(0.005)
        time.sleep(random.Random().uniform(0.0, 0.1))  # any moment, not only right after a save
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    s = _state(run)
    assert s["epoch"] == 1 and 0 < s["step"] < 10, s  # killed mid-epoch, a step checkpoint exists
    assert not (run / "result.json").exists()

    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"resuming {run} at epoch 2, step {s['step']}" in err
    _assert_same_run(run, _reference(tmp_path, capsys))


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, capsys):
    run = tmp_path / "killed"
    # write 1: the start; 2..5: steps 2,4,6,8 of epoch 1; kill at write 5 (step 8), before the rename
    child = _child(
        KILL_IN_WRITE_CHILD,
        ["train", *ARGS, "--checkpoint-every", "2", "--out", str(run)],
        KILL_AT_WRITE="5",
    )
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert list(run.glob(".state.safetensors.*.tmp")), (
        "the kill should leave the half-done temp file"
    )
    s = _state(run)
    assert (s["epoch"], s["step"]) == (0, 6)  # the previous checkpoint, intact
    assert main(["train", "--resume", str(run)]) == 0
    capsys.readouterr()
    assert not list(run.glob(".*.tmp")), "stale temporary files are removed on resume"
    _assert_same_run(run, _reference(tmp_path, capsys))


def _epoch_one(tmp_path: Path, capsys) -> Path:
    run = tmp_path / "run"
    argv = [a if a != "3" else "1" for a in ARGS]  # --epochs 1
    assert main(["train", *argv, "--out", str(run)]) == 0
    capsys.readouterr()
    return run


def test_non_finite_loss_stops_via_cli_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = _epoch_one(tmp_path, capsys)
    good_state = (run / "state.safetensors").read_bytes()
    good_model = (run / "model.safetensors").read_bytes()
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["lr"] = 1e308  # the next steps overflow: the weights, then the loss
    cfg["train"]["checkpoint_minutes"] = 0.0
    (run / "config.json").write_text(json.dumps(cfg))
    code = main(["train", "--resume", str(run), "--epochs", "3"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert re.search(r"loss became (nan|inf) at epoch 2, batch \d+; training stopped", lines[0])
    assert "last good checkpoint is kept" in lines[0]
    assert (run / "state.safetensors").read_bytes() == good_state
    assert (run / "model.safetensors").read_bytes() == good_model
    assert torch.isfinite(chainrule.load(run).weight).all()
    # with a sane learning rate the run goes on from the good checkpoint
    cfg["train"]["lr"] = 0.02
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    capsys.readouterr()
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


def test_weights_that_overflow_are_never_checkpointed(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *ARGS, "--lr", "1e308", "--checkpoint-every", "1", "--out", str(run)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "weights became non-finite" in err and "last good checkpoint is kept" in err
    state = load_file(run / "state.safetensors")
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())


def test_unwritable_run_folder_is_reported_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["train", *ARGS, "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "is a file, not a folder" in err and "epoch" not in err
    assert err.count("\n") == 1 and not (blocker / "run").exists()
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert main(["train", *ARGS, "--out", str(ro / "run")]) == 1
        assert "denied" in capsys.readouterr().err


def test_full_disk_is_reported_before_training(tmp_path, capsys, monkeypatch):
    import shutil

    import chainrule.training.run_folder as T

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(T.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    code = main(["train", *ARGS, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "not enough free disk space" in err and "epoch" not in err
    assert not (tmp_path / "run" / "state.safetensors").exists()


# ---------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def _one_epoch_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "run"
    argv = [a if a != "3" else "1" for a in ARGS]  # --epochs 1
    assert main(["train", *argv, "--out", str(run)]) == 0
    return run


@pytest.fixture
def finished(_one_epoch_run, tmp_path) -> Path:
    """A fresh copy of a finished one-epoch run, to damage."""
    import shutil

    return Path(shutil.copytree(_one_epoch_run, tmp_path / "run"))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.0, 0.003, 0.5, 0.99])
def test_truncated_model_checkpoint_is_refused(finished, capsys, keep):
    _truncate(finished / "model.safetensors", keep)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        chainrule.load(finished)
    assert main(["eval", "--checkpoint", str(finished)]) == 1
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err


def test_mismatched_model_checkpoint_is_refused(finished, capsys):
    spec = json.loads((finished / "model.json").read_text())
    spec["event_shape"] = [1, 4, 4]  # the weights are for 8x8 images
    (finished / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="do not match the config"):
        chainrule.load(finished)
    assert main(["sample", "--checkpoint", str(finished), "--n", "2"]) == 1
    assert "do not match the config" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_state_is_refused_on_resume(finished, capsys, keep):
    _truncate(finished / "state.safetensors", keep)
    assert main(["train", "--resume", str(finished), "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "truncated or corrupt" in err and "Traceback" not in err


def test_missing_state_is_refused_on_resume(finished, capsys):
    (finished / "state.safetensors").unlink()
    assert main(["train", "--resume", str(finished), "--epochs", "2"]) == 1
    assert "state.safetensors is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.update({"model.weight": t["model.weight"][:-1]}), "does not match this model"),
        (lambda t: t.pop("model.bias"), "does not match this model"),
        (
            lambda t: t.update({"optim.0.exp_avg": t["optim.0.exp_avg"][:3]}),
            "does not match this model",
        ),
        (lambda t: t["model.bias"].fill_(float("nan")), "non-finite"),
    ],
    ids=["weight-shape", "missing-tensor", "adam-moment-shape", "nan"],
)
def test_mismatched_state_is_refused_on_resume(finished, capsys, edit, match):
    from safetensors import safe_open

    path = finished / "state.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=meta)
    assert main(["train", "--resume", str(finished), "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert match in err and "cannot resume" in err and "Traceback" not in err


def test_state_of_another_batch_size_is_refused(tmp_path):
    digits = load_dataset("digits")
    cfg = dict(epochs=1, max_train=64, progress=False, num_samples=4, batch_size=32)
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    train(model, digits, TrainConfig(**cfg), tmp_path / "run")
    with pytest.raises(TrainingError, match="batch_size=32, this run has batch_size=16"):
        train(
            model,
            digits,
            TrainConfig(**{**cfg, "epochs": 2, "batch_size": 16}),
            tmp_path / "run",
            resume=True,
        )


def test_run_folder_is_only_json_safetensors_and_png(finished):
    """Checkpoints are safetensors + JSON, never pickles: every file parses as what it claims."""
    kinds = set()
    for f in finished.iterdir():
        kinds.add(f.suffix)
        if f.suffix == ".safetensors":
            assert load_file(f)
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            [json.loads(line) for line in f.read_text().splitlines()]
        else:
            assert f.suffix == ".png" and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    assert kinds == {".safetensors", ".json", ".jsonl", ".png"}
    assert json.loads((finished / "state.json").read_text())["format"].startswith(
        "chainrule-train-state"
    )


def test_time_based_checkpoints_within_an_epoch(tmp_path, monkeypatch):
    """checkpoint_minutes: the state is saved mid-epoch once that much time has passed."""
    import chainrule.training.run_folder as T

    saved = []
    real = T.save_state
    monkeypatch.setattr(
        T,
        "save_state",
        lambda run, m, o, c, order=None: (saved.append(c["step"]), real(run, m, o, c, order)),
    )
    digits = load_dataset("digits")
    cfg = dict(epochs=1, batch_size=16, max_train=64, progress=False, num_samples=1, patience=0)
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    train(model, digits, TrainConfig(**cfg, checkpoint_minutes=0.0), tmp_path / "a")
    assert saved == [0, 0]  # the start and the epoch end
    saved.clear()
    train(model, digits, TrainConfig(**cfg, checkpoint_minutes=1e-9), tmp_path / "b")
    assert saved == [0, 1, 2, 3, 0]  # every step inside the epoch (4 steps), then the end


def test_state_of_another_format_is_refused(finished, capsys):
    from safetensors import safe_open

    path = finished / "state.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["chainrule_state"])
    meta["format"] = "chainrule-train-state/99"
    save_file(load_file(path), path, metadata={"chainrule_state": json.dumps(meta)})
    assert main(["train", "--resume", str(finished), "--epochs", "2"]) == 1
    assert "has format 'chainrule-train-state/99'" in capsys.readouterr().err
