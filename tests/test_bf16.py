"""--bf16: what the run says about the device (CPU bf16 units detected from /proc/cpuinfo), and
that a bf16 run on the CPU trains and reports float32 NLLs."""

from __future__ import annotations

import json

import pytest
import torch

from chainrule.training import bf16

from .conftest import run_cli


@pytest.mark.parametrize(
    "flags,units",
    [
        ({"avx2", "fma"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
    ],
)
def test_cpu_bf16_units_are_read_from_the_flags(monkeypatch, flags, units):
    monkeypatch.setattr(bf16, "cpu_flags", lambda: ("Some CPU", set(flags)))
    info = bf16.cpu_bf16()
    assert info["has_bf16_units"] is units
    note = bf16.bf16_note(torch.device("cpu"))
    assert note.startswith("warning:") is (not units)
    assert ("slower than float32" in note) is (not units) and "Some CPU" in note


def test_cpu_flags_of_this_machine_parse():
    name, flags = bf16.cpu_flags()
    assert isinstance(name, str) and name
    assert isinstance(flags, set)


def test_a_bf16_run_on_the_cpu_says_what_the_cpu_does_and_reports_float32(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(bf16, "cpu_flags", lambda: ("Plain CPU", {"avx2"}))
    run = tmp_path / "r"
    code, out, err = run_cli(
        capsys, "train", "--model", "fvsbn", "--data", "digits", "--epochs", "1", "--max-train",
        "200", "--bf16", "--device", "cpu", "--quiet", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    assert "warning: --bf16 on a CPU without bf16 units (Plain CPU" in err
    result = json.loads((run / "result.json").read_text())
    assert isinstance(result["test_nll_nats"], float) and result["test_nll_nats"] > 0
