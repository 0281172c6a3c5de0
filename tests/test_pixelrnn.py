"""PixelCNN, Row LSTM and Diagonal BiLSTM: causality (Jacobian and perturbation, 1 and 3
channels, K = 2 and K > 2, on 5 x 5), fast path == eager oracle, skew/unskew, masks,
normalization, sampler, presets and option errors."""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
import torch

import chainrule
from chainrule import native
from chainrule.models.layers import (
    DiagonalBiLSTMLayer,
    MaskedConv2d,
    RowLSTMLayer,
    causal_mask,
    channel_groups,
    skew,
    unskew,
)
from chainrule.models.pixelrnn import PRESETS, preset_options

from .conftest import randomize
from .oracles.pixelrnn import diagonal_bilstm_reference, row_lstm_reference, with_oracle_layers

MODELS = ["pixelcnn", "row-lstm", "diagonal-bilstm"]
RNN = ["row-lstm", "diagonal-bilstm"]


def build(name, shape, levels, seed=0, **opts):
    opts = {"hidden": 3, "layers": 2, **opts}
    model = chainrule.build(name, event_shape=shape, levels=levels, **opts).double()
    randomize(model, seed=seed, scale=0.7)
    with torch.no_grad():  # positive biases keep most ReLUs open: every path is exercised
        for mod in model.modules():
            if isinstance(mod, MaskedConv2d) and mod.bias is not None:
                mod.bias.abs_().add_(0.5)
    return model


def step_index(shape):
    """``(C, H, W)`` -> raster step of each dimension (channels innermost)."""
    c, h, w = shape
    cc, hh, ww = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    return ((hh * w + ww) * c + cc).flatten()


# ---------------------------------------------------------------------- skewing and masks
@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (5, 1), (3, 4), (4, 3), (5, 5)])
def test_skew_unskew_round_trip_and_diagonals(h, w):
    x = torch.randn(2, 3, h, w)
    s = skew(x)
    assert s.shape == (2, 3, h, w + h - 1)
    assert torch.equal(unskew(s, w), x)
    for r in range(h):  # row r shifted right by r, zeros elsewhere
        assert torch.equal(s[..., r, r : r + w], x[..., r, :])
        assert (s[..., r, :r] == 0).all() and (s[..., r, r + w :] == 0).all()


@pytest.mark.parametrize("h,w", [(1, 4), (4, 1), (3, 5), (5, 3), (4, 4)])
def test_diagonal_order_is_the_skewed_map_column_by_column(h, w):
    from chainrule.models.layers import diagonal_order, diagonal_rows

    x = torch.arange(1.0, h * w + 1).view(h, w)
    s = skew(x)
    cells = torch.cat(
        [s[diagonal_rows(j, h, w)[0] : diagonal_rows(j, h, w)[1] + 1, j] for j in range(w + h - 1)]
    )
    to_diag, to_raster, sizes = diagonal_order(h, w, torch.device("cpu"))
    assert torch.equal(cells, x.flatten()[to_diag]) and sum(sizes) == h * w
    assert torch.equal(cells[to_raster], x.flatten())
    assert (s != 0).sum() == h * w  # the rest of the skewed map is padding


def test_unskew_checks_width():
    with pytest.raises(ValueError, match="expected width"):
        unskew(torch.zeros(1, 3, 6), 5)


def test_masks_by_hand():
    # 3 colour groups, one feature each: the centre tap of mask A is strictly lower triangular
    g = torch.arange(3)
    a = causal_mask(g, g, 3, 3, "A")
    b = causal_mask(g, g, 3, 3, "B")
    assert torch.equal(a[:, :, 1, 1], torch.tril(torch.ones(3, 3), -1))
    assert torch.equal(b[:, :, 1, 1], torch.tril(torch.ones(3, 3)))
    for m in (a, b):
        assert (m[:, :, 0, :] == 1).all() and (m[:, :, 1, 0] == 1).all()  # above, left: free
        assert (m[:, :, 2, :] == 0).all() and (m[:, :, 1, 2] == 0).all()  # below, right: zero
    assert channel_groups(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="odd"):
        causal_mask(g, g, 2, 3, "A")


