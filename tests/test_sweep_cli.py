"""The command line as a user meets it: nothing lost, no tracebacks, honest output.

One test per item of the robustness issue that lives in ``chainrule train`` and the commands
around a checkpoint (the data loader, the closed-form fits and the tools have their own
tests_sweep_* files). Every test drives ``chainrule`` the way a person does: the arguments, the
exit code, the lines printed, and the files before and after. Signals are sent to a real child
process."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import chainrule
from chainrule.cli import main

from .conftest import run_cli as run

CHILD = [sys.executable, "-c", "from chainrule.cli import main; raise SystemExit(main())"]
TINY = ["--model", "fvsbn", "--data", "digits", "--max-train", "200"]


def one_line(code: int, err: str, expect_code: int = 1) -> str:
    assert code == expect_code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def usage_error(capsys, *argv) -> str:
    """An argument argparse refuses: exit 2 and one line (no usage block)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    return one_line(e.value.code, err, expect_code=2)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden temporaries included) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sweep-cli") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run_dir), "--quiet"]) == 0
    return run_dir


def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        CHILD + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _interrupt_after_first_epoch(argv: list[str], cwd: Path, sig: int) -> tuple[int, str]:
    """Start ``chainrule ARGV``, send ``sig`` as soon as epoch 1 is reported, return
    (exit code, stderr)."""
    child = _start(argv, cwd)
    lines = []
    try:
        for line in child.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("epoch   1"):
                child.send_signal(sig)
                break
        out, rest = child.communicate(timeout=300)
    finally:
        child.kill()
    return child.returncode, "".join(lines) + rest


# slow enough to be interrupted within epoch 2 (about 1-3 s an epoch on one thread)
SLOW = ["--model", "pixelcnn", "--data", "digits", "--batch-size", "4", "--max-train", "600"]
SLOW += ["--lr-schedule", "constant", "--hidden", "8", "--layers", "4", "--checkpoint-minutes", "0"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, int, str]:
    """A run stopped by Ctrl-C in its second epoch: (run folder, exit code, stderr)."""
    cwd = tmp_path_factory.mktemp("sigint")
    code, err = _interrupt_after_first_epoch(
        ["train", *SLOW, "--epochs", "3", "--out", "run"], cwd, signal.SIGINT
    )
    return cwd / "run", code, err


# ---------------------------------------------------------------------- 1. unfinished runs
def test_1_an_unfinished_run_is_not_overwritten(interrupted, capsys, tmp_path):
    run_dir, _, _ = interrupted
    assert (run_dir / "state.safetensors").exists() and not (run_dir / "result.json").exists()
    before = snapshot(run_dir)
    code, out, err = run(capsys, "train", *SLOW, "--epochs", "1", "--out", run_dir)
    line = one_line(code, err)
    assert "an unfinished run" in line and "--resume" in line and "--overwrite" in line
    assert snapshot(run_dir) == before
    # --overwrite replaces it, explicitly
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).write_bytes(data)
    code, out, err = run(capsys, "train", *TINY, "--epochs", "1", "--out", copy, "--overwrite")
    assert code == 0 and json.loads((copy / "config.json").read_text())["model"] == "fvsbn"
    assert json.loads((copy / "result.json").read_text())["epochs"] == 1


# ---------------------------------------------------------------------- 2. resume flags
@pytest.mark.parametrize(
    "flags,named",
    [
        (["--model", "nade"], "--model"),
        (["--data", "binarized-mnist"], "--data"),
        (["--max-train", "100"], "--max-train"),
        (["--lr", "0.5"], "--lr"),
        (["--batch-size", "7"], "--batch-size"),
        (["--hidden", "3"], "--hidden"),
        (["--option", "smoothing=0.5"], "--option smoothing"),
        (["--seed", "3"], "--seed"),
        (["--lr-schedule", "cosine"], "--lr-schedule"),
        (["--dtype", "float64"], "--dtype"),
    ],
)
def test_2_resume_refuses_flags_that_would_change_the_run(finished, capsys, flags, named):
    before = snapshot(finished)
    code, out, err = run(capsys, "train", "--resume", finished, "--epochs", "3", *flags)
    line = one_line(code, err)
    assert line.startswith(f"chainrule train: error: {named} cannot change on --resume"), line
    assert snapshot(finished) == before


