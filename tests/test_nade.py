"""NADE: fast paths against the naive oracle, normalization, ensembles, samplers, features.

The shared contract (tests/test_contract.py) already runs over "nade" with its defaults; these
tests add what is particular to NADE: every computation path equals the per-dimension loop
(values and gradients, float64, 1e-10) for each activation, ordering, level count and block
size; each ordering and the ensemble normalize over all states; the ensemble is the mixture of
joints; the O(DH) samplers equal the naive recomputing sampler bit for bit.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import chainrule
from chainrule.sampling import naive_sample

from .conftest import randomize
from .oracles import all_states, model_total_variation, total_variation, tv_threshold
from .oracles.nade import nade_log_prob, nade_teacher_params


def nade(event_shape=(1, 3, 4), levels=2, **opts):
    opts = {"hidden": 6, "block": 3, **opts}
    return randomize(chainrule.build("nade", event_shape, levels, **opts).double())


def log_prob(model, x, impl):
    """``log p(x)`` by a fast path ("native", "sparse", "block") or by the oracle's loop
    ("naive")."""
    return nade_log_prob(model, x) if impl == "naive" else model._log_prob(x, impl)


def values_and_grads(model, x, impl):
    model.zero_grad()
    lp = log_prob(model, x, impl)
    (lp * torch.linspace(0.5, 1.5, len(lp))).sum().backward()  # a non-uniform weighting
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


ORDERINGS = ["raster", "random:4", [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]]


# ---------------------------------------------------------------------- fast == naive
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("ordering", ORDERINGS, ids=["raster", "random", "list"])
@pytest.mark.parametrize("levels", [2, 4])
@pytest.mark.parametrize("block", [1, 3, 5, 12, 40])
def test_fast_paths_equal_the_naive_loop(activation, ordering, levels, block):
    model = nade(levels=levels, activation=activation, ordering=ordering, block=block)
    x = torch.randint(0, levels, (7, 1, 3, 4), generator=torch.Generator().manual_seed(1))
    ref_lp, ref_g = values_and_grads(model, x.double(), "naive")
    impls = ["block", "sparse", "native"] if levels == 2 else ["block"]
    for impl in impls:
        lp, g = values_and_grads(model, x.double(), impl)
        torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-10)
        for name in ref_g:
            torch.testing.assert_close(
                g[name], ref_g[name], rtol=0, atol=1e-10, msg=f"{impl} {name}"
            )
        assert all(ref_g[n].abs().sum() > 0 for n in ref_g)  # not vacuous


@pytest.mark.parametrize("levels", [2, 3])
def test_fast_paths_equal_naive_with_three_channels_and_an_ensemble(levels):
    model = nade((3, 2, 2), levels, ensemble=3, activation="relu")
    x = torch.randint(0, levels, (5, 3, 2, 2), generator=torch.Generator().manual_seed(2)).double()
    ref_lp, ref_g = values_and_grads(model, x, "naive")
    for impl in ["block", "sparse", "native"] if levels == 2 else ["block"]:
        lp, g = values_and_grads(model, x, impl)
        torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-10)
        for name in ref_g:
            torch.testing.assert_close(g[name], ref_g[name], rtol=0, atol=1e-10)


def test_block_path_gives_the_input_gradient_of_the_naive_loop():
    model = nade(levels=3)
    x = torch.randint(0, 3, (4, 1, 3, 4), generator=torch.Generator().manual_seed(3)).double()
    grads = []
    for impl in ("naive", "block"):
        xr = x.clone().requires_grad_(True)
        log_prob(model, xr, impl).sum().backward()
        grads.append(xr.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)
    assert grads[0].abs().sum() > 0


def test_fast_paths_agree_in_float32_at_a_realistic_size():
    torch.manual_seed(0)
    model = chainrule.build("nade", (1, 10, 10), 2, hidden=40).float()
    x = (torch.rand(64, 1, 10, 10) < 0.15).float()
    lp = {impl: log_prob(model, x, impl) for impl in ("naive", "native", "sparse", "block")}
    for impl in ("native", "sparse", "block"):
        torch.testing.assert_close(lp[impl], lp["naive"], rtol=1e-5, atol=1e-4, msg=impl)


def test_auto_path_is_native_on_cpu_and_block_for_levels_or_input_gradients():
    model = nade()
    x = torch.zeros(2, 12, dtype=torch.float64)
    assert model._impl(x) == "native"  # the kernel builds here (tests/test_native.py)
    assert nade(impl="sparse")._impl(x) == "sparse"
    assert model._impl(x.requires_grad_(True)) == "block"
    assert nade(levels=3)._impl(torch.zeros(2, 12)) == "block"
    assert nade(impl="naive").config.impl == "auto"  # a saved config's older name


def test_a_batch_of_one_does_not_touch_the_parameters():
    model = nade()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.log_prob(torch.ones(1, 1, 3, 4))
    model.sample(1, generator=torch.Generator().manual_seed(0))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


# ---------------------------------------------------------------------- normalization
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("ordering", ORDERINGS, ids=["raster", "random", "list"])
@pytest.mark.parametrize("impl", ["naive", "native", "sparse", "block"])
def test_binary_normalizes_over_all_4096_states(activation, ordering, impl):
    model = nade(activation=activation, ordering=ordering)
    lp = log_prob(model, all_states((1, 3, 4), 2), impl)  # n = 12
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    assert lp.std() > 0.1


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("ordering", ["raster", "random:1"])
def test_k_level_normalizes_over_all_states(activation, ordering):
    model = nade((1, 2, 3), 3, activation=activation, ordering=ordering, embed_dim=2)
    lp = model.log_prob(all_states((1, 2, 3), 3))  # 3^6 = 729 states
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9


@pytest.mark.parametrize("levels,shape", [(2, (1, 3, 3)), (3, (1, 2, 2))])
def test_ensemble_normalizes_and_is_the_mixture_of_joints(levels, shape):
    model = nade(shape, levels, ensemble=3)
    x = all_states(shape, levels)
    lp = model.log_prob(x)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    joints = torch.stack([model.ordered_log_probs(x, e).sum(1) for e in range(3)])
    for e in range(3):  # each ordering is a normalized NADE of its own
        assert abs(torch.logsumexp(joints[e], 0).item()) < 1e-9
    torch.testing.assert_close(lp, torch.logsumexp(joints, 0) - math.log(3), rtol=0, atol=1e-12)
    # the orderings differ and so do their joints: an average of log-likelihoods is not it
    assert len({tuple(o.tolist()) for o in model.orders}) == 3
    assert (lp - joints.mean(0)).abs().max() > 1e-3


def test_ensemble_has_no_per_dimension_conditionals():
    model = nade(ensemble=2)
    with pytest.raises(ValueError, match="ensemble"):
        model.conditional_log_probs(torch.zeros(1, 1, 3, 4))


# ---------------------------------------------------------------------- causality
@pytest.mark.parametrize("ordering", ORDERINGS, ids=["raster", "random", "list"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("levels", [2, 3])
def test_causality_by_jacobian_and_perturbation(ordering, activation, levels):
    model = nade(levels=levels, ordering=ordering, activation=activation)
    order = model.order
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel())
    x = torch.randint(0, levels, (1, 1, 3, 4), generator=torch.Generator().manual_seed(5)).double()
    jac = torch.autograd.functional.jacobian(
        lambda v: model._conditional_log_probs(v).flatten(), x
    ).reshape(12, 12)
    later = pos[None, :] > pos[:, None]  # [out, in]: input comes later than output
    assert jac[later].abs().max() == 0
    assert jac[pos[None, :] < pos[:, None]].abs().max() > 0
    # perturbation: change the last step's value; only that step's own term may change
    base = model.conditional_log_probs(x).flatten()
    xp = x.clone()
    xp.view(-1)[order[-1]] = (xp.view(-1)[order[-1]] + 1) % levels
    diff = (model.conditional_log_probs(xp).flatten() - base).abs()
    assert diff[order[:-1]].max() == 0
    # and changing the first step's value changes some later conditional
    xq = x.clone()
    xq.view(-1)[order[0]] = (xq.view(-1)[order[0]] + 1) % levels
    assert (model.conditional_log_probs(xq).flatten() - base)[order[1:]].abs().max() > 0


# ---------------------------------------------------------------------- sampling
@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("ordering", ["raster", "random:2"])
def test_samplers_equal_the_naive_recomputing_sampler_bit_for_bit(levels, activation, ordering):
    model = nade(levels=levels, activation=activation, ordering=ordering)
    oracle = copy.copy(model)  # the naive sampler's passes through the per-dimension loop
    oracle.teacher_params = lambda xo, part=0: nade_teacher_params(model, xo, part)
    ref = naive_sample(oracle, 200, generator=torch.Generator().manual_seed(7))
    fast = model.sample(200, generator=torch.Generator().manual_seed(7))  # binary: native
    dense = model.sample(200, generator=torch.Generator().manual_seed(7), sparse=False)
    model.config.impl = "sparse"  # the PyTorch in-place decoder
    sparse = model.sample(200, generator=torch.Generator().manual_seed(7))
    assert torch.equal(fast, ref)
    assert torch.equal(dense, ref)
    assert torch.equal(sparse, ref)
    assert 0 < ref.mean() < levels - 1  # not a constant image


@pytest.mark.parametrize("levels,shape", [(2, (1, 2, 2)), (3, (1, 1, 2))])
def test_ensemble_sampler_agrees_with_its_density(levels, shape):
    model = nade(shape, levels, ensemble=3, hidden=4)
    s = model.sample(20000, generator=torch.Generator().manual_seed(0))
    assert model_total_variation(s, model) < tv_threshold(20000, levels**model.dim)


def test_relu_sampler_agrees_with_its_density():
    model = nade((1, 2, 2), 2, activation="relu", ordering="random:9")
    s = model.sample(20000, generator=torch.Generator().manual_seed(1))
    assert model_total_variation(s, model) < tv_threshold(20000, 2**4)


def test_ensemble_completion_that_is_not_a_prefix_warns_and_keeps_given():
    model = nade(ensemble=3)
    given = torch.ones(1, 3, 4)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    with pytest.warns(UserWarning, match="prefix of every ordering"):
        s = model.sample(50, given=given, mask=mask, generator=torch.Generator().manual_seed(0))
    assert (s[:, 0, 1, 1] == 1).all()


def test_ensemble_completion_of_a_common_prefix_is_the_exact_conditional():
    # a 2-pixel image: ordering 0 is raster; force orderings that all start with pixel 0
    model = nade((1, 1, 3), 2, ensemble=2, ensemble_seed=0)
    model.orders = torch.tensor([[0, 1, 2], [0, 2, 1]])
    states = all_states((1, 1, 3), 2)
    lp = model.log_prob(states)
    given = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 1, 3)
    mask = torch.tensor([True, False, False]).reshape(1, 1, 3)
    s = model.sample(20000, given=given, mask=mask, generator=torch.Generator().manual_seed(2))
    keep = states.flatten(1)[:, 0] == 1
    p = torch.where(keep, lp, torch.full_like(lp, -math.inf)).softmax(0)
    assert total_variation(s, p, 2) < tv_threshold(20000, int(keep.sum()))


# ---------------------------------------------------------------------- features, sizes, options
@pytest.mark.parametrize("levels", [2, 5])
def test_features_are_the_hidden_units_after_the_whole_image(levels):
    model = nade(levels=levels, ordering="random:3")
    x = torch.randint(0, levels, (3, 1, 3, 4)).double()
    f = model.features(x)
    assert f.shape == (3, 6)
    # the naive loop's running activation after all D steps, in this ordering
    xo = x.flatten(1)[:, model.order]
    a = model.bias_hidden + torch.einsum("bdm,dmh->bh", model.phi(xo), model.weight_in[model.order])
    torch.testing.assert_close(f, torch.sigmoid(a), rtol=0, atol=1e-12)


def test_parameter_counts():
    d, h = 12, 6
    assert nade().num_parameters() == 2 * d * h + h + d
    k, m = 5, 3
    model = nade(levels=k, embed_dim=m)
    assert model.num_parameters() == d * (1 + m) * h + h + d * m * h + d * k + 2 * k * m
    assert (
        chainrule.count_parameters("nade", (1, 28, 28), 2, hidden=500) == 2 * 784 * 500 + 500 + 784
    )


def test_checkpoint_round_trip_of_an_ensemble(tmp_path):
    model = nade((1, 2, 3), 3, ensemble=2, activation="relu")
    x = all_states((1, 2, 3), 3)[:50]
    chainrule.save(model, tmp_path / "run")
    loaded = chainrule.load(tmp_path / "run")
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"activation": "tanh"}, "activation"),
        ({"impl": "cuda"}, "impl"),
        ({"hidden": 0}, "hidden"),
        ({"ensemble": 0}, "ensemble"),
        ({"block": 0}, "block"),
        ({"ordering": "spiral"}, "ordering"),
    ],
)
def test_bad_options_are_clear_value_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        chainrule.build("nade", (1, 2, 2), 2, **opts)


def test_real_valued_data_is_refused():
    with pytest.raises(ValueError, match="discrete"):
        chainrule.build("nade", (1, 2, 2), None)
