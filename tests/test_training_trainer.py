"""The Trainer used from Python, its start-of-run hooks, its schedules, its one host sync."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

import chainrule
import chainrule.training.hooks as H
from chainrule.data import load_dataset
from chainrule.training import TrainConfig, Trainer, read_counters, schedules


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cfg(**kw):
    base = dict(epochs=2, batch_size=64, lr=1e-2, max_train=128, progress=False, num_samples=2)
    return TrainConfig(**{**base, **kw})


def _model():
    torch.manual_seed(0)
    return chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)


def test_trainer_from_python_fits_and_resumes(digits, tmp_path):
    trainer = Trainer(_model(), digits, _cfg(patience=0), tmp_path / "run")
    result = trainer.fit()
    assert result["epochs"] == 2 and result["stop_reason"] == "epochs"
    assert result["n_train"] == 128 and trainer.counters["epoch"] == 2
    assert [r["epoch"] for r in trainer.metrics] == [1, 2]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["epochs"] == 2
    assert read_counters(tmp_path / "run")["stop_reason"] == "epochs"
    # more epochs, in a new Trainer: it continues from the saved state
    more = Trainer(_model(), digits, _cfg(epochs=3, patience=0), tmp_path / "run", resume=True)
    assert more.fit()["epochs"] == 3
    assert [r["epoch"] for r in more.metrics] == [1, 2, 3]


def test_trainer_without_a_folder_writes_nothing(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = Trainer(_model(), digits, _cfg(epochs=1)).fit()
    assert "files" not in result and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="resume needs a run folder"):
        Trainer(_model(), digits, _cfg(), resume=True)


def test_start_hooks_run_on_fresh_runs_only(digits, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(H.START_HOOKS, "init_output_bias", lambda m, x: calls.append(len(x)))
    cfg = _cfg(epochs=1, init_output_bias=True)
    assert cfg.hooks() == ["init_output_bias"] and _cfg().hooks() == []
    Trainer(_model(), digits, cfg, tmp_path / "run").fit()
    assert calls == [128]  # the run's training images
    Trainer(
        _model(), digits, _cfg(epochs=2, init_output_bias=True), tmp_path / "run", resume=True
    ).fit()
    assert calls == [128]  # not again on a resume


def test_init_output_bias_of_a_model_without_it_is_refused(digits):
    with pytest.raises(ValueError, match="has no output-bias initialisation"):
        Trainer(_model(), digits, _cfg(epochs=1, init_output_bias=True)).fit()
    with pytest.raises(ValueError, match="init_output_bias must be true or false"):
        _cfg(init_output_bias="yes").validate()


def test_schedules():
    assert schedules.epoch_lr("constant", 0.1, 3, 10) == 0.1
    assert schedules.epoch_lr("cosine", 0.1, 0, 10) == pytest.approx(0.1)
    assert schedules.epoch_lr("cosine", 0.1, 5, 10) == pytest.approx(0.05)
    assert schedules.epoch_lr("cosine-time", 0.1, 5, 10) == 0.1  # set step by step instead
    assert schedules.step_lr("cosine", 0.1, 30.0, 60.0) is None
    assert schedules.step_lr("cosine-time", 0.1, 30.0, 60.0) == pytest.approx(0.05)
    assert schedules.step_lr("cosine-time", 0.1, 90.0, 60.0) == pytest.approx(0.0)


def test_the_step_reads_one_number_from_the_device(digits, monkeypatch):
    """One host synchronisation per step: the loss (for the non-finite check and the log)."""
    trainer = Trainer(_model(), digits, _cfg(epochs=1))
    reads = {"n": 0, "steps": 0}
    real_step = Trainer.step
    inside = [False]

    def counting(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            # Adam's step counters are CPU tensors on every device: reading them is no sync
            caller = sys._getframe(1).f_code.co_filename
            if inside[0] and f"torch{os.sep}optim" not in caller:
                reads["n"] += 1
            return real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        counting(name)

    def step(self, *a, **k):
        inside[0] = True
        try:
            reads["steps"] += 1
            return real_step(self, *a, **k)
        finally:
            inside[0] = False

    monkeypatch.setattr(Trainer, "step", step)
    result = trainer.fit()
    assert math.isfinite(result["test_nll_nats"])
    assert reads["steps"] == 2 and reads["n"] == reads["steps"]
