"""The test contract (docs/contract.md), run for every registered discrete model.

Normalization over all states, causality by perturbation and by Jacobian (and not vacuous),
sampler against density, completion against the exact conditional, batch independence,
checkpoint round trip, gradients reaching every parameter, input validation.
"""

from __future__ import annotations

import math

import pytest
import torch

import chainrule
from chainrule.models import model_class

from .conftest import supports_levels, tiny
from .oracles import all_states, empirical, model_total_variation, state_index, tv_threshold

DISCRETE = [
    m for m in chainrule.available_models() if supports_levels(m, 2) or supports_levels(m, 3)
]

# (event_shape, levels): small enough to enumerate every state
ENUM_CASES = [((1, 2, 3), 2), ((1, 3, 3), 2), ((1, 2, 2), 3), ((3, 1, 2), 2), ((3, 1, 1), 3)]
ORDERINGS = ["raster", "random:3"]


def cases(shapes, orderings=("raster",), *, only=lambda cls: True):
    """``(name, event_shape, levels, ordering)`` for every discrete model, from the capabilities
    each model class declares (levels it supports, whether it has orderings): no skips."""
    out = []
    for name in DISCRETE:
        cls = model_class(name)
        if not only(cls):
            continue
        for event_shape, levels in shapes:
            if not supports_levels(name, levels):
                continue
            for ordering in orderings if cls.supports_orderings else ("raster",):
                out.append(
                    pytest.param(
                        name,
                        event_shape,
                        levels,
                        ordering,
                        id=f"{name}-{ordering}-{event_shape}-K{levels}",
                    )
                )
    return out


def model_order(model) -> torch.Tensor:
    """The flat index visited at each step of the model's (first) ordering."""
    return model.decoder_order(0)


def build_case(name, event_shape, levels, ordering=None):
    opts = {}
    if ordering is not None and ordering != "raster":
        opts["ordering"] = ordering
    return tiny(name, event_shape, levels, **opts)


@pytest.mark.parametrize("name,event_shape,levels,ordering", cases(ENUM_CASES, ORDERINGS))
def test_normalization_over_all_states(name, event_shape, levels, ordering):
    model = build_case(name, event_shape, levels, ordering)
    lp = model.log_prob(all_states(event_shape, levels))
    assert lp.shape == (levels ** math.prod(event_shape),)
    assert torch.isfinite(lp).all()
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-6
    # and the model is not trivially uniform (weights are random)
    assert lp.std() > 1e-3


def conditional_table(model, x, pos):
    """log p(x_pos = k | rest of x) for every level k: ``(B, K)``."""
    cols = []
    for k in range(model.levels):
        xk = x.clone()
        xk.view(x.shape[0], -1)[:, pos] = k
        cols.append(model.conditional_log_probs(xk).flatten(1)[:, pos])
    return torch.stack(cols, 1)


@pytest.mark.parametrize(
    "name,event_shape,levels,ordering",
    cases([((1, 3, 3), 2), ((3, 2, 2), 3), ((1, 2, 3), 4)], ORDERINGS),
)
def test_causality_by_perturbation(name, event_shape, levels, ordering):
    model = build_case(name, event_shape, levels, ordering)
    order = model_order(model)
    d, b = model.dim, 4
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, levels, (b, *event_shape), generator=g).double()
    # the images the check reads, in one batch: x, then x with the value of step j moved
    # (j = 0..D-1); conditional_table sets the value at each position to every level
    variants = [x]
    for j in range(d):
        xp = x.clone()
        other = order[j].item()
        xp.view(b, -1)[:, other] = (xp.view(b, -1)[:, other] + 1) % levels
        variants.append(xp)
    batch = torch.cat(variants)
    depends_on_earlier = 0
    for i in range(d):
        pos = order[i].item()
        tables = conditional_table(model, batch, pos).view(d + 1, b, levels)
        for j in range(d):
            if j == i:
                continue
            changed = (tables[1 + j] - tables[0]).abs().max().item() > 1e-9
            if j > i:
                assert not changed, (
                    f"step {i} (flat {pos}) depends on later step {j} (flat {order[j].item()})"
                )
            elif changed:
                depends_on_earlier += 1
    if model.name != "independent":  # the one model whose dimensions do not depend on each other
        assert depends_on_earlier > 0, "no conditional depends on any earlier dimension"


@pytest.mark.parametrize(
    "name,event_shape,levels,ordering",
    cases([((1, 3, 3), 2), ((3, 2, 2), 3)], ORDERINGS, only=lambda cls: cls.input_differentiable),
)
def test_causality_by_jacobian(name, event_shape, levels, ordering):
    model = build_case(name, event_shape, levels, ordering)
    order = model_order(model)
    pos_of = torch.empty_like(order)
    pos_of[order] = torch.arange(order.numel())
    x = torch.randint(
        0, levels, (1, *event_shape), generator=torch.Generator().manual_seed(2)
    ).double()

    def f(v):
        return model._conditional_log_probs(v).flatten()

    jac = torch.autograd.functional.jacobian(f, x).reshape(model.dim, model.dim)  # (out, in)
    step_out = pos_of.unsqueeze(1).expand(-1, model.dim)
    step_in = pos_of.unsqueeze(0).expand(model.dim, -1)
    later = step_in > step_out
    assert jac[later].abs().max().item() == 0.0
    earlier = step_in < step_out
    if model.name != "independent":
        assert jac[earlier].abs().max().item() > 0.0


@pytest.mark.parametrize(
    "name,event_shape,levels,ordering",
    cases([((1, 2, 2), 2), ((1, 1, 2), 3), ((3, 1, 1), 2)], ["random:5"]),
)
def test_sampler_agrees_with_density(name, event_shape, levels, ordering):
    model = build_case(name, event_shape, levels, ordering)
    n = 20000
    s = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert s.shape == (n, *event_shape)
    assert s.dtype.is_floating_point
    assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= levels - 1
    states = levels ** math.prod(event_shape)
    assert model_total_variation(s, model) < tv_threshold(n, states)


