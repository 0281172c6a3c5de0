"""The trainer: learning happens, runs are deterministic, resume continues exactly, files."""

from __future__ import annotations

import json
import math

import pytest
import torch

import chainrule
from chainrule.data import load_dataset
from chainrule.train import TrainConfig, TrainingError, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cfg(**kw):
    base = dict(
        epochs=3, batch_size=128, lr=1e-2, seed=0, max_train=400, progress=False, num_samples=4
    )
    return TrainConfig(**{**base, **kw})


def test_training_lowers_the_nll_and_writes_the_run_folder(digits, tmp_path):
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    before = -model.log_prob(digits.test.float()).mean().item()
    result = train(model, digits, _cfg(), tmp_path / "run")
    assert result["test_nll_nats"] < before - 5
    assert math.isclose(result["test_bits_per_dim"], result["test_nll_nats"] / (64 * math.log(2)))
    run = tmp_path / "run"
    for f in (
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "model.json",
        "samples.png",
        "curve.png",
        "result.json",
    ):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # the checkpoint is the best epoch's model and gives the reported test NLL
    loaded = chainrule.load(run)
    nll = -loaded.log_prob(digits.test.float()).mean().item()
    assert abs(nll - result["test_nll_nats"]) < 1e-4


def test_training_is_deterministic_under_a_seed(digits):
    a = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
    b = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
    b.load_state_dict(a.state_dict())
    ra, rb = train(a, digits, _cfg()), train(b, digits, _cfg())
    assert ra["test_nll_nats"] == rb["test_nll_nats"]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_resume_continues_exactly(digits, tmp_path):
    torch.manual_seed(0)
    init = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float().state_dict()
    full = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
    full.load_state_dict(init)
    r_full = train(full, digits, _cfg(epochs=4, patience=0), tmp_path / "full")
    part = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
    part.load_state_dict(init)
    train(part, digits, _cfg(epochs=2, patience=0), tmp_path / "part")
    resumed = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
    r_res = train(resumed, digits, _cfg(epochs=4, patience=0), tmp_path / "part", resume=True)
    assert r_res["test_nll_nats"] == r_full["test_nll_nats"]
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    res_rows = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["valid_nll"] for r in full_rows] == [
        json.loads(r)["valid_nll"] for r in res_rows
    ]


def test_closed_form_fit_through_the_trainer(digits):
    model = chainrule.build("independent", event_shape=(1, 8, 8), levels=2, smoothing=0.0)
    result = train(model, digits, _cfg(closed_form=True, max_train=0))
    p1 = model.conditional_log_probs(torch.ones(1, 1, 8, 8)).exp()[0].double()
    torch.testing.assert_close(p1, digits.train.double().mean(0), rtol=0, atol=1e-6)
    assert result["epochs"] == 1


def test_existing_run_is_not_overwritten(digits, tmp_path):
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    train(model, digits, _cfg(epochs=1), tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="already holds a finished run"):
        train(model, digits, _cfg(epochs=1), tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_non_finite_loss_stops_with_a_clear_message(digits, tmp_path):
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan"):
        train(model, digits, _cfg(epochs=1), tmp_path / "run")


def test_data_of_another_shape_or_levels_is_refused(digits):
    model = chainrule.build("fvsbn", event_shape=(1, 28, 28), levels=2)
    with pytest.raises(ValueError, match="shape 1x8x8 but the model expects 1x28x28"):
        train(model, digits, _cfg())
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    with pytest.raises(ValueError, match="17 levels"):
        train(model, load_dataset("digits:levels"), _cfg())


def test_k_level_training(digits):
    s = load_dataset("digits:levels")
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=17)
    result = train(model, s, _cfg(epochs=2))
    assert result["test_nll_nats"] < 64 * math.log(17)  # better than uniform