def test_masks_are_buffers_and_weights_are_untouched():
    model = build("row-lstm", (3, 4, 4), 4)
    names = dict(model.named_buffers())
    assert any(n.endswith("mask") for n in names)
    w = model.input_conv.weight.detach().clone()
    model.log_prob(torch.randint(0, 4, (2, 3, 4, 4)))
    assert torch.equal(model.input_conv.weight, w)
    assert (model.input_conv.weight != 0).float().mean() > 0.9  # the mask is not baked in


# ---------------------------------------------------------------------- fast == oracle
@pytest.mark.parametrize("layer", ["row", "diag"])
@pytest.mark.parametrize("colors,h,w", [(1, 5, 5), (3, 4, 6), (1, 6, 3), (3, 1, 4), (1, 3, 1)])
def test_fast_layer_equals_reference_with_gradients(layer, colors, h, w):
    torch.manual_seed(h * 10 + w)
    fin, units = 6, 4
    args = ()
    if layer == "row":
        mod = RowLSTMLayer(fin, units, colors, kernel=3)
    else:
        mod = DiagonalBiLSTMLayer(fin, units, colors, context_ch=colors)
        args = (torch.randn(2, colors, h, w),)
    randomize(mod, seed=3, scale=0.8)
    x = torch.randn(2, fin, h, w, requires_grad=True)
    fast = mod(x, *args)
    ref = (row_lstm_reference if layer == "row" else diagonal_bilstm_reference)(mod, x, *args)
    assert fast.shape == ref.shape == (2, units, h, w)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    v = torch.randn_like(fast)
    gf = torch.autograd.grad((fast * v).sum(), [x, *mod.parameters()])
    gr = torch.autograd.grad((ref * v).sum(), [x, *mod.parameters()])
    for a, b in zip(gf, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    "name,opts",
    [("row-lstm", {}), ("diagonal-bilstm", {}), ("diagonal-bilstm", {"full_context": False})],
)
def test_fast_model_equals_reference_model(name, opts):
    shape, levels = (3, 4, 5), 4
    fast = build(name, shape, levels, **opts)
    ref = with_oracle_layers(fast)
    x = torch.randint(0, levels, (3, *shape)).double()
    torch.testing.assert_close(
        fast.conditional_log_probs(x), ref.conditional_log_probs(x), rtol=0, atol=1e-11
    )


# ---------------------------------------------------------------------- the fused recurrences
# The layers run their whole recurrence as one autograd node with a hand-written backward
# through time (layers._RowLSTMRecurrence, layers._DiagonalBiLSTMRecurrence): values and the
# gradients with respect to the input, the context and every parameter must equal the eager
# oracle's (plain autograd through a loop of small ops) in float64.
def layer_and_oracle(layer, colors, kernel=3, context=True, fin=6, units=4):
    if layer == "row":
        mod = RowLSTMLayer(fin, units, colors, kernel=kernel)
        return mod, lambda x, ctx=None: row_lstm_reference(mod, x)
    mod = DiagonalBiLSTMLayer(fin, units, colors, context_ch=colors if context else 0)
    return mod, lambda x, ctx=None: diagonal_bilstm_reference(mod, x, ctx)


