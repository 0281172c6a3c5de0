"""The PixelRNN models' incremental decoder (the per-layer caches of models/layers.py, driven by
pixelrnn.PixelDecoder) against the naive sampler, its oracle."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.sampling import teacher_forced_params

from .conftest import randomize
from .oracles.pixelrnn import with_oracle_layers


def cached_params(m, x):
    """Head parameters of every conditional from the decoder's caches, ``(B, C, H, W, P)``."""
    c, h, w = m.event_shape
    p = teacher_forced_params(m, x)  # (B, D, P): raster steps, channels innermost
    return p.view(x.shape[0], h, w, c, -1).permute(0, 3, 1, 2, 4)


MODELS = ["pixelcnn", "row-lstm", "diagonal-bilstm"]
#: (event_shape, levels): binary and RGB K-level, non-square so rows and columns cannot mix up
SHAPES = [((1, 5, 4), 2), ((3, 4, 3), 4)]


def model(name, shape, levels, dtype=torch.float64, **options):
    opts = {"hidden": 6, "layers": 2, **options}
    m = chainrule.build(name, event_shape=shape, levels=levels, **opts).to(dtype)
    return randomize(m, scale=0.6)


def draw(m, n, seed, method, **kw):
    return m.sample(n, generator=torch.Generator().manual_seed(seed), method=method, **kw)


def assert_varied(x, levels):
    """Guard against vacuous equality: the images differ and use more than one level."""
    assert len(torch.unique(x.flatten(1), dim=0)) > 1
    assert len(torch.unique(x)) > 1 if levels == 2 else len(torch.unique(x)) > 2


@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_cached_column_equals_full_pass(name, shape, levels):
    """The cached per-pixel column gives every conditional's parameters of a full pass."""
    m = model(name, shape, levels)
    x = torch.randint(0, levels, (3, *shape)).double()
    ref = m._params(x)
    got = cached_params(m, x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "name,options",
    [
        ("pixelcnn", {"kernel": 5, "first_kernel": 3, "layers": 3}),
        ("row-lstm", {"kernel": 5}),
        ("diagonal-bilstm", {"layers": 3, "out_hidden": 5, "oracle": True}),
        ("diagonal-bilstm", {"full_context": False}),
    ],  # the paper's layer as written
)
def test_cached_column_other_kernels(name, options):
    options = dict(options)
    oracle = options.pop("oracle", False)  # the full pass through the eager oracle layers
    m = model(name, (3, 4, 5), 3, **options)
    x = torch.randint(0, 3, (2, 3, 4, 5)).double()
    full = (with_oracle_layers(m) if oracle else m)._params(x)
    torch.testing.assert_close(cached_params(m, x), full, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_cached_equals_naive(name, shape, levels):
    m = model(name, shape, levels)
    a = draw(m, 40, 1, "naive")
    b = draw(m, 40, 1, "cached")
    assert torch.equal(a, b)
    assert_varied(a, levels)
    assert torch.equal(m.sample(40, generator=torch.Generator().manual_seed(1)), b)  # the default


def _masks(shape, n):
    c, h, w = shape
    top = torch.zeros(shape, dtype=torch.bool)
    top[:, : h // 2] = True
    top[:, h // 2, :1] = True  # a prefix: top rows and the first pixel of the next
    box = torch.ones(shape, dtype=torch.bool)
    box[:, 1:3, 1:3] = False  # not a prefix
    first_channel = torch.zeros(shape, dtype=torch.bool)
    first_channel[0] = True  # R given everywhere, later channels drawn (not a prefix if C > 1)
    last_channels = torch.zeros(shape, dtype=torch.bool)
    last_channels[1:] = True  # G, B given, R drawn: the extra pass that updates the caches
    per_image = torch.rand(n, *shape, generator=torch.Generator().manual_seed(3)) < 0.4
    return {
        "prefix": (top, False),
        "box": (box, True),
        "first-channel": (first_channel, c > 1),
        "last-channels": (last_channels, True),
        "per-image": (per_image, True),
    }


@pytest.mark.parametrize("case", ["prefix", "box", "first-channel", "last-channels", "per-image"])
@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_cached_equals_naive_completion(name, shape, levels, case):
    n = 30
    mask, warns = _masks(shape, n)[case]
    if case in ("first-channel", "last-channels") and shape[0] == 1:
        pytest.skip("needs colour")
    m = model(name, shape, levels)
    given = torch.randint(0, levels, (n, *shape)).double()
    out = {}
    for method in ("naive", "cached"):
        if warns:
            with pytest.warns(UserWarning, match="not a prefix"):
                out[method] = draw(m, n, 2, method, given=given, mask=mask)
        else:
            out[method] = draw(m, n, 2, method, given=given, mask=mask)
    assert torch.equal(out["naive"], out["cached"])
    full = torch.broadcast_to(mask, given.shape)
    assert torch.equal(out["cached"][full], given[full])  # given values unchanged
    assert_varied(out["cached"][:, ~mask] if mask.dim() == 3 else out["cached"], levels)


@pytest.mark.parametrize("name", MODELS)
def test_cached_float32_probabilities(name):
    """In float32 the two paths sum in different orders: parameters agree to rounding."""
    m = model(name, (3, 4, 3), 4, dtype=torch.float32)
    x = torch.randint(0, 4, (3, 3, 4, 3)).float()
    got = cached_params(m, x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, m._params(x), rtol=1e-4, atol=1e-4)
    assert draw(m, 4, 0, "cached").dtype == torch.float32


def test_cached_sampler_matches_density():
    """Sampler vs exact density on all 2^6 binary images (TV), through the cached path."""
    m = model("diagonal-bilstm", (1, 3, 2), 2, hidden=4)
    grid = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 6).view(-1, 1, 3, 2)
    p = m.log_prob(grid).exp()
    x = draw(m, 20000, 5, "cached").view(-1, 6)
    idx = (x * (2 ** torch.arange(5, -1, -1.0))).sum(1).long()
    emp = torch.bincount(idx, minlength=64).double() / len(idx)
    assert 0.5 * (emp - p).abs().sum() < 0.03


def test_bad_method():
    m = model("pixelcnn", (1, 2, 2), 2)
    with pytest.raises(ValueError, match="method must be 'cached' or 'naive'"):
        m.sample(2, method="fast")


def test_cuda_graph_needs_cuda_and_no_completion():
    m = model("pixelcnn", (1, 2, 2), 2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a model on a CUDA device"):
            m.sample(2, method="cached", cuda_graph=True)
    with pytest.raises(ValueError, match="unexpected sample options"):
        m.sample(2, method="cached", graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MODELS)
def test_cuda_graph_equals_eager(name):
    m = model(name, (3, 4, 3), 4).cuda()
    eager = draw(m, 8, 0, "cached")
    assert torch.equal(draw(m, 8, 0, "cached", cuda_graph=True), eager)  # records
    assert torch.equal(draw(m, 8, 0, "cached", cuda_graph=True), eager)  # replays
    assert not torch.equal(draw(m, 8, 1, "cached", cuda_graph=True), eager)  # new numbers