def test_2_resume_may_change_epochs_patience_and_cadence(finished, capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, data in snapshot(finished).items():
        (run_dir / name).write_bytes(data)
    code, out, err = run(
        capsys,
        *["train", "--resume", run_dir, "--epochs", "3", "--patience", "9"],
        *["--checkpoint-minutes", "1", "--lr", "0.01"],  # the lr it had: allowed
    )
    assert code == 0, err
    assert "changed on resume: epochs 2 -> 3" in err and "changed on resume: patience" in err
    assert "checkpoint_minutes 5.0 -> 1.0" in err
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 3


# ---------------------------------------------------------------------- 3. stopped runs go on
def test_3_a_run_stopped_early_or_by_its_budget_can_be_continued(capsys, tmp_path, monkeypatch):
    import chainrule.training.trainer as T

    run_dir = tmp_path / "early"
    real = T._summarize
    calls = {"n": 0}

    def worse_after_the_first(model, x, *a, **k):  # valid NLL rises after epoch 1
        s = real(model, x, *a, **k)
        if len(x) == 270:  # the valid split of digits
            calls["n"] += 1
            s = {**s, "nll_nats": s["nll_nats"] + (0 if calls["n"] == 1 else 100 + calls["n"])}
        return s

    monkeypatch.setattr(T, "_summarize", worse_after_the_first)
    code, out, err = run(
        capsys, "train", *TINY, "--epochs", "10", "--patience", "2", "--out", run_dir
    )
    assert code == 0 and "early stopping: no better valid NLL in 2 epochs" in err
    assert "keeping the weights of epoch 1" in err
    assert "weights of epoch 1" in out and "stopped early" in out
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 3
    # resuming with nothing that lets it go on: refused, one line that says what would
    code, out, err = run(capsys, "train", "--resume", run_dir)
    assert "give --epochs N (more than 3)" in one_line(code, err)
    # more epochs: patience starts again, and it trains
    monkeypatch.setattr(T, "_summarize", real)
    code, out, err = run(capsys, "train", "--resume", run_dir, "--epochs", "5")
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs"] == 5 and result["stop_reason"] == "epochs"

    budget = tmp_path / "budget"
    code, out, err = run(capsys, "train", *SLOW, "--epochs", "50", "--time-budget", "0.005",
                         "--out", budget)  # fmt: skip
    assert code == 0 and "time budget of 0.005 min reached" in err
    first = json.loads((budget / "result.json").read_text())
    assert first["stop_reason"] == "time budget" and first["epochs"] < 50
    code, out, err = run(capsys, "train", "--resume", budget, "--time-budget", "0.005")
    assert code == 0, err
    second = json.loads((budget / "result.json").read_text())
    assert first["epochs"] < second["epochs"] < 50


# ---------------------------------------------------------------------- 4. SIGINT / SIGTERM
def test_4_ctrl_c_saves_the_state_and_the_resumed_run_equals_an_uninterrupted_one(
    interrupted, capsys, tmp_path
):
    run_dir, code, err = interrupted
    assert code == 130, err
    assert "Traceback" not in err
    assert f"resume with: chainrule train --resume {Path('run')}" in err
    m = re.search(r"training state saved at (epoch 2, step (\d+) of \d+|the end of epoch 1)", err)
    assert m, err
    state = json.loads((run_dir / "state.json").read_text())
    if m.group(2):  # saved mid-epoch, exactly where it stopped (no timed checkpoints: 0 min)
        assert state["epoch"] == 1 and state["step"] == int(m.group(2)) > 0
    # resume (in a copy, the fixture's run stays unfinished) == a run never interrupted
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name, data in snapshot(run_dir).items():
        (resumed / name).write_bytes(data)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)  # the child ran on one thread,
    torch.set_default_dtype(torch.float32)  # with float32 weights
    try:
        code, out, err = run(capsys, "train", "--resume", resumed, "--quiet")
        assert code == 0, err
        code, out, err = run(capsys, "train", *SLOW, "--epochs", "3", "--out", tmp_path / "ref",
                             "--quiet")  # fmt: skip
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    a = json.loads((resumed / "result.json").read_text())
    b = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert a["test_nll_nats"] == b["test_nll_nats"] and a["epochs"] == b["epochs"] == 3


def test_4_sigterm_saves_the_state_too(tmp_path):
    code, err = _interrupt_after_first_epoch(
        ["train", *SLOW, "--epochs", "3", "--out", "run"], tmp_path, signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM and "Traceback" not in err
    assert "resume with: chainrule train --resume run" in err
    assert (tmp_path / "run" / "state.safetensors").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))


