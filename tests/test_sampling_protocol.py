"""The decoding protocol of chainrule.sampling, for every registered model: the incremental
decoder gives the parameters of the full teacher-forced pass, and the one sampler equals the
naive oracle (one full pass per step) bit for bit, unconditionally and for completions."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import chainrule
from chainrule import sampling
from chainrule.models import model_class

from .conftest import TINY_OPTIONS, randomize

#: (name, event_shape, levels, options): every model, binary / K-level / colour / real
CASES = []
for _name in chainrule.available_models():
    _cls = model_class(_name)
    _opts = dict(TINY_OPTIONS.get(_name, {}))
    if _cls.supports_orderings:
        _opts["ordering"] = "random:4"
    if "real" in _cls.supports:
        CASES.append((_name, (1, 2, 3), None, _opts))
        CASES.append((_name, (3, 1, 2), None, _opts))
    else:
        CASES.append((_name, (1, 3, 2), 2, _opts))
        CASES.append((_name, (3, 2, 1), 3, _opts))
CASES.append(("nade", (1, 2, 3), 2, {"hidden": 5, "ensemble": 3}))
CASES.append(("rnade", (1, 2, 3), None, {"hidden": 5, "support": "real"}))
CASES.append(("diagonal-bilstm", (3, 2, 3), 3, {"hidden": 3, "full_context": False}))
IDS = [f"{n}-{s[0]}x{s[1]}x{s[2]}-K{k}-{'-'.join(map(str, o.values()))}" for n, s, k, o in CASES]


def build(name, shape, levels, options):
    torch.manual_seed(0)
    m = chainrule.build(name, event_shape=shape, levels=levels, **options).double()
    return randomize(m, scale=0.5)


def assert_same_draws(a, b, levels):
    """Discrete draws are equal bit for bit (parameters that agree to rounding give the same
    inverse-CDF decisions); real-valued draws inherit the rounding of the parameters."""
    if levels is None:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    else:
        assert torch.equal(a, b)


def draw_given(m, n, seed):
    g = torch.Generator().manual_seed(seed)
    if m.levels is None:
        return torch.rand(n, *m.event_shape, generator=g, dtype=torch.float64)
    return torch.randint(0, m.levels, (n, *m.event_shape), generator=g).double()


@pytest.mark.parametrize("name,shape,levels,options", CASES, ids=IDS)
def test_decoder_gives_the_parameters_of_the_full_pass(name, shape, levels, options):
    m = build(name, shape, levels, options)
    x = draw_given(m, 4, 1)
    for part in range(getattr(m.config, "ensemble", 1)):
        got = sampling.teacher_forced_params(m, x, part)
        xo = x.flatten(1)[:, m.decoder_order(part)]
        ref = m.teacher_params(xo, part)
        assert got.shape == ref.shape == (4, m.dim, m.head.num_params)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,shape,levels,options", CASES, ids=IDS)
def test_sampler_equals_the_naive_oracle(name, shape, levels, options):
    m = build(name, shape, levels, options)
    n = 50
    fast = m.sample(n, generator=torch.Generator().manual_seed(3))
    ref = sampling.naive_sample(m, n, generator=torch.Generator().manual_seed(3))
    assert_same_draws(fast, ref, levels)
    assert len(torch.unique(fast.flatten(1), dim=0)) > 1  # not vacuous


@pytest.mark.parametrize("mask_kind", ["prefix", "per-image"])
@pytest.mark.parametrize("name,shape,levels,options", CASES, ids=IDS)
def test_completion_equals_the_naive_oracle(name, shape, levels, options, mask_kind):
    m = build(name, shape, levels, options)
    n = 30
    given = draw_given(m, n, 2)
    if mask_kind == "prefix":  # the first third of the model's first ordering
        mask = torch.zeros(m.dim, dtype=torch.bool)
        mask[m.decoder_order(0)[: m.dim // 3]] = True
        mask = mask.view(shape)
    else:
        g = torch.Generator().manual_seed(5)
        mask = torch.rand(n, *shape, generator=g) < 0.4
    given_c, mask_c = m._check_completion(n, given, mask)
    out = []
    for fn in (sampling.sample, sampling.naive_sample):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(fn(m, n, given_c, mask_c, torch.Generator().manual_seed(4)))
    assert_same_draws(out[0], out[1], levels)
    full = torch.broadcast_to(mask, given.shape)
    assert torch.equal(out[0][full], given[full])


@pytest.mark.parametrize("name", chainrule.available_models())
def test_capabilities_match_the_config(name):
    """``supports_orderings`` is declared, and true exactly when the config has an ordering."""
    cls = model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    assert cls.supports_orderings == ("ordering" in fields)


def test_uniforms_are_drawn_up_front_one_per_dimension():
    """Sampling consumes exactly one uniform per dimension (two for a mixture head): the
    generator is left where ``draw_uniforms`` leaves it."""
    for name, shape, levels, options in CASES:
        m = build(name, shape, levels, options)
        if getattr(m.config, "ensemble", 1) > 1:
            continue  # an ensemble also draws one uniform per image for its ordering
        g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
        m.sample(3, generator=g1)
        for _ in range(m.head.uniforms):
            sampling.draw_uniforms(3, (m.dim,), g2)
        assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2)), name


def test_a_completion_that_is_not_a_prefix_warns_once_per_call():
    m = build("fvsbn", (1, 2, 2), 2, {})
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 1, 1] = True
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m.sample(2, given=torch.ones(2, 1, 2, 2), mask=mask)
    assert sum("not a prefix" in str(x.message) for x in w) == 1
