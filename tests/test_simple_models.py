"""Oracles for the first rungs: closed-form fits, the full table, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

import chainrule

from .conftest import tiny
from .oracles import all_states


def test_independent_fit_equals_empirical_means():
    g = torch.Generator().manual_seed(0)
    x = (
        torch.rand(500, 1, 3, 4, generator=g) < torch.linspace(0.05, 0.95, 12).reshape(1, 1, 3, 4)
    ).double()
    model = chainrule.build("independent", event_shape=(1, 3, 4), levels=2, smoothing=0.0).double()
    model.fit(x)
    # p(x_i = 1) is the conditional at x_i = 1
    p1 = model.conditional_log_probs(torch.ones(1, 1, 3, 4)).exp()[0]
    torch.testing.assert_close(p1, x.mean(0), rtol=0, atol=1e-12)


def test_independent_fit_k_levels_equals_frequencies_and_maximizes_likelihood():
    x = torch.randint(0, 4, (300, 1, 2, 2), generator=torch.Generator().manual_seed(1)).double()
    model = (
        chainrule.build("independent", event_shape=(1, 2, 2), levels=4, smoothing=0.0)
        .double()
        .fit(x)
    )
    for k in range(4):
        pk = model.conditional_log_probs(torch.full((1, 1, 2, 2), float(k))).exp()[0]
        torch.testing.assert_close(pk, (x == k).double().mean(0), rtol=0, atol=1e-12)
    # gradient at the closed-form optimum is zero
    (-model.log_prob(x).mean()).backward()
    assert model.logits.grad.abs().max() < 1e-10


def test_markov_fit_equals_transition_frequencies():
    x = torch.randint(0, 2, (400, 1, 1, 5), generator=torch.Generator().manual_seed(2)).double()
    x[:, 0, 0, 1] = x[:, 0, 0, 0]  # make x1 depend on x0
    model = (
        chainrule.build("markov", event_shape=(1, 1, 5), levels=2, order=1, smoothing=0.0)
        .double()
        .fit(x)
    )
    for prev in (0, 1):
        sel = x[:, 0, 0, 2] == prev
        freq = x[sel, 0, 0, 3].mean()
        probe = torch.zeros(1, 1, 1, 5)
        probe[0, 0, 0, 2], probe[0, 0, 0, 3] = prev, 1
        p = model.conditional_log_probs(probe).exp()[0, 0, 0, 3]
        torch.testing.assert_close(p, freq, rtol=0, atol=1e-12)
    # x1 copies x0: the fitted chain knows it
    probe = torch.tensor([[[[1.0, 1.0, 0, 0, 0]]]])
    assert model.conditional_log_probs(probe)[0, 0, 0, 1].exp() > 0.999


def test_markov_gradient_training_reaches_the_closed_form_fit():
    x = torch.randint(0, 2, (200, 1, 2, 2), generator=torch.Generator().manual_seed(3)).double()
    fitted = (
        chainrule.build("markov", event_shape=(1, 2, 2), levels=2, smoothing=0.0).double().fit(x)
    )
    trained = chainrule.build("markov", event_shape=(1, 2, 2), levels=2).double()
    opt = torch.optim.Adam(trained.parameters(), lr=0.1)
    for _ in range(600):
        opt.zero_grad()
        (-trained.log_prob(x).mean()).backward()
        opt.step()
    assert abs(trained.log_prob(x).mean() - fitted.log_prob(x).mean()) < 1e-4


def test_table_recovers_a_known_distribution():
    event_shape, K = (1, 1, 3), 3
    states = all_states(event_shape, K)  # 27 states
    counts = torch.randint(1, 20, (len(states),), generator=torch.Generator().manual_seed(4))
    data = states.repeat_interleave(counts, 0)
    model = (
        chainrule.build("table", event_shape=event_shape, levels=K, smoothing=0.0)
        .double()
        .fit(data)
    )
    expected = torch.log(counts.double() / counts.sum())
    torch.testing.assert_close(model.log_prob(states), expected, rtol=0, atol=1e-10)


def test_table_with_random_ordering_is_still_exact():
    event_shape = (1, 2, 2)
    states = all_states(event_shape, 2)
    counts = torch.arange(1, 17)
    data = states.repeat_interleave(counts, 0)
    model = chainrule.build(
        "table", event_shape=event_shape, levels=2, smoothing=0.0, ordering="random:1"
    ).double()
    model.fit(data)
    torch.testing.assert_close(
        model.log_prob(states), torch.log(counts.double() / counts.sum()), rtol=0, atol=1e-10
    )


def test_parameter_counts_are_exact():
    assert chainrule.count_parameters("independent", (1, 28, 28), 2) == 784
    assert chainrule.count_parameters("markov", (1, 28, 28), 2, order=1) == 2 * 784 - 1
    assert chainrule.count_parameters("table", (1, 28, 28), 2) == 2**784 - 1
    assert chainrule.count_parameters("table", (3, 1, 1), 256) == 256**3 - 1 == 16777215
    assert chainrule.count_parameters("fvsbn", (1, 28, 28), 2) == 784 * 785 // 2
    assert chainrule.count_parameters("markov", (1, 2, 3), 3, order=2) == 2 * (1 + 3 + 9 * 4)
    # and they match the models actually built
    for name in ("independent", "markov", "table", "fvsbn"):
        m = chainrule.build(name, event_shape=(1, 2, 3), levels=3)
        assert m.num_parameters() == chainrule.count_parameters(name, (1, 2, 3), 3)


def test_huge_tables_are_refused_with_their_size():
    with pytest.raises(ValueError, match=r"2\^784|cannot be allocated"):
        chainrule.build("table", event_shape=(1, 28, 28), levels=2)
    with pytest.raises(ValueError, match="16,777,215|parameters"):
        chainrule.build("table", event_shape=(3, 1, 2), levels=256)
    with pytest.raises(ValueError, match="Markov chain of order 3"):
        chainrule.build("markov", event_shape=(1, 28, 28), levels=256, order=3)


@pytest.mark.parametrize("name", ["independent", "markov", "table", "fvsbn"])
def test_orderings_change_the_model_but_not_normalization(name):
    states = all_states((1, 2, 2), 2)
    joints = {}
    for spec in ("raster", "random:0", [3, 1, 0, 2]):
        m = tiny(name, (1, 2, 2), 2, ordering=spec)  # the same weights for every ordering
        if spec == "raster" or isinstance(spec, list):
            assert m.order.tolist() == ([0, 1, 2, 3] if spec == "raster" else spec)
        lp = m.log_prob(states)
        assert abs(torch.logsumexp(lp, 0)) < 1e-10
        joints[str(spec)] = lp
    # the same weights read in another ordering define another joint, except for independent
    # pixels, where the ordering is irrelevant
    differ = not torch.allclose(joints["raster"], joints["[3, 1, 0, 2]"], atol=1e-6)
    assert differ == (name != "independent")


def test_bad_orderings_are_refused():
    with pytest.raises(ValueError, match="permutation"):
        chainrule.build("fvsbn", event_shape=(1, 2, 2), ordering=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown ordering"):
        chainrule.build("fvsbn", event_shape=(1, 2, 2), ordering="zigzag")


def test_rgb_raster_order_puts_channels_innermost():
    from chainrule.orderings import raster_order

    order = raster_order((3, 1, 2)).tolist()
    # pixel (0,0): R, G, B = flat 0, 2, 4; then pixel (0,1): 1, 3, 5
    assert order == [0, 2, 4, 1, 3, 5]
    assert math.prod((3, 1, 2)) == len(order)