# ---------------------------------------------------------------------- 6. --epochs 0
def test_6_epochs_zero_is_refused_before_anything_is_written(capsys, tmp_path):
    line = usage_error(capsys, "train", *TINY, "--epochs", "0", "--out", tmp_path / "r")
    assert "--epochs" in line and "positive" in line
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- 7. sample's default
def test_7_sample_without_out_keeps_the_runs_own_samples_png(finished, capsys):
    before = (finished / "samples.png").read_bytes()
    code, out, err = run(capsys, "sample", "--checkpoint", finished, "--n", "9", "--quiet")
    assert code == 0, err
    assert (finished / "samples.png").read_bytes() == before
    assert (finished / "samples-n9-seed0.png").is_file() and "samples-n9-seed0.png" in out


# ---------------------------------------------------------------------- 8. the output sweep
def _commands(run_dir: Path, out: str) -> dict[str, list[str]]:
    """Every subcommand, its output pointed at ``out``."""
    ck = ["--checkpoint", str(run_dir)]
    return {
        "train": ["train", *TINY, "--epochs", "1", "--out", out, "--quiet"],
        "eval": ["eval", *ck, "--json", out],
        "sample --out": ["sample", *ck, "--n", "4", "--out", out],
        "sample --npz": ["sample", *ck, "--n", "4", "--out", out + ".png", "--npz", out],
        "complete": ["complete", *ck, "--n", "2", "--samples", "1", "--out", out],
        "score": ["score", *ck, "--max-images", "20", "--maps", "2", "--out", out],
        "detect --out-dir": [
            "detect",
            *ck,
            "--ood",
            "noise",
            "--max-images",
            "20",
            "--out-dir",
            out,
        ],
        "detect --json": ["detect", *ck, "--ood", "noise", "--max-images", "20", "--json", out],
        "features": ["features", *ck, "--out", out],
        "probe --out": ["probe", *ck, "--max-iter", "5", "--out", out],
        "probe --json": ["probe", *ck, "--max-iter", "5", "--json", out],
        "receptive-field": [
            "receptive-field",
            "--model",
            "pixelcnn",
            "--shape",
            "1x4x4",
            "--out",
            out,
        ],
    }