@pytest.mark.parametrize(
    "layer,opts",
    [
        ("row", {"kernel": 3}),
        ("row", {"kernel": 1}),
        ("row", {"kernel": 5}),
        ("diag", {"context": True}),
        ("diag", {"context": False}),
    ],
)
@pytest.mark.parametrize("colors", [1, 3])
@pytest.mark.parametrize("walk", ["auto", "pytorch"])
def test_fused_recurrence_values_and_every_gradient_equal_the_oracle(layer, opts, colors, walk):
    # auto: the compiled walks (chainrule.native: row_lstm.h, diagonal.h); pytorch: theirs
    torch.manual_seed(colors)
    mod, oracle = layer_and_oracle(layer, colors, **opts)
    mod.double()
    randomize(mod, seed=11, scale=0.8)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64, requires_grad=True)  # batch 2, 5 x 4
    ctx = None
    if layer == "diag" and opts["context"]:
        ctx = torch.randn(2, colors, 5, 4, dtype=torch.float64, requires_grad=True)
    names, params = zip(*mod.named_parameters(), strict=True)
    inputs = [x, *([ctx] if ctx is not None else []), *params]
    labels = ["x", *(["context"] if ctx is not None else []), *names]
    with native.disabled() if walk == "pytorch" else contextlib.nullcontext():
        fast = mod(x, ctx) if mod.takes_context else mod(x)
        assert_same_values_and_gradients(fast, oracle(x, ctx), inputs, labels)


@pytest.mark.parametrize("units", [16, 7])  # 16: the kernel's compiled size (the papers')
def test_compiled_diagonal_walk_equals_the_oracle_at_the_paper_width(units):
    from chainrule.models.layers import _diagonal_kernel

    assert _diagonal_kernel(torch.zeros(1)) is not None, native.why_not("diagonal")
    mod, oracle = layer_and_oracle("diag", 1, fin=5, units=units)
    mod.double()
    randomize(mod, seed=4, scale=0.5)
    x = torch.randn(3, 5, 6, 5, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(3, 1, 6, 5, dtype=torch.float64)
    assert_same_values_and_gradients(mod(x, ctx), oracle(x, ctx), [x, *mod.parameters()])


def assert_same_values_and_gradients(fast, ref, inputs, labels=None):
    """``fast`` equals ``ref`` to 1e-10, and so do the gradients of a random projection of
    each with respect to every input (each of them exercised); ``labels`` name the inputs in a
    failure's message."""
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)
    v = torch.randn_like(fast)
    gf = torch.autograd.grad((fast * v).sum(), inputs)
    gr = torch.autograd.grad((ref * v).sum(), inputs)
    for label, a, b in zip(
        labels or [f"input {i}" for i in range(len(inputs))], gf, gr, strict=True
    ):
        assert a.abs().max() > 0 and b.abs().max() > 0, label  # every gradient is exercised
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m, lab=label: f"{lab}: {m}")


def test_compiled_row_lstm_equals_the_oracle_on_a_strided_input():
    # the compiled rows at the paper's width (16 units), on an input that is not contiguous (a
    # permuted view, as the layers' outputs are)
    from chainrule.models.layers import _row_lstm_kernel

    assert _row_lstm_kernel(torch.zeros(1)) is not None, native.why_not("row_lstm")
    mod, oracle = layer_and_oracle("row", 1, fin=5, units=16)
    mod.double()
    randomize(mod, seed=6, scale=0.5)
    base = torch.randn(2, 7, 6, 5, dtype=torch.float64)  # (B, H, W, F) in memory
    x = base.permute(0, 3, 1, 2).requires_grad_()  # (2, 5, 7, 6), not contiguous
    assert not x.is_contiguous()
    assert_same_values_and_gradients(mod(x), oracle(x), [x, *mod.parameters()])


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_evaluation_in_chunks_equals_the_whole_batch(name):
    # without gradients a batch runs in chunks (eval_chunk_bytes); with them, whole
    torch.manual_seed(0)
    model = build(name, (1, 5, 4), 2, hidden=4, layers=2).double()
    randomize(model, seed=3, scale=0.5)
    x = (torch.rand(7, 1, 5, 4) < 0.4).double()
    with torch.no_grad():
        whole = model.log_prob(x)
    calls = []
    inner = model._params
    model._params = lambda t: calls.append(len(t)) or inner(t)
    model.eval_chunk_bytes = 3 * 5 * 4 * model.buffer_width * 4 * 8  # three images a chunk
    assert model.eval_chunk(x) == 3
    with torch.no_grad():
        chunked = model.log_prob(x)
    assert calls == [3, 3, 1]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    calls.clear()
    model.log_prob(x).sum().backward()  # training: one pass over the whole batch
    assert calls == [7]
    assert build("pixelcnn", (1, 5, 4), 2, hidden=4, layers=2).eval_chunk(x) == 7


