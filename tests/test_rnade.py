"""RNADE: the real-valued contract (the shared contract covers discrete models only).

Integrates to 1 by quadrature (1 and 2 dims), conditionals equal torch's MixtureSameFamily
(truncated to [0, 1] or not), the blockwise path equals the naive loop (values and gradients,
float64, 1e-10), causality by Jacobian and perturbation, samples pass a KS test per dimension
against the exact conditional CDF, batch independence, gradients, checkpoints, bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, Normal

import chainrule

from .conftest import randomize
from .oracles.nade import rnade_ordered_log_probs


def rnade(event_shape=(1, 1, 3), **opts):
    opts = {"hidden": 5, "components": 3, "block": 2, **opts}
    model = chainrule.build("rnade", event_shape, None, **opts).double()
    randomize(model, scale=0.7)
    return model


def gauss_legendre(panels: int, lo: float, hi: float, nodes: int = 20):
    """Composite Gauss-Legendre rule on [lo, hi]: ``panels`` equal panels of ``nodes`` nodes."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    return torch.tensor((mid + half * x).ravel()), torch.tensor((half * w).ravel())


def log_density(model, x):
    """Joint log density through the private path (no [0, 1] check: for support='real')."""
    return model.ordered_log_probs(model.to_ordered(x)).sum(1)


# ---------------------------------------------------------------------- normalization
@pytest.mark.parametrize("support,lo,hi", [("unit", 0.0, 1.0), ("real", -40.0, 40.0)])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_integrates_to_one_in_one_dimension(support, lo, hi, activation):
    model = rnade((1, 1, 1), support=support, activation=activation)
    x, w = gauss_legendre(160 if support == "real" else 10, lo, hi)
    total = (log_density(model, x.reshape(-1, 1, 1, 1)).exp() * w).sum().item()
    assert abs(total - 1.0) < 1e-6


@pytest.mark.parametrize("support,lo,hi", [("unit", 0.0, 1.0), ("real", -25.0, 25.0)])
@pytest.mark.parametrize("ordering", ["raster", [1, 0]])
def test_integrates_to_one_in_two_dimensions(support, lo, hi, ordering):
    model = rnade((1, 1, 2), support=support, ordering=ordering)
    x, w = gauss_legendre(50 if support == "real" else 5, lo, hi)
    gx, gy = torch.meshgrid(x, x, indexing="ij")
    pts = torch.stack([gx, gy], -1).reshape(-1, 1, 1, 2)
    weights = (w[:, None] * w[None, :]).reshape(-1)
    total = (log_density(model, pts).exp() * weights).sum().item()
    assert abs(total - 1.0) < 1e-5
    # the second conditional depends on the first value (not a product of marginals)
    lp = model.ordered_log_probs(model.to_ordered(torch.tensor([[[[0.1, 0.5]]], [[[0.9, 0.5]]]])))
    assert (lp[0, 1] - lp[1, 1]).abs() > 1e-6


# ---------------------------------------------------------------------- conditionals
@pytest.mark.parametrize("support", ["unit", "real"])
def test_conditionals_equal_torch_mixture_same_family(support):
    model = rnade((1, 2, 2), support=support, ordering="random:1")
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xo = model.to_ordered(x)
    params = model._ordered_params(xo)  # (B, D, 3K)
    k = model.components
    logits, mu, log_sigma = params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]
    mix = MixtureSameFamily(Categorical(logits=logits), Normal(mu, log_sigma.exp()))
    expected = mix.log_prob(xo)
    if support == "unit":
        mass = (mix.cdf(torch.ones_like(xo)) - mix.cdf(torch.zeros_like(xo))).log()
        expected = expected - mass
    got = model.conditional_log_probs(x).flatten(1)[:, model.order]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.log_prob(x), expected.sum(1), rtol=0, atol=1e-10)