COMMANDS = list(_commands(Path("x"), "y"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["below a file", "name too long"])
def test_8_every_command_refuses_an_output_it_cannot_write(
    finished, capsys, tmp_path, command, where
):
    (tmp_path / "a-file").write_text("a file")
    out = tmp_path / "a-file" / "x.out" if where == "below a file" else tmp_path / ("n" * 300)
    before = snapshot(tmp_path)
    run_before = snapshot(finished)
    argv = _commands(finished, str(out))[command]
    code, stdout, err = run(capsys, *argv)
    assert code == 1, (stdout, err)
    assert "Traceback" not in err and len((stdout + err).strip().splitlines()) <= 2, stdout + err
    assert "cannot" in err and ("not a folder" in err or "too long" in err), err
    assert snapshot(tmp_path) == before and snapshot(finished) == run_before


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """``os.write`` into a file below ``tmp_path / "out"`` writes part of its bytes, then the
    disk is full (ENOSPC). Other writes (pytest's capture, the checkpoint read) go through."""
    real = os.write
    target = str(tmp_path / "out")

    def write(fd, data):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if path.startswith(target):
            real(fd, bytes(data[: max(1, len(data) // 2)]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell files apart")
@pytest.mark.parametrize("command", COMMANDS)
def test_8_a_full_disk_part_way_is_one_line_and_leaves_the_old_file(
    finished, capsys, full_disk, command
):
    out = full_disk / ("run" if command == "train" else "result.out")
    if command not in ("train", "detect --out-dir"):
        out.write_bytes(b"the user's previous result")
    before = snapshot(full_disk)
    run_before = snapshot(finished)
    code, stdout, err = run(capsys, *_commands(finished, str(out))[command])
    assert code == 1, (stdout, err)
    assert "Traceback" not in err and "the disk is full" in err, err
    # the work was done before the disk filled: its progress lines may precede; one error line
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert [ln for ln in lines if "error:" in ln] == lines[-1:], err
    after = snapshot(full_disk)
    # no temporary left, the old file untouched; new files only where the command had
    # finished writing them before the disk filled (none here: the first write fails)
    assert not [p for p in after if Path(p).name.startswith(".")], after
    assert {k: v for k, v in after.items() if k in before} == before
    assert snapshot(finished) == run_before


# ---------------------------------------------------------------------- 9. huge --n
def test_9_sample_refuses_what_cannot_fit_and_draws_in_batches(finished, capsys, tmp_path):
    code, out, err = run(capsys, "sample", "--checkpoint", finished, "--n", "100000000",
                         "--out", tmp_path / "s.png")  # fmt: skip
    assert "--npz" in one_line(code, err) and not (tmp_path / "s.png").exists()
    code, out, err = run(capsys, "sample", "--checkpoint", finished, "--n", "100000000000",
                         "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")  # fmt: skip
    assert "GiB" in one_line(code, err) and not list(tmp_path.iterdir())
    # more than one batch: the first batch is what one call of model.sample gives
    from chainrule.cli import SAMPLE_BATCH

    n = SAMPLE_BATCH + 3
    code, out, err = run(capsys, "sample", "--checkpoint", finished, "--n", n,
                         "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")  # fmt: skip
    assert code == 0, err
    x = np.load(tmp_path / "s.npz")["x"]
    model = chainrule.load(finished)
    first = model.sample(SAMPLE_BATCH, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 1, 8, 8) and np.array_equal(x[:SAMPLE_BATCH], first.numpy())


# ---------------------------------------------------------------------- 11. params
def test_11_params_prints_any_count_in_full_and_refuses_bad_options(capsys):
    code, out, err = run(capsys, "params", "--shape", "3x32x32", "--levels", "256")
    assert code == 0 and str(256**3072 - 1) in out and "256^3072 - 1" in out
    for argv, words in [
        (["--levels", "1"], "--levels"),
        (["--model", "pixelcnn", "--preset", "nope"], "unknown preset 'nope'"),
        (["--model", "fvsbn", "--option", "nope=1"], "nope"),
        (["--hidden", "3"], "add --model"),
        (["--model", "nope"], "unknown model"),
    ]:
        code, out, err = run(capsys, "params", *argv)
        assert words in one_line(code, err) and out == ""


# ---------------------------------------------------------------------- 12. counts and indices
@pytest.mark.parametrize("command", ["eval", "score", "features", "probe"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_12_batch_size_must_be_positive(finished, capsys, command, value):
    line = usage_error(capsys, command, "--checkpoint", finished, "--batch-size", value)
    assert "--batch-size" in line and "positive" in line


def test_12_score_checks_image_indices_before_scoring(finished, capsys, tmp_path):
    csv = tmp_path / "s.csv"
    code, out, err = run(capsys, "score", "--checkpoint", finished, "--images", "1,99999",
                         "--out", csv)  # fmt: skip
    assert "0..269" in one_line(code, err) and not csv.exists() and out == ""


# ---------------------------------------------------------------------- 13. progress
def test_13_no_bar_characters_off_a_terminal_and_nothing_under_quiet(finished, capsys, tmp_path):
    code, out, err = run(capsys, "train", *TINY, "--epochs", "2", "--out", tmp_path / "r")
    assert code == 0
    assert not any(mark in out + err for mark in ("\r", "it/s", "█"))
    epochs = [ln for ln in err.splitlines() if ln.startswith("epoch")]
    assert len(epochs) == 2 and all(ln.rstrip(" *").endswith(" s") for ln in epochs)
    code, out, err = run(capsys, "eval", "--checkpoint", finished, "--quiet")
    assert code == 0 and err == "" and "NLL" in out


def test_13_a_terminal_gets_bars(finished, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, "eval", "--checkpoint", finished, "--batch-size", "16")
    assert code == 0 and "NLL" in err  # the bar's label
    assert "\r" in err and "\r" not in out  # the result is on stdout, not glued to the bar
    code, out, err = run(capsys, "eval", "--checkpoint", finished, "--quiet")
    assert err == ""


# ---------------------------------------------------------------------- 14. budget per step
def test_14_the_time_budget_is_checked_after_every_step(capsys, tmp_path, monkeypatch):
    import itertools
    import time

    # a wall clock that gains a second at every reading, so that the 0.5-minute budget ends
    # within the first epoch (1257 steps of batch 1) whatever the load of the machine
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 1.0 * next(ticks))
    run_dir = tmp_path / "r"
    code, out, err = run(capsys, "train", *SLOW, "--batch-size", "1", "--max-train", "1257",
                         "--epochs", "5", "--time-budget", "0.5", "--out", run_dir)  # fmt: skip
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["stop_reason"] == "time budget" and 0 < result["epochs"] < 1
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["partial"] is True and rows[-1]["epoch"] == result["epochs"]
    assert "within epoch 1" in err


def test_14_the_time_budget_can_count_cpu_time(capsys, tmp_path, monkeypatch):
    """--budget-clock cpu: the budget, the schedule and the reported seconds follow the
    process's CPU time (a fake CPU clock that races ahead stops the run at once; the wall
    clock would have let the 0.5-minute budget run the whole epoch)."""
    import itertools
    import time

    ticks = itertools.count()
    monkeypatch.setattr(time, "process_time", lambda: 20.0 * next(ticks))
    run_dir = tmp_path / "r"
    code, out, err = run(capsys, "train", *SLOW, "--batch-size", "1", "--max-train", "1257",
                         "--epochs", "1", "--time-budget", "0.5", "--budget-clock", "cpu",
                         "--out", run_dir)  # fmt: skip
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["stop_reason"] == "time budget" and result["clock"] == "cpu"
    assert 0 < result["epochs"] < 0.05 and result["seconds"] >= 30
    assert re.search(r"epochs? in [\d.]+ CPU s on", out)
    assert "time budget of 0.5 CPU min reached" in err


def test_14_progress_lines_count_the_budget_clock(capsys, tmp_path, monkeypatch):
    """Under --budget-clock cpu the plain progress lines within an epoch give the run's CPU
    minutes. A wall clock a minute per reading (far from the CPU clock's origin) prints a line
    after every step; the slow CPU clock lets the run take many steps before its budget."""
    import itertools
    import types

    from chainrule.training import trainer

    cpu, wall = itertools.count(), itertools.count()
    clocks = types.SimpleNamespace(  # the trainer's clocks only (plots time themselves too)
        process_time=lambda: 0.5 * next(cpu), perf_counter=lambda: 1e6 + 61.0 * next(wall)
    )
    monkeypatch.setattr(trainer, "time", clocks)
    run_dir = tmp_path / "r"
    code, out, err = run(capsys, "train", *SLOW, "--batch-size", "1", "--max-train", "1257",
                         "--epochs", "1", "--time-budget", "0.2", "--budget-clock", "cpu",
                         "--out", run_dir)  # fmt: skip
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["stop_reason"] == "time budget"
    progress = re.findall(r"step \d+/\d+, train NLL [\d.]+ \(([\d.]+) CPU min\)", err)
    assert len(progress) >= 2, err
    minutes = [float(m) for m in progress]
    assert minutes == sorted(minutes) and 0 < minutes[-1] <= result["seconds"] / 60, err


# ---------------------------------------------------------------------- 15. the summary
def test_15_summary_names_the_epoch_of_the_weights_and_covers_the_whole_run(
    interrupted, capsys, tmp_path
):
    run_dir, _, _ = interrupted
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in snapshot(run_dir).items():
        (copy / name).write_bytes(data)
    before = json.loads((copy / "state.json").read_text())["seconds"]
    code, out, err = run(capsys, "train", "--resume", copy)
    assert code == 0, err
    result = json.loads((copy / "result.json").read_text())
    assert result["epochs"] == 3 and result["seconds"] > before
    best = result["best_epoch"]
    assert f"weights of epoch {best:g} (best valid NLL" in out
    assert re.search(r"3 epochs in [\d.]+ s", out)
    rows = [json.loads(ln) for ln in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


# ---------------------------------------------------------------------- 16. data caveats
def test_16_data_caveats_and_max_train_reach_the_user(finished, capsys, tmp_path):
    splits = chainrule.data.load_dataset("digits")
    caveat = getattr(splits, "caveat", "")
    code, out, err = run(capsys, "train", *TINY, "--epochs", "1", "--out", tmp_path / "r")
    data_line = next(ln for ln in err.splitlines() if ln.startswith("data:"))
    assert "200" in data_line  # --max-train
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["n_train"] == 200 and result["data_caveat"] == caveat
    if caveat:
        assert f"note: {caveat}" in out and caveat in err
        code, out, err = run(capsys, "eval", "--checkpoint", finished)
        assert f"note: {caveat}" in out


# ---------------------------------------------------------------------- 17. random subsets
def test_17_subsets_are_random_draws_with_a_seed(finished, capsys, tmp_path):
    code, out, err = run(capsys, "complete", "--checkpoint", finished, "--n", "8",
                         "--samples", "1", "--out", tmp_path / "c.png")  # fmt: skip
    shown = [int(i) for i in re.search(r"#([\d,]+)", out).group(1).split(",")]
    assert code == 0 and len(shown) == 8 and shown != list(range(8))
    assert shown == sorted(shown) and max(shown) < 270
    code, out2, err = run(capsys, "complete", "--checkpoint", finished, "--n", "8",
                          "--samples", "1", "--out", tmp_path / "c.png")  # fmt: skip
    assert re.search(r"#([\d,]+)", out2).group(1) == re.search(r"#([\d,]+)", out).group(1)
    csv = tmp_path / "s.csv"
    code, out, err = run(capsys, "score", "--checkpoint", finished, "--max-images", "50",
                         "--maps", "0", "--out", csv)  # fmt: skip
    index = [int(r.split(",")[0]) for r in csv.read_text().splitlines()[1:]]
    assert len(index) == 50 and index != list(range(50)) and len(set(index)) == 50
    assert "50 of 270 images, drawn at random with seed 0" in out
    # the score of an image does not depend on which others were drawn
    full = tmp_path / "all.csv"
    run(capsys, "score", "--checkpoint", finished, "--maps", "0", "--out", full)
    rows = {int(r.split(",")[0]): r for r in full.read_text().splitlines()[1:]}
    assert all(rows[int(r.split(",")[0])] == r for r in csv.read_text().splitlines()[1:])


# ---------------------------------------------------------------------- 18. --help
def test_18_help_describes_every_command_option_and_default(capsys):
    from chainrule.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._actions[-1])))
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            assert action.help, (name, action.option_strings)
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0 and "--quiet" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("nade: --lr 0.02", "fvsbn: --lr 0.01", "paper-mnist", "cpu-small",
                  "every model: --epochs 20, --batch-size 64"):  # fmt: skip
        assert words in text, words
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "(default: 256)" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------- 19. whole messages
def test_19_a_resume_mismatch_says_what_does_not_match(finished, capsys, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    for name, data in snapshot(finished).items():
        (run_dir / name).write_bytes(data)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["event_shape"] = [1, 8, 8]
    cfg["model"] = "nade"
    cfg["options"] = {**chainrule.build("nade", (1, 8, 8), 2).config.__dict__}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    code, out, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--quiet")
    line = one_line(code, err)
    assert "does not match this model" in line
    assert not line.rstrip().endswith(":") and ("Missing key" in line or "size mismatch" in line)


# ---------------------------------------------------------------------- 20. determinism
def test_20_same_seed_threads_and_machine_give_the_same_run_and_it_is_recorded(capsys, tmp_path):
    results = []
    for k in range(2):
        code, out, err = run(capsys, "train", *TINY, "--epochs", "2", "--out", tmp_path / f"r{k}",
                             "--quiet")  # fmt: skip
        assert code == 0
        results.append(json.loads((tmp_path / f"r{k}" / "result.json").read_text()))
    assert results[0]["test_nll_nats"] == results[1]["test_nll_nats"]
    assert results[0]["threads"] == torch.get_num_threads()
    assert (tmp_path / "r0" / "model.safetensors").read_bytes() == (
        tmp_path / "r1" / "model.safetensors"
    ).read_bytes()


# ---------------------------------------------------------------------- the same defects elsewhere
#: a child whose first output write stops half way with Ctrl-C (SIGINT to itself)
CTRL_C_IN_WRITE = """
import os, signal, sys
# Python leaves SIGINT ignored when it starts ignored (a test run from a background job): as on
# a terminal, Ctrl-C must raise KeyboardInterrupt here
signal.signal(signal.SIGINT, signal.default_int_handler)
import chainrule.outputs as O
real = O._write_all
def write_all(fd, data):
    real(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGINT)
    real(fd, data[len(data) // 2 :])
O._write_all = write_all
from chainrule.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["sample --out", "score", "eval", "features"])
def test_ctrl_c_in_the_middle_of_writing_leaves_the_old_file(finished, tmp_path, command):
    out = tmp_path / "result.out"
    out.write_bytes(b"the user's previous result")
    argv = _commands(finished, str(out))[command]
    p = subprocess.run(
        [sys.executable, "-c", CTRL_C_IN_WRITE, *argv], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"chainrule {argv[0]}: interrupted; nothing was left half-written"
    ]
    assert out.read_bytes() == b"the user's previous result"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["result.out"]


def test_too_little_memory_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--model", "nade", "--hidden", "1000000000",
                         "--out", tmp_path / "r", "--quiet")  # fmt: skip
    line = one_line(code, err)
    assert "out of memory (it asked for" in line and "--hidden" in line
    assert not (tmp_path / "r").exists()