@pytest.mark.parametrize("walk", ["auto", "pytorch"])
def test_fused_recurrences_pass_gradcheck(walk):
    from chainrule.models.layers import (
        _DiagonalBiLSTMRecurrence,
        _RowLSTMRecurrence,
        diagonal_plan,
    )

    g = torch.Generator().manual_seed(5)
    b, f, h, w, u = 2, 3, 3, 4, 2

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    args = (rand(b, f, h, w), rand(4 * u, f, 3), rand(4 * u), rand(4 * u, u, 3))
    plan = diagonal_plan(h, w, torch.device("cpu"))
    gd, wd = rand(2, h * w, b, 4 * u), rand(2, 2, u, 4 * u)
    with native.disabled() if walk == "pytorch" else contextlib.nullcontext():
        assert torch.autograd.gradcheck(_RowLSTMRecurrence.apply, args)
        assert torch.autograd.gradcheck(
            lambda a, m: _DiagonalBiLSTMRecurrence.apply(a, m, plan), (gd, wd)
        )


@pytest.mark.parametrize(
    "name,opts,shape",
    [
        ("row-lstm", {}, (1, 5, 4)),
        ("row-lstm", {"kernel": 5}, (3, 5, 4)),
        ("diagonal-bilstm", {}, (1, 5, 4)),
        ("diagonal-bilstm", {}, (3, 5, 4)),
        ("diagonal-bilstm", {"full_context": False}, (3, 5, 4)),
    ],
)
def test_fast_model_training_gradients_equal_the_oracle_model(name, opts, shape):
    levels = 4
    fast = build(name, shape, levels, **opts)
    ref = with_oracle_layers(fast)
    x = torch.randint(0, levels, (2, *shape), generator=torch.Generator().manual_seed(2)).double()
    lf = -fast.training_log_prob(x).sum()
    lr = -ref.training_log_prob(x).sum()
    torch.testing.assert_close(lf, lr, rtol=0, atol=1e-10)
    gf = torch.autograd.grad(lf, list(fast.parameters()))
    gr = torch.autograd.grad(lr, list(ref.parameters()))
    for (n, _), a, b in zip(fast.named_parameters(), gf, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m, n=n: f"{n}: {m}")


def test_recurrent_layer_state_dict_layout_is_unchanged():
    """Checkpoints store these names and shapes: the fast paths must not change them."""
    row = RowLSTMLayer(6, 4, 3, kernel=5)
    assert {k: tuple(v.shape) for k, v in row.state_dict().items()} == {
        "input_to_state.weight": (16, 6, 1, 5),
        "input_to_state.bias": (16,),
        "state_to_state": (16, 4, 5),
    }
    diag = DiagonalBiLSTMLayer(6, 4, 3, context_ch=3)
    assert {k: tuple(v.shape) for k, v in diag.state_dict().items()} == {
        "input_to_state.weight": (32, 6, 1, 1),
        "input_to_state.bias": (32,),
        "context_to_state": (16, 3),
        "state_to_state": (2, 2, 4, 16),
    }


