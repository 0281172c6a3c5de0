"""The worked example of docs/architecture.md ("Adding a model in one file") runs as written and
passes the contract: normalization over all states, the sampler against the naive oracle, causal
conditionals, and training through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import chainrule

from .conftest import randomize
from .conftest import run_cli as run
from .oracles import all_states

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def example():
    from chainrule.models import registry

    text = DOC.read_text()
    code = re.search(r"## Adding a model in one file.*?```python\n(.*?)```", text, re.S).group(1)
    before = dict(registry._REGISTRY)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    yield namespace["Neighbours"]
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


@pytest.mark.parametrize("levels", [2, 3])
def test_the_example_normalizes_and_samples_like_the_oracle(example, levels):
    from chainrule.sampling import naive_sample

    model = randomize(chainrule.build("neighbours", (1, 2, 3), levels).double())
    x = all_states((1, 2, 3), levels)
    total = model.log_prob(x).exp().sum().item()
    assert abs(total - 1) < 1e-10
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.sample(50, generator=g()), naive_sample(model, 50, generator=g()))


def test_the_example_is_causal(example):
    model = randomize(chainrule.build("neighbours", (1, 3, 3), 2).double())
    x = torch.randint(0, 2, (1, 1, 3, 3)).double()
    base = model.conditional_log_probs(x).flatten()
    for j in range(9):
        y = x.clone().flatten()
        y[j] = 1 - y[j]
        changed = model.conditional_log_probs(y.view(1, 1, 3, 3)).flatten() != base
        assert not changed[:j].any()  # no conditional before j depends on x_j
        assert changed[j]  # (and the check is not vacuous)


def test_the_example_trains_and_samples_from_the_command_line(example, capsys, tmp_path):
    run_dir = tmp_path / "r"
    code, out, err = run(capsys, "train", "--model", "neighbours", "--epochs", "2",
                         "--out", run_dir, "--quiet")  # fmt: skip
    assert code == 0, err
    assert json.loads((run_dir / "result.json").read_text())["model"] == "neighbours"
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--n", "4", "--quiet")
    assert code == 0 and "wrote" in out
