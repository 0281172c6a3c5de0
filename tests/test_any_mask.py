"""Order-agnostic models (MADE, DeepNADE): exact densities under any ordering, exact marginals
of any set of observed dimensions, exact completion of any mask, and MADE's masks.

Every identity is checked against enumeration of all states (tiny shapes, float64), never
against the code it checks.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from chainrule import sampling
from chainrule.models.made import hidden_degrees

from .conftest import randomize, tiny
from .oracles import all_states, empirical, state_index, tv_threshold

#: models of the family, with what makes each one different (ensembles of connectivities with
#: shared or own orderings, several layers, an ensemble of orderings)
CASES = [
    ("made", {"hidden": 7, "layers": 2}),
    ("made", {"hidden": 6, "ensemble": 3, "masks": 3, "member_orderings": "own"}),
    ("made", {"hidden": 6, "ensemble": 2, "ordering": "random:3"}),
    ("made", {"hidden": 5, "direct": True, "ensemble": 2, "masks": 2}),
    ("deep-nade", {"hidden": 6, "layers": 2}),
    ("deep-nade", {"hidden": 5, "ensemble": 3, "layers": 3, "activation": "sigmoid"}),
]
IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in opts.items())}" for name, opts in CASES]
SHAPES = [((1, 2, 3), 2), ((1, 1, 3), 3)]


def build(name, opts, event_shape=(1, 2, 3), levels=2):
    return tiny(name, event_shape, levels, **opts)


def masks_of(event_shape):
    """Masks that are not prefixes of raster order (and an empty and a full one)."""
    d = math.prod(event_shape)
    out = []
    for given in ([d - 1], [0, d - 1], list(range(1, d, 2)), [], list(range(d))):
        m = torch.zeros(d, dtype=torch.bool)
        m[given] = True
        out.append(m.reshape(event_shape))
    return out


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
@pytest.mark.parametrize("event_shape,levels", SHAPES)
def test_normalization_under_several_orderings(name, opts, event_shape, levels):
    model = build(name, opts, event_shape, levels)
    states = all_states(event_shape, levels)
    d = model.dim
    orderings = [None, "raster", list(range(d))[::-1], torch.randperm(d)]
    orderings += [model.ordering_for(m) for m in masks_of(event_shape)]
    for o in orderings:
        lp = model.log_prob(states) if o is None else model.log_prob(states, ordering=o)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-9, o
        assert lp.std() > 1e-3  # not trivially uniform
    # different orderings give different models (the weights are random)
    a, b = model.log_prob(states, ordering="raster"), model.log_prob(states, ordering=orderings[2])
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
@pytest.mark.parametrize("event_shape,levels", SHAPES)
def test_marginal_is_the_sum_over_the_missing_values(name, opts, event_shape, levels):
    model = build(name, opts, event_shape, levels)
    states = all_states(event_shape, levels)
    for mask in masks_of(event_shape):
        joint = model.log_prob(states, ordering=model.ordering_for(mask))
        observed = model.log_prob_observed(states, mask)
        if not mask.any():  # nothing observed: the empty marginal, log 1
            assert (observed == 0).all()
            continue
        seen = states.flatten(1)[:, mask.flatten()]
        for values in torch.unique(seen, dim=0):
            same = (seen == values).all(1)
            total = torch.logsumexp(joint[same], 0)
            torch.testing.assert_close(
                observed[same], total.expand(int(same.sum())), rtol=0, atol=1e-10
            )


@pytest.mark.parametrize("name,opts", CASES[:2] + CASES[3:5], ids=IDS[:2] + IDS[3:5])
def test_marginals_of_per_image_masks(name, opts):
    """Each image's own mask: equal to the same images scored mask by mask."""
    model = build(name, opts)
    masks = masks_of((1, 2, 3))[:3]
    x = all_states((1, 2, 3), 2)[::5]
    per_image = torch.stack([masks[i % 3] for i in range(len(x))])
    got = model.log_prob_observed(x, per_image)
    for i, m in enumerate(masks):
        rows = torch.arange(len(x)) % 3 == i
        torch.testing.assert_close(
            got[rows], model.log_prob_observed(x[rows], m), rtol=0, atol=1e-12
        )


