"""The run folder module: config.json read back (read_run_config) and its one-line refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest

import chainrule
from chainrule.data import load_dataset
from chainrule.training import RunConfig, TrainConfig, TrainingError, read_run_config, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rf") / "run"
    model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    cfg = TrainConfig(epochs=1, batch_size=64, max_train=64, progress=False, num_samples=1)
    train(model, load_dataset("digits"), cfg, out, run_info={"data": "digits", "data_dir": None})
    return out, model, cfg


def test_read_run_config_gives_back_what_the_trainer_wrote(run):
    out, model, cfg = run
    rc = read_run_config(out)
    assert isinstance(rc, RunConfig)
    assert (rc.model, rc.data, rc.data_dir, rc.levels) == ("fvsbn", "digits", None, 2)
    assert rc.options == dataclasses.asdict(model.config)
    assert rc.train == cfg
    assert rc.raw == json.loads((out / "config.json").read_text())


def _refused(path) -> str:
    with pytest.raises(TrainingError) as e:
        read_run_config(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot resume: "), msg
    return msg


def test_missing_folder_or_config_is_one_line(tmp_path):
    assert "is not a folder" in _refused(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("x")
    assert "is not a folder" in _refused(tmp_path / "a-file")
    assert "config.json not found" in _refused(tmp_path)


@pytest.mark.parametrize(
    "text,why",
    [
        ('{"model": "fvsbn", "opt', "not a chainrule run config"),  # truncated
        ("\x00\x01binary", "not a chainrule run config"),
        ("[1, 2, 3]", "a JSON list"),  # JSON, not an object
        ('{"name": "some-other-tool", "version": 3}', "lacks model, options, data, levels, train"),
        (
            '{"model": "fvsbn", "options": {}, "data": "digits", "levels": 2, "train": []}',
            "must be objects",
        ),
        (
            '{"model": "fvsbn", "options": {}, "data": "digits", "levels": 2, '
            '"train": {"no_such_field": 1}}',
            "no_such_field",
        ),
    ],
    ids=["truncated", "binary", "list", "foreign", "train-not-object", "unknown-train-field"],
)
def test_corrupt_or_foreign_config_is_one_line(tmp_path, text, why):
    (tmp_path / "config.json").write_text(text)
    msg = _refused(tmp_path)
    assert why in msg and str(tmp_path / "config.json") in msg, msg


def test_an_old_config_without_newer_fields_still_reads(run, tmp_path):
    out, _, cfg = run
    raw = json.loads((out / "config.json").read_text())
    for key in ("init_output_bias", "lr_schedule", "grad_clip"):  # fields added over time
        raw["train"].pop(key)
    raw.pop("data_dir", None)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    rc = read_run_config(tmp_path)
    assert rc.data_dir is None and rc.train.lr_schedule == "constant"
    assert rc.train.epochs == cfg.epochs