def test_truncated_mixture_mass_is_accurate_in_the_tails():
    from chainrule.models.rnade import log_diff_ndtr

    lo = torch.tensor([-40.0, 8.0, -0.5, 30.0], dtype=torch.float64)
    hi = torch.tensor([-38.0, 9.0, 0.5, 31.0], dtype=torch.float64)
    got = log_diff_ndtr(lo, hi)
    assert torch.isfinite(got).all()
    ndtr, log_ndtr = torch.special.ndtr, torch.special.log_ndtr
    # where the direct difference is accurate, they agree
    torch.testing.assert_close(got[2], (ndtr(hi[2]) - ndtr(lo[2])).log(), rtol=1e-12, atol=0)
    upper = 0.5 * math.erfc(8.0 / math.sqrt(2)) - 0.5 * math.erfc(9.0 / math.sqrt(2))  # accurate
    torch.testing.assert_close(got[1], got.new_tensor(math.log(upper)), rtol=1e-12, atol=0)
    # far tails, where Phi(hi) - Phi(lo) underflows or cancels: the mass of [-40, -38] is
    # Phi(-38) to 1e-40 relative, and [30, 31] mirrors [-31, -30]
    torch.testing.assert_close(got[0], log_ndtr(lo.new_tensor(-38.0)), rtol=1e-12, atol=0)
    torch.testing.assert_close(got[3], log_ndtr(lo.new_tensor(-30.0)), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- fast == naive
@pytest.mark.parametrize("support", ["unit", "real"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("ordering", ["raster", "random:2"])
@pytest.mark.parametrize("block", [1, 3, 50])
def test_block_path_equals_the_naive_loop(support, activation, ordering, block):
    model = rnade((3, 2, 2), support=support, activation=activation, ordering=ordering, block=block)
    x = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = {}
    for impl in ("naive", "block"):
        model.zero_grad()
        xr = x.clone().requires_grad_(True)
        xo = model.to_ordered(xr)
        lp = rnade_ordered_log_probs(model, xo) if impl == "naive" else model.ordered_log_probs(xo)
        lp = lp.sum(1)
        (lp * torch.linspace(0.5, 1.5, 5)).sum().backward()
        out[impl] = (lp.detach(), xr.grad, {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(out["block"][0], out["naive"][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["block"][1], out["naive"][1], rtol=0, atol=1e-10)
    for name, g in out["naive"][2].items():
        torch.testing.assert_close(out["block"][2][name], g, rtol=0, atol=1e-10, msg=name)
        assert g.abs().sum() > 0, name


# ---------------------------------------------------------------------- causality
@pytest.mark.parametrize("ordering", ["raster", "random:5"])
@pytest.mark.parametrize("shape", [(1, 2, 3), (3, 1, 2)])
def test_causality_by_jacobian_and_perturbation(ordering, shape):
    model = rnade(shape, ordering=ordering)
    d = model.dim
    pos = torch.empty_like(model.order)
    pos[model.order] = torch.arange(d)
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda v: model._conditional_log_probs(v).flatten(), x
    ).reshape(d, d)
    assert jac[pos[None, :] > pos[:, None]].abs().max() == 0
    assert jac[pos[None, :] < pos[:, None]].abs().max() > 0
    base = model.conditional_log_probs(x).flatten()
    for j in range(d):
        xp = x.clone()
        xp.view(-1)[model.order[j]] = 1.0 - xp.view(-1)[model.order[j]]
        diff = (model.conditional_log_probs(xp).flatten() - base).abs()
        assert diff[model.order[:j]].max() == 0 if j > 0 else True
        if j < d - 1:
            assert diff[model.order[j + 1 :]].max() > 0


# ---------------------------------------------------------------------- sampling
def ks_statistic(samples: torch.Tensor, cdf) -> float:
    s, _ = torch.sort(samples)
    n = len(s)
    f = cdf(s)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.maximum(i / n - f, f - (i - 1) / n).max().item()


def exact_conditional_cdf(model, prefix: torch.Tensor, step: int):
    """CDF of step ``step`` given the ordered values ``prefix`` (1, D) of the earlier steps."""
    params = model._ordered_params(prefix)[0, step]
    k = model.components
    mix = MixtureSameFamily(
        Categorical(logits=params[:k]), Normal(params[k : 2 * k], params[2 * k :].exp())
    )
    if model.config.support == "real":
        return mix.cdf
    lo, hi = (
        mix.cdf(torch.tensor(0.0, dtype=torch.float64)),
        mix.cdf(torch.tensor(1.0, dtype=torch.float64)),
    )
    return lambda v: (mix.cdf(v) - lo) / (hi - lo)


@pytest.mark.parametrize("support", ["unit", "real"])
@pytest.mark.parametrize("ordering", ["raster", "random:3"])
def test_samples_pass_a_ks_test_per_dimension(support, ordering):
    model = rnade((1, 1, 3), support=support, ordering=ordering)
    n = 20000
    crit = 1.95 / math.sqrt(n)  # the KS critical value at level 0.001
    # step 0: its marginal is the exact first conditional
    s = model.sample(n, generator=torch.Generator().manual_seed(0))
    so = model.to_ordered(s)
    cdf0 = exact_conditional_cdf(model, torch.zeros(1, 3, dtype=torch.float64), 0)
    assert ks_statistic(so[:, 0], cdf0) < crit
    if support == "unit":
        assert s.min() >= 0 and s.max() <= 1
    # later steps: complete a fixed prefix, compare with the exact conditional CDF
    prefix = torch.tensor([[0.3, 0.8, 0.0]], dtype=torch.float64)
    for step in (1, 2):
        given = model.from_ordered(prefix).expand(n, -1, -1, -1)
        mask_o = torch.zeros(1, 3, dtype=torch.bool)
        mask_o[0, :step] = True
        mask = model.from_ordered(mask_o)[0]
        s = model.sample(n, given=given, mask=mask, generator=torch.Generator().manual_seed(step))
        so = model.to_ordered(s)
        assert torch.equal(so[:, :step], prefix[:, :step].expand(n, -1))
        assert ks_statistic(so[:, step], exact_conditional_cdf(model, prefix, step)) < crit
        # the test has power: against the unconditional first step's CDF it fails
        assert ks_statistic(so[:, step], cdf0) > crit


def test_real_support_can_sample_outside_the_unit_interval_and_says_so():
    model = rnade((1, 1, 2), support="real")
    with torch.no_grad():
        model.bias_out[:, 6:] = 0.5  # wide components: much mass outside [0, 1]
    s = model.sample(2000, generator=torch.Generator().manual_seed(0))
    assert ((s < 0) | (s > 1)).any()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.log_prob(s)
    unit = rnade((1, 1, 2))
    with torch.no_grad():
        unit.bias_out[:, 6:] = 0.5
    s = unit.sample(2000, generator=torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 1
    assert torch.isfinite(unit.log_prob(s)).all()


def test_sampling_is_reproducible_and_completion_keeps_given():
    model = rnade((1, 2, 2))
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    given = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    mask = torch.tensor([[[True, True], [False, False]]])
    s = model.sample(5, given=given, mask=mask, generator=torch.Generator().manual_seed(3))
    assert (s[:, 0, 0] == 0.25).all() and (s[:, 0, 1, 0] != 0.25).all()
    with pytest.warns(UserWarning, match="not a prefix"):
        model.sample(2, given=given, mask=~mask)


# ---------------------------------------------------------------------- the rest of the contract
def test_batch_independence_gradients_and_features():
    model = rnade((1, 3, 3))
    x = torch.rand(6, 1, 3, 3, dtype=torch.float64)
    full = model.log_prob(x)
    one = torch.cat([model.log_prob(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(full, one, rtol=0, atol=1e-12)
    (-full.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    f = model.features(x)
    assert f.shape == (6, 5) and torch.isfinite(f).all()


def test_checkpoint_round_trip(tmp_path):
    model = rnade((3, 2, 2), ordering="random:7", components=2, support="real")
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    chainrule.save(model, tmp_path / "run")
    loaded = chainrule.load(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=1e-12)


def test_parameter_count():
    d, h, k = 6, 5, 3
    assert rnade((1, 2, 3)).num_parameters() == d * h + h + d + d * 3 * k * h + d * 3 * k


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.full((2, 1, 1, 3), 1.5), r"\[0, 1\]"),
        (torch.full((2, 1, 1, 3), -0.1), r"\[0, 1\]"),
        (torch.full((2, 1, 1, 3), float("nan")), "NaN"),
        (torch.zeros(2, 1, 3), "shape"),
    ],
)
def test_bad_input_is_a_clear_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        rnade().log_prob(bad)


@pytest.mark.parametrize(
    "levels,opts,match",
    [
        (2, {}, "real-valued"),
        (None, {"components": 0}, "components"),
        (None, {"support": "positive"}, "support"),
        (None, {"impl": "sparse"}, "impl"),
    ],
)
def test_bad_build_is_a_clear_value_error(levels, opts, match):
    with pytest.raises(ValueError, match=match):
        chainrule.build("rnade", (1, 2, 2), levels, **opts)
