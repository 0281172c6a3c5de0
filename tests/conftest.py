"""Shared fixtures: float64 everywhere, seeded, tiny shapes; where the shared data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import chainrule

#: tiny options per model for the contract tests (models not listed use their defaults)
TINY_OPTIONS: dict[str, dict] = {
    "markov": {"order": 2},
    "pixelcnn": {"hidden": 3, "layers": 2},
    "row-lstm": {"hidden": 3, "layers": 2},
    "diagonal-bilstm": {"hidden": 3, "layers": 2},
    "nade": {"hidden": 5, "block": 2},
    "rnade": {"hidden": 5, "components": 2, "block": 2},
    "made": {"hidden": 6, "layers": 2, "direct": True},
    "deep-nade": {"hidden": 5, "layers": 2},
}

# The tests' tensors are tiny: a second intra-op thread only adds synchronisation, which on a
# shared machine makes them many times slower (a causality check: 0.2 s on one thread, 2.2 s on
# two under load). Subprocesses the tests start set OMP_NUM_THREADS=1 likewise.
torch.set_num_threads(1)

DATA_DIR = Path(
    os.environ.get("CHAINRULE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(autouse=True)
def _float64_and_seed():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """Give every parameter random non-zero values (weights start at zero in some models)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    return model


def tiny(name: str, event_shape=(1, 2, 2), levels=2, **options) -> chainrule.AutoregressiveModel:
    opts = {**TINY_OPTIONS.get(name, {}), **options}
    model = chainrule.build(name, event_shape=event_shape, levels=levels, **opts).double()
    return randomize(model)


def supports_levels(name: str, levels) -> bool:
    from chainrule.models import model_class

    s = model_class(name).supports
    if levels is None:
        return "real" in s
    return "discrete" in s or (levels == 2 and "binary" in s)


def data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} not found (set CHAINRULE_TEST_DATA to its folder)")
    return path


def run_cli(capsys, *argv):
    """Run ``chainrule ARGV`` in-process: (exit code, stdout, stderr)."""
    from chainrule.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