def conditional(model, given, mask):
    """p(state | given) over all states under the given-first ordering, by enumeration."""
    states = all_states(model.event_shape, model.levels)
    joint = model.log_prob(states, ordering=model.ordering_for(mask))
    agree = (states.flatten(1)[:, mask.flatten()] == given.flatten()[mask.flatten()]).all(1)
    return torch.where(agree, joint, torch.full_like(joint, -torch.inf)).softmax(0), int(
        agree.sum()
    )


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_completion_of_any_mask_is_the_exact_conditional(name, opts):
    """Samples completed under masks that are not prefixes follow p(missing | given), for the
    ensembles too (each image's member drawn from p(e | given)); no warning."""
    model = build(name, opts)
    given = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]])
    n = 20000
    for k, mask in enumerate(masks_of((1, 2, 3))[:3]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = model.sample(n, given=given, mask=mask, generator=torch.Generator().manual_seed(k))
        assert (s.flatten(1)[:, mask.flatten()] == given.flatten()[mask.flatten()]).all()
        p, states = conditional(model, given, mask)
        tv = 0.5 * (empirical(s, 2) - p).abs().sum().item()
        assert tv < tv_threshold(n, states), (mask, tv)


def test_completion_with_a_mask_per_image():
    """Two masks in one batch: each half follows its own conditional."""
    model = build(*CASES[1])
    masks = masks_of((1, 2, 3))[1:3]
    given = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])
    n = 20000
    mask = torch.stack([masks[i % 2] for i in range(n)])
    s = model.sample(
        n, given=given.expand(n, -1, -1, -1), mask=mask, generator=torch.Generator().manual_seed(3)
    )
    for i, m in enumerate(masks):
        half = s[torch.arange(n) % 2 == i]
        p, states = conditional(model, given, m)
        tv = 0.5 * (empirical(half, 2) - p).abs().sum().item()
        assert tv < tv_threshold(len(half), states)


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_incremental_decoder_equals_the_naive_sampler(name, opts):
    """The decoder (one column per told value) and the oracle (a full pass per step) turn the
    same uniforms into the same images, for completions of any mask and for free draws."""
    model = build(name, opts, (1, 2, 3), 3)
    given = torch.randint(0, 3, (9, 1, 2, 3)).double()
    for mask in [None, *masks_of((1, 2, 3))[:3]]:
        kw = {} if mask is None else {"given": given, "mask": mask}
        a = sampling.sample(
            model,
            9,
            kw.get("given"),
            None if mask is None else mask.expand(9, -1, -1, -1),
            torch.Generator().manual_seed(5),
        )
        b = sampling.naive_sample(
            model,
            9,
            kw.get("given"),
            None if mask is None else mask.expand(9, -1, -1, -1),
            torch.Generator().manual_seed(5),
        )
        assert torch.equal(a, b)


def test_ordering_for_puts_the_given_dimensions_first():
    model = build("made", {"hidden": 4, "ordering": "random:2"}, (1, 2, 3))
    mask = torch.tensor([[[True, False, False], [False, True, True]]])
    o = model.ordering_for(mask)
    flat = mask.flatten()
    assert flat[o[:3]].all() and not flat[o[3:]].any()
    rank = {int(v): i for i, v in enumerate(model.order)}  # the model's own ordering
    assert [rank[int(v)] for v in o[:3]] == sorted(rank[int(v)] for v in o[:3])
    assert [rank[int(v)] for v in o[3:]] == sorted(rank[int(v)] for v in o[3:])
    assert torch.equal(o, model.ordering_for(mask.flatten()))  # deterministic, any layout
    with pytest.raises(ValueError, match="boolean"):
        model.ordering_for(torch.ones(6))
    with pytest.raises(ValueError, match="6 values"):
        model.ordering_for(torch.ones(5, dtype=torch.bool))


@pytest.mark.parametrize("layers,direct", [(1, False), (3, False), (2, True)])
def test_made_masks_forbid_every_connection_to_a_later_input(layers, direct):
    """The Jacobian of each output with respect to the inputs is exactly zero outside the
    inputs that come earlier in the ordering, for every mask drawn (the members', and fresh
    training draws under random orderings); and not zero everywhere inside it. With direct
    connections, every allowed entry is used."""
    opts = {"hidden": 9, "layers": layers, "masks": 4, "direct": direct}
    model = build("made", opts, (1, 2, 3), 3)  # tiny(): every weight random, the direct too
    d = model.dim
    x = torch.randint(0, 3, (1, d)).double()
    draws = [(model.member_order(e), model.degrees(e)) for e in range(4)]
    g = torch.Generator().manual_seed(1)
    draws += [(torch.randperm(d, generator=g), hidden_degrees(d, 9, layers, g)) for _ in range(6)]
    used = torch.zeros(d, d, dtype=torch.bool)
    for order, degrees in draws:
        masks = model.masks_for(order, degrees)
        jac = torch.autograd.functional.jacobian(
            lambda v, masks=masks: model.forward_masks(v, masks).sum(-1), x
        ).reshape(d, d)  # (output dimension, input dimension)
        pos = torch.empty_like(order)
        pos[order] = torch.arange(d)
        allowed = pos[None, :] < pos[:, None]
        assert jac[~allowed].abs().max().item() == 0.0
        used |= (jac != 0) & allowed
        if direct:
            assert (jac[allowed] != 0).all()
    assert used.any()