@pytest.mark.parametrize("name", DISCRETE)
def test_completion_of_a_prefix_is_the_exact_conditional(name):
    event_shape, levels = (1, 2, 2), 2
    model = build_case(name, event_shape, levels)
    order = model_order(model)
    given = torch.zeros(1, *event_shape)
    given.view(-1)[order[0]] = 1.0
    mask = torch.zeros(event_shape, dtype=torch.bool)
    mask.view(-1)[order[0]] = True
    n = 20000
    s = model.sample(n, given=given, mask=mask, generator=torch.Generator().manual_seed(1))
    assert (s.flatten(1)[:, order[0]] == 1).all()
    states = all_states(event_shape, levels)
    lp = model.log_prob(states)
    keep = states.flatten(1)[:, order[0]] == 1
    p_cond = torch.where(keep, lp, torch.full_like(lp, -torch.inf)).softmax(0)
    assert torch.equal(state_index(states, levels), torch.arange(len(states)))
    tv = 0.5 * (empirical(s, levels) - p_cond).abs().sum().item()
    assert tv < tv_threshold(n, int(keep.sum()))


@pytest.mark.parametrize("name", DISCRETE)
def test_completion_that_is_not_a_prefix_warns_and_keeps_given(name):
    model = build_case(name, (1, 2, 2), 2)
    order = model_order(model)
    given = torch.ones(3, 1, 2, 2)
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask.view(-1)[order[-1]] = True  # only the last step given
    if model.supports_completion_any_mask:
        s = model.sample(3, given=given, mask=mask)
    else:
        with pytest.warns(UserWarning, match="not a prefix"):
            s = model.sample(3, given=given, mask=mask)
    assert (s.flatten(1)[:, order[-1]] == 1).all()


@pytest.mark.parametrize("name", DISCRETE)
def test_sampling_is_reproducible_with_a_generator(name):
    model = build_case(name, (1, 2, 3), 2)
    a = model.sample(7, generator=torch.Generator().manual_seed(4))
    b = model.sample(7, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", DISCRETE)
def test_batch_independence(name):
    model = build_case(name, (1, 3, 3), 2)
    x = torch.randint(0, 2, (6, 1, 3, 3)).double()
    full = model.log_prob(x)
    one_by_one = torch.cat([model.log_prob(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(full, one_by_one, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", DISCRETE)
def test_every_parameter_gets_a_gradient(name):
    model = build_case(name, (1, 3, 3), 2)
    x = all_states((1, 3, 3), 2)  # every context is visited
    (-model.log_prob(x).mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", DISCRETE)
def test_checkpoint_round_trip(name, tmp_path):
    has_ordering = model_class(name).supports_orderings
    model = build_case(name, (3, 2, 2), 3, "random:7" if has_ordering else None)
    x = torch.randint(0, 3, (5, 3, 2, 2)).double()
    path = chainrule.save(model, tmp_path / "run")
    loaded = chainrule.load(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=1e-12)
    assert path.name == "model.safetensors"


@pytest.mark.parametrize("name", DISCRETE)
def test_features_shape(name):
    model = build_case(name, (1, 3, 3), 2)
    f = model.features(torch.randint(0, 2, (4, 1, 3, 3)))
    assert f.dim() == 2 and f.shape[0] == 4 and torch.isfinite(f).all()


@pytest.mark.parametrize("name", DISCRETE)
def test_num_parameters_matches_count_without_building(name):
    model = build_case(name, (1, 3, 3), 2)
    opts = {k: getattr(model.config, k) for k in model.config.__dataclass_fields__}
    assert chainrule.count_parameters(name, (1, 3, 3), 2, **opts) == model.num_parameters()
    assert isinstance(model.num_parameters(), int)


@pytest.mark.parametrize("name", DISCRETE)
@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(2, 1, 3, 4), r"shape \(B, 1, 3, 3\)"),
        (torch.zeros(1, 3, 3), r"shape \(B, 1, 3, 3\)"),
        (torch.full((2, 1, 3, 3), 0.5), "binary"),
        (torch.full((2, 1, 3, 3), 2.0), "binary"),
        (torch.full((2, 1, 3, 3), float("nan")), "NaN"),
        (torch.zeros(0, 1, 3, 3), "empty"),
        ("not an image", "tensor or array"),
    ],
)
def test_bad_input_is_a_clear_value_error(name, bad, match):
    model = build_case(name, (1, 3, 3), 2)
    with pytest.raises(ValueError, match=match):
        model.log_prob(bad)
    with pytest.raises(ValueError, match=match):
        model.features(bad)


def test_unknown_model_and_option_are_clear():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        chainrule.build("nope")
    with pytest.raises(ValueError, match="unknown option"):
        chainrule.build("fvsbn", hidden_size=3)


def test_sample_arguments_are_checked():
    model = tiny("fvsbn")
    with pytest.raises(ValueError, match="positive int"):
        model.sample(0)
    with pytest.raises(ValueError, match="both"):
        model.sample(2, given=torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="boolean"):
        model.sample(2, given=torch.zeros(2, 1, 2, 2), mask=torch.zeros(2, 1, 2, 2))


@pytest.mark.parametrize("name", chainrule.available_models())
def test_every_config_field_has_a_help_line(name):
    """The CLI generates its flags from the config dataclasses: each field says what it is."""
    import dataclasses

    for f in dataclasses.fields(model_class(name).Config):
        help_ = f.metadata.get("help")
        assert isinstance(help_, str) and help_ and "\n" not in help_, (name, f.name)