# ---------------------------------------------------------------------- causality
CAUSAL_CASES = [((1, 5, 5), 2), ((1, 5, 5), 4), ((3, 5, 5), 2), ((3, 5, 5), 3)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,levels", CAUSAL_CASES)
def test_causality_by_jacobian(name, shape, levels):
    model = build(name, shape, levels, hidden=6)  # wide enough that ReLUs leave paths open
    step = step_index(shape)
    d = math.prod(shape)
    # eight images at once: outputs are summed over the batch, so the Jacobian holds each
    # image's own derivatives (batch independence); ReLUs switch off different paths in each
    x = torch.randint(0, levels, (8, *shape), generator=torch.Generator().manual_seed(1)).double()

    def f(v):  # the head parameters (all K logits, and a nonlinear mix) of every dimension
        p = model._params(v).reshape(8, d, -1)
        return (p.sum(2) + p[..., 0] ** 2).sum(0)

    jac = torch.autograd.functional.jacobian(f, x).reshape(d, 8, d).abs().amax(1)  # (out, in)
    later_or_self = step.view(1, -1) >= step.view(-1, 1)
    assert jac[later_or_self].max().item() == 0.0, "a conditional depends on a later dimension"
    earlier = ~later_or_self
    first = step == 0
    depends = ((jac.abs() > 0) & earlier).any(1)
    assert depends[~first].all(), "some conditional depends on no earlier dimension"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,levels", CAUSAL_CASES)
def test_causality_by_perturbation(name, shape, levels):
    model = build(name, shape, levels, seed=1, hidden=6)
    step = step_index(shape)
    d = math.prod(shape)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, levels, (8, *shape), generator=g).double()
    with torch.no_grad():
        base = model._params(x).reshape(8, d, -1)
        changed_by_earlier = torch.zeros(d, dtype=torch.bool)
        for j in range(d):  # perturb dimension j (flat (C, H, W) index)
            xp = x.clone()
            xp.view(8, -1)[:, j] = (xp.view(8, -1)[:, j] + 1 + j % (levels - 1)) % levels
            diff = (model._params(xp).reshape(8, d, -1) - base).abs().amax((0, 2))  # (D,)
            not_after = step <= step[j]  # dimensions at or before j in the ordering
            assert diff[not_after].max().item() < 1e-12, f"dimension {j} leaks into an earlier one"
            changed_by_earlier |= (diff > 1e-9) & (step > step[j])
    assert changed_by_earlier[step > 0].all(), "some conditional ignores every earlier dimension"


@pytest.mark.parametrize(
    "name,opts",
    [("row-lstm", {}), ("diagonal-bilstm", {}), ("diagonal-bilstm", {"full_context": False})],
)
def test_reference_impl_is_causal_too(name, opts):
    shape, levels = (3, 3, 4), 3
    model = with_oracle_layers(build(name, shape, levels, **opts))
    step = step_index(shape)
    d = math.prod(shape)
    x = torch.randint(0, levels, (1, *shape)).double()
    jac = torch.autograd.functional.jacobian(
        lambda v: model._params(v).reshape(d, -1).sum(1), x
    ).reshape(d, d)
    assert jac[step.view(1, -1) >= step.view(-1, 1)].abs().max().item() == 0.0


# ---------------------------------------------------------------------- normalization, sampler
def all_states(shape, levels):
    d = math.prod(shape)
    grid = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float64)
    return grid.reshape(-1, *shape)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "shape,levels,impl",
    [((1, 3, 3), 2, "auto"), ((3, 1, 2), 3, "fast"), ((3, 1, 2), 3, "reference")],  # + old names
)
def test_normalization_over_all_states(name, shape, levels, impl):
    model = build(name, shape, levels, impl=impl)
    lp = model.log_prob(all_states(shape, levels))
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    assert lp.std() > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_rgb_sampler_agrees_with_density(name):
    # 27 states, 60k draws: the expected total variation of the empirical law is about 0.008
    shape, levels = (3, 1, 1), 3
    model = build(name, shape, levels)
    s = model.sample(60000, generator=torch.Generator().manual_seed(0))
    states = all_states(shape, levels)
    p = model.log_prob(states).exp()
    wts = levels ** torch.arange(math.prod(shape) - 1, -1, -1)
    emp = torch.bincount((s.flatten(1).long() * wts).sum(1), minlength=len(states)).double() / len(
        s
    )
    tv = 0.5 * (emp[(states.flatten(1).long() * wts).sum(1)] - p).abs().sum().item()
    assert tv < 0.02