def test_made_training_mask_gives_a_normalized_model():
    """One training step's draw (fresh masks, a random ordering) is itself a model: with the
    random state reset before each call, the batch of all states sums to one."""
    model = build("made", {"hidden": 6, "layers": 2})
    states = all_states((1, 2, 3), 2)
    torch.manual_seed(7)
    lp = model.training_log_prob(states)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9


def test_deepnade_training_objective_is_unbiased():
    """The rescaled loss averages to the mean over orderings of log p_o(x) (checked by
    enumerating the 3! orderings, against 40,000 draws of the ordering and split)."""
    model = build("deep-nade", {"hidden": 5, "layers": 2}, (1, 1, 3), 3)
    x = torch.tensor([[[[2.0, 0.0, 1.0]]]])
    exact = torch.stack(
        [model.log_prob(x, ordering=list(o)) for o in itertools.permutations(range(3))]
    ).mean()
    draws = model.training_log_prob(x.expand(40000, -1, -1, -1))
    err = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * err
    assert draws.std() > 0  # the estimate does vary with the draw


def test_ensemble_log_prob_is_the_mixture_of_members():
    """MADE's ensemble: log of the mean of the members' joint probabilities (each member alone
    is a normalized model)."""
    model = build(*CASES[1])
    states = all_states((1, 2, 3), 2)
    xf = states.flatten(1)
    members = []
    for e in range(3):
        o = model.member_order(e)
        members.append(model.head.log_prob(model.step_params(xf, o, e), xf[:, o]).sum(1))
        assert abs(torch.logsumexp(members[-1], 0).item()) < 1e-9
    want = torch.logsumexp(torch.stack(members), 0) - math.log(3)
    torch.testing.assert_close(model.log_prob(states), want, rtol=0, atol=1e-12)
    assert state_index(states, 2).tolist() == list(range(64))


def test_ensemble_completion_draws_each_member_from_its_posterior():
    """MADE's members disagree about the given values; the completion follows the mixture's
    conditional, which weighs member e by p_e(given) -- far from the uniform choice of member
    (the test checks that it could tell the two apart)."""
    model = randomize(build(*CASES[1]), seed=0, scale=3.0)
    given = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]])
    mask = masks_of((1, 2, 3))[2]  # three given dimensions
    states = all_states((1, 2, 3), 2)
    xf, o = states.flatten(1), model.ordering_for(mask)
    members = torch.stack(
        [model.head.log_prob(model.step_params(xf, o, e), xf[:, o]).sum(1) for e in range(3)]
    )
    agree = (xf[:, mask.flatten()] == given.flatten()[mask.flatten()]).all(1)
    cond = torch.where(agree, members, torch.full_like(members, -torch.inf)).softmax(1)
    p, n_states = conditional(model, given, mask)
    n = 20000
    threshold = tv_threshold(n, n_states)
    assert 0.5 * (cond.mean(0) - p).abs().sum().item() > 3 * threshold  # the test has power
    s = model.sample(n, given=given, mask=mask, generator=torch.Generator().manual_seed(0))
    assert 0.5 * (empirical(s, 2) - p).abs().sum().item() < threshold


@pytest.mark.parametrize("name", ["nade", "pixelcnn", "made"])
def test_visible_log_prob_is_the_marginal(name):
    """``evaluate.visible_log_prob``: the exact marginal of the visible pixels, by enumeration;
    for a fixed-ordering model only where they come first (else a clear refusal)."""
    from chainrule.completion import occlusion_mask
    from chainrule.evaluate import check_visible_mask, visible_log_prob

    model = tiny(name, (1, 2, 3), 2)
    states = all_states((1, 2, 3), 2)
    mask = occlusion_mask("bottom-half", (1, 2, 3))  # the top row visible: a raster prefix
    check_visible_mask(model, mask)
    got = visible_log_prob(model, states, mask)
    joint = model.log_prob(states)
    seen = states.flatten(1)[:, mask.flatten()]
    for values in torch.unique(seen, dim=0):
        same = (seen == values).all(1)
        torch.testing.assert_close(
            got[same], torch.logsumexp(joint[same], 0).expand(int(same.sum())), rtol=0, atol=1e-10
        )
    right = occlusion_mask("right-half", (1, 2, 3))
    if name == "made":
        check_visible_mask(model, right)  # any mask
    else:
        with pytest.raises(ValueError, match="order-agnostic"):
            check_visible_mask(model, right)


def test_made_refuses_member_orderings_it_would_not_train():
    with pytest.raises(ValueError, match="order-agnostic training"):
        build("made", {"member_orderings": "own", "order_agnostic": False})
