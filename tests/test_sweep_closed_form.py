"""Closed-form fits count in chunks: memory of the count table plus one chunk, the same
parameters whatever the chunk size, equal to a direct count; the log-likelihood and sampler of
the tabular models never build a ``(batch, D, K)`` tensor and give the same numbers as before.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import chainrule
from chainrule.data import load_dataset
from chainrule.models import independent as independent_module
from chainrule.models.independent import add_counts
from chainrule.models.ordered import OrderedModel

#: runs a command and prints the peak RSS (KiB) of its children: a fresh process, so that no
#: earlier child of the test process counts
PEAK_WRAPPER = textwrap.dedent(
    """
    import resource, subprocess, sys
    r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stderr.write(r.stdout + r.stderr)
    print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """
)


def direct_logits(x: np.ndarray, levels: int, smoothing: float) -> np.ndarray:
    """``(N, D)`` values -> ``(D, K-1)`` free logits from a numpy bincount per pixel."""
    n, d = x.shape
    counts = np.stack([np.bincount(x[:, i], minlength=levels) for i in range(d)])
    c = counts.astype(np.float64) + smoothing
    logp = np.log(c / c.sum(-1, keepdims=True))
    return logp[:, 1:] - logp[:, :1]


def test_cli_closed_form_fit_of_a_big_8bit_set_stays_small(tmp_path):
    """3000 colour 32x32 images at 256 levels: the one-hot count of the old fit needed
    2400 x 3072 x 256 x 8 bytes = 15 GB; counting in chunks keeps the whole run small."""
    rng = np.random.default_rng(0)
    # per-pixel level distributions that differ from pixel to pixel
    centre = rng.integers(0, 256, (1, 3, 32, 32))
    x = (centre + rng.integers(-40, 41, (3000, 3, 32, 32))) % 256
    npz = tmp_path / "big.npz"
    np.savez(npz, x=x.astype(np.uint8))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "chainrule.cli",
        "train",
        "--model",
        "independent",
        "--closed-form",
        "--data",
        f"npz:{npz}",
        "--out",
        str(run),
        "--quiet",
        "--epochs",
        "1",
    ]
    r = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *cmd], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    code, peak_kib = (int(v) for v in r.stdout.split())
    assert code == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert peak_kib < 1.5 * 2**20, f"peak RSS {peak_kib / 2**20:.2f} GiB"

    model = chainrule.load(run)
    train = load_dataset(f"npz:{npz}").train.flatten(1).numpy()
    assert len(train) == 2400
    expected = direct_logits(train, 256, model.config.smoothing)
    got = model.logits.detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


CASES = [
    ("independent", (3, 4, 5), 7, {}),
    ("independent", (1, 3, 4), 2, {}),
    ("markov", (1, 4, 5), 3, {"order": 1}),
    ("markov", (2, 3, 3), 3, {"order": 2, "ordering": "random:1"}),
    ("markov", (1, 3, 4), 2, {"order": 3}),
    ("table", (1, 2, 3), 2, {}),
    ("table", (1, 1, 3), 4, {"ordering": "random:2"}),
]


@pytest.mark.parametrize("name,shape,levels,opts", CASES)
def test_fit_does_not_depend_on_the_chunk_size(name, shape, levels, opts, monkeypatch):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, levels, (203, *shape), generator=g, dtype=torch.uint8)
    fits = []
    for chunk in (1, 7, 64, 203, 10_000, None):
        m = chainrule.build(name, event_shape=shape, levels=levels, **opts).double()
        fits.append(m.fit(x, chunk_size=chunk).state_dict())
    monkeypatch.setattr(independent_module, "FIT_CHUNK_VALUES", 50)  # default chunk: 1+ image
    m = chainrule.build(name, event_shape=shape, levels=levels, **opts).double()
    fits.append(m.fit(x.double()).state_dict())
    for f in fits[1:]:
        assert f.keys() == fits[0].keys()
        for k in f:
            assert torch.equal(f[k], fits[0][k]), k


def test_independent_fit_equals_a_direct_count():
    x = torch.randint(0, 5, (311, 2, 3, 3), generator=torch.Generator().manual_seed(6))
    model = chainrule.build("independent", event_shape=(2, 3, 3), levels=5).double()
    model.fit(x, chunk_size=13)
    expected = direct_logits(x.flatten(1).numpy(), 5, 0.5)
    np.testing.assert_allclose(model.logits.detach().numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ordering", ["raster", "random:4"])
def test_markov_order_1_fit_equals_a_direct_transition_count(ordering):
    K, shape, s = 3, (1, 3, 4), 0.5
    x = torch.randint(0, K, (257, *shape), generator=torch.Generator().manual_seed(7))
    model = chainrule.build(
        "markov", event_shape=shape, levels=K, order=1, ordering=ordering, smoothing=s
    ).double()
    model.fit(x, chunk_size=10)
    xo = x.flatten(1)[:, model.order].numpy()  # visiting order
    d = xo.shape[1]
    # step 0: plain frequencies; step i: transitions from x_{i-1} to x_i
    first = direct_logits(xo[:, :1], K, s)
    np.testing.assert_allclose(model.first_logits[0].detach().numpy(), first, atol=1e-12)
    for i in range(1, d):
        counts = np.zeros((K, K))
        np.add.at(counts, (xo[:, i - 1], xo[:, i]), 1)
        c = counts + s
        logp = np.log(c / c.sum(-1, keepdims=True))
        np.testing.assert_allclose(
            model.logits[i - 1].detach().numpy(), logp[:, 1:] - logp[:, :1], rtol=0, atol=1e-12
        )


def test_add_counts_both_ways_are_exact():
    idx = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(8))
    expected = torch.bincount(idx, minlength=50)
    small = torch.zeros(50, dtype=torch.int64)
    add_counts(small, idx)  # index bigger than the table: bincount
    big = torch.zeros(100_000, dtype=torch.int64)
    add_counts(big, idx)  # index much smaller than the table: index_add_
    assert torch.equal(small, expected) and torch.equal(big[:50], expected)
    assert big[50:].sum() == 0


@pytest.mark.parametrize(
    "name,shape,levels,opts",
    [
        ("independent", (3, 4, 5), 7, {"ordering": "random:3"}),
        ("markov", (2, 3, 3), 3, {"order": 2, "ordering": "random:1"}),
        ("markov", (1, 4, 5), 5, {"order": 1}),
    ],
)
def test_table_lookup_log_probs_equal_the_materialized_ones(name, shape, levels, opts):
    """The lookup path (no (B, D, K) tensor) gives the numbers of the generic path."""
    g = torch.Generator().manual_seed(9)
    model = chainrule.build(name, event_shape=shape, levels=levels, **opts).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 3)
    x = torch.randint(0, levels, (40, *shape), generator=g).double()  # 40 >= K^k: lookup
    generic = OrderedModel._conditional_log_probs(model, x)
    torch.testing.assert_close(model.conditional_log_probs(x), generic, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.log_prob(x), generic.flatten(1).sum(1), rtol=0, atol=1e-12)
    # gradients flow through the lookup as through the generic path
    (-model.log_prob(x).mean()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (-OrderedModel._conditional_log_probs(model, x).flatten(1).sum(1).mean()).backward()
    for a, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=1e-12)


def test_independent_sampler_draws_what_the_categorical_head_draws(monkeypatch):
    monkeypatch.setattr(independent_module, "FIT_CHUNK_VALUES", 100)  # several sample chunks
    model = chainrule.build("independent", event_shape=(3, 2, 3), levels=6).double()
    g = torch.Generator().manual_seed(10)
    with torch.no_grad():
        model.logits.copy_(torch.randn(model.logits.shape, generator=g, dtype=torch.float64))
    got = model.sample(11, generator=torch.Generator().manual_seed(11))
    u = torch.rand(
        (11, model.dim), generator=torch.Generator().manual_seed(11), dtype=torch.float64
    )
    full = independent_module.free_logits_to_full(model.logits, 6)
    expected = model.head.sample(full.unsqueeze(0).expand(11, -1, -1), u).reshape(got.shape)
    assert torch.equal(got, expected)