@pytest.mark.parametrize("name", MODELS)
def test_sampler_is_the_inverse_cdf_of_the_pre_drawn_uniforms(name):
    """The sampler (which crops the rows below the current one) equals a plain loop over the
    raster steps on the full image that uses the same uniforms: bit for bit."""
    from chainrule.models.base import draw_uniforms

    shape, levels, n = (3, 3, 2), 3, 5
    model = build(name, shape, levels)
    got = model.sample(n, generator=torch.Generator().manual_seed(9))
    u = draw_uniforms(n, (model.dim,), torch.Generator().manual_seed(9))
    x = torch.zeros(n, *shape)
    c, h, w = shape
    for r, col, k in itertools.product(range(h), range(w), range(c)):
        params = model._params(x)[:, k, r, col]
        x[:, k, r, col] = model.head.sample(params, u[:, (r * w + col) * c + k])
    assert torch.equal(got, x)


@pytest.mark.parametrize("name", MODELS)
def test_completion_keeps_the_given_top_half(name):
    model = build(name, (1, 4, 4), 2)
    given = torch.randint(0, 2, (3, 1, 4, 4)).double()
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    s = model.sample(3, given=given, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s[:, :, :2], given[:, :, :2])


# ---------------------------------------------------------------------- options, presets
@pytest.mark.parametrize("name", MODELS)
def test_presets_build_and_default_is_small(name):
    for preset in PRESETS[name]:
        opts = preset_options(name, preset)
        model = chainrule.build(name, (1, 28, 28), 2, **opts)
        assert model.config.hidden == opts["hidden"] and model.config.layers == opts["layers"]
    assert chainrule.build(name).num_parameters() < 20000
    paper = chainrule.build(name, (1, 28, 28), 2, **preset_options(name, "paper-mnist"))
    assert len(paper.blocks) == (12 if name == "pixelcnn" else 7)


@pytest.mark.parametrize("name", MODELS)
def test_preset_option(name):
    paper = PRESETS[name]["paper-mnist"]
    m = chainrule.build(name, (1, 8, 8), 2, preset="paper-mnist")
    assert (m.config.hidden, m.config.layers) == (paper["hidden"], paper["layers"])
    m = chainrule.build(name, (1, 8, 8), 2, preset="paper-mnist", layers=3)
    assert (m.config.hidden, m.config.layers) == (paper["hidden"], 3)
    with pytest.raises(ValueError, match="unknown preset"):
        chainrule.build(name, (1, 8, 8), 2, preset="nope")


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        preset_options("row-lstm", "huge")
    with pytest.raises(ValueError, match="no presets"):
        preset_options("fvsbn", "paper-mnist")


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"hidden": 0}, "hidden must be a positive int"),
        ({"kernel": 4}, "kernel must be odd"),
        ({"first_kernel": 2}, "first_kernel must be odd"),
        ({"impl": "cuda"}, "impl must be one of"),
        ({"out_hidden": -1}, "out_hidden"),
        ({"full_context": 1}, "full_context"),
        ({"hidden": 2}, "hidden must be >= the number of channels"),
    ],
)
@pytest.mark.parametrize("name", MODELS)
def test_bad_options_are_clear(name, opts, match):
    with pytest.raises(ValueError, match=match):
        chainrule.build(name, (3, 4, 4), 2, **opts)


@pytest.mark.parametrize("name", MODELS)
def test_features_and_training_step(name):
    model = build(name, (1, 4, 4), 2)
    x = torch.randint(0, 2, (4, 1, 4, 4)).double()
    f = model.features(x)
    assert f.shape[0] == 4 and f.dim() == 2 and torch.isfinite(f).all()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = -model.log_prob(x).mean().item()
    for _ in range(8):
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert -model.log_prob(x).mean().item() < before  # it learns the batch


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(name, tmp_path):
    model = build(name, (3, 3, 2), 4, preset="cpu-small", hidden=3)
    x = torch.randint(0, 4, (3, 3, 3, 2)).double()
    chainrule.save(model, tmp_path / "run")
    loaded = chainrule.load(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_keeps_the_head_in_float32(name):
    model = chainrule.build(name, (3, 4, 4), 4).float()
    x = torch.randint(0, 4, (3, 3, 4, 4)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = model.log_prob(x)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, model.log_prob(x), rtol=0.02, atol=0.5)
