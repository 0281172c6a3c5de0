"""Completion: occlusion masks, exactness for prefix masks (enumeration), the documented
behaviour for other masks, NADE's given-first ordering, the grid and the CLI command."""

from __future__ import annotations

import warnings

import pytest
import torch

import chainrule
from chainrule.completion import (
    complete,
    completion_grid,
    given_first_ordering,
    is_prefix,
    nade_given_first,
    occlusion_mask,
)
from chainrule.orderings import raster_order

from .conftest import randomize, tiny
from .oracles import all_states, tv_threshold

MODELS = ["pixelcnn", "row-lstm", "diagonal-bilstm", "nade"]


def all_images(shape, levels=2):
    d = shape[0] * shape[1] * shape[2]
    vals = torch.arange(levels, dtype=torch.float64)
    return torch.cartesian_prod(*[vals] * d).view(-1, *shape)


def completion_tv(m, given, mask, target_logw, n=20000, seed=0, **kw):
    """TV between the empirical distribution of ``n`` completions and exp-normalized
    ``target_logw`` over all images that agree with ``given`` on ``mask``."""
    imgs = all_images(m.event_shape, m.levels)
    keep = (imgs[:, mask] == given[mask]).all(1)
    imgs, logw = imgs[keep], target_logw(imgs[keep])
    p = torch.softmax(logw, 0)
    x = m.sample(n, given=given, mask=mask, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(x[:, mask], given[mask].expand(n, -1))  # given values unchanged
    match = (x.flatten(1)[:, None, :] == imgs.flatten(1)[None]).all(-1)  # (n, states)
    assert bool((match.sum(1) == 1).all())
    emp = match.double().mean(0)
    tv = 0.5 * (emp - p).abs().sum().item()
    assert tv < tv_threshold(n, len(imgs)), (tv, tv_threshold(n, len(imgs)))
    return tv, p


# ---------------------------------------------------------------------- masks
def test_occlusion_masks():
    m = occlusion_mask("bottom-half", (2, 5, 4))
    assert m.shape == (2, 5, 4) and m.dtype == torch.bool
    assert m[:, :2].all() and not m[:, 2:].any()
    r = occlusion_mask("right-half", (1, 3, 5))
    assert r[:, :, :2].all() and not r[:, :, 2:].any()
    b = occlusion_mask("box:1,2,3,1", (1, 4, 5))  # x=1, y=2, w=3, h=1
    hidden = torch.zeros(1, 4, 5, dtype=torch.bool)
    hidden[:, 2, 1:4] = True
    assert torch.equal(b, ~hidden)
    order = raster_order((2, 5, 4))
    assert is_prefix(m, order)
    assert not is_prefix(occlusion_mask("right-half", (2, 5, 4)), order)


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("top", "unknown occlusion"),
        ("box:1,2,3", "box:x,y,w,h"),
        ("box:3,0,3,1", "inside"),
        ("box:0,0,0,1", "non-empty"),
    ],
)
def test_occlusion_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        occlusion_mask(spec, (1, 4, 5))


def test_given_first_ordering():
    mask = occlusion_mask("right-half", (2, 2, 2))  # given: column 0 of both rows
    order = given_first_ordering(mask)
    assert sorted(order) == list(range(8))
    # flat (C, H, W) indices of column 0, raster order with channels innermost, then the rest
    assert order == [0, 4, 2, 6, 1, 5, 3, 7]
    assert is_prefix(mask, torch.tensor(order))


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("shape", [(1, 3, 2), (3, 1, 2)])
@pytest.mark.parametrize("name", MODELS)
def test_prefix_completion_is_exact(name, shape):
    """A prefix mask: the completions follow p(rest | given), computed by enumeration."""
    m = randomize(tiny(name, shape, 2), scale=0.5)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask.view(-1)[raster_order(shape)[:3]] = True  # the first 3 dims of the raster order
    given = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0]).view(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prefix: no warning
        tv, p = completion_tv(m, given, mask, m.log_prob)
    assert p.max() < 0.9  # not a near-deterministic target


@pytest.mark.parametrize("name", MODELS)
def test_non_prefix_completion_follows_documented_rule(name):
    """Not a prefix: each free dim is drawn from p(x_i | x_<i) (later given values unseen),
    i.e. the completion follows prod_{free i} p(x_i | x_<i); a warning says so."""
    shape = (1, 2, 3)
    m = randomize(tiny(name, shape, 2), seed=7, scale=0.5)
    mask = occlusion_mask("box:0,0,2,1", shape)  # the first two pixels hidden, the rest given
    given = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0]).view(shape)

    def rule(imgs):
        return m.conditional_log_probs(imgs)[:, ~mask].sum(1)

    with pytest.warns(UserWarning, match="not a prefix"):
        tv, q = completion_tv(m, given, mask, rule)
    imgs = all_images(shape)
    exact = torch.softmax(m.log_prob(imgs[(imgs[:, mask] == given[mask]).all(1)]), 0)
    assert 0.5 * (exact - q).abs().sum() > 0.08  # the rule is not p(rest | given) here


def test_nade_given_first_is_exact():
    """NADE: an ordering that visits the given pixels first makes the completion exact for
    that ordering's model (same weights)."""
    shape = (1, 2, 3)
    m = randomize(tiny("nade", shape, 2), scale=0.5)
    mask = occlusion_mask("right-half", shape)  # given: column 0; not a raster prefix
    given = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]).view(shape)
    g = nade_given_first(m, mask)
    assert torch.equal(g.weight_in, m.weight_in)
    assert not torch.allclose(g.log_prob(all_images(shape)), m.log_prob(all_images(shape)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tv, _ = completion_tv(g, given, mask, g.log_prob)
    with pytest.raises(ValueError, match="needs a 'nade' model"):
        nade_given_first(tiny("fvsbn", shape, 2), mask)


# ---------------------------------------------------------------------- complete / grid
def test_complete_and_grid(tmp_path):
    from PIL import Image

    m = tiny("row-lstm", (3, 4, 3), 4)
    images = torch.randint(0, 4, (2, 3, 4, 3)).double()
    mask = occlusion_mask("bottom-half", (3, 4, 3))
    out = complete(m, images, mask, samples=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 3, 4, 3)
    assert torch.equal(out[:, :, mask], images[:, mask].unsqueeze(1).expand(-1, 3, -1))
    naive = complete(
        m, images, mask, samples=3, generator=torch.Generator().manual_seed(0), method="naive"
    )
    assert torch.equal(out, naive)
    path = completion_grid(images, mask, out, 4, tmp_path / "c.png")
    w, h = Image.open(path).size
    assert w * (2 * 5 + 1) == h * (5 * 4 + 1)  # 2 rows of 5 tiles of 4x3, 1-pixel borders
    with pytest.raises(ValueError, match="samples must be a positive int"):
        complete(m, images, mask, samples=0)


def test_cli_complete(tmp_path, capsys):
    from chainrule.cli import main

    m = chainrule.build("pixelcnn", event_shape=(1, 8, 8), levels=2, hidden=4, layers=1)
    chainrule.save(m, tmp_path / "run")
    png = tmp_path / "c.png"
    args = [
        "complete",
        "--checkpoint",
        str(tmp_path / "run"),
        "--data",
        "digits",
        "--n",
        "2",
        "--samples",
        "2",
        "--out",
        str(png),
    ]
    assert main([*args, "--occlude", "box:2,2,4,4"]) == 0
    assert png.is_file()
    got = capsys.readouterr()
    assert "not exact" in got.out and "not a prefix" in got.err  # a box: not a raster prefix
    assert main([*args, "--occlude", "bottom-half"]) == 0
    assert "exact draws" in capsys.readouterr().out
    assert main([*args, "--occlude", "middle"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown occlusion" in err[0]


def test_checkerboard_and_random_occlusions():
    from chainrule.completion import occlusion_mask

    m = occlusion_mask("checkerboard", (2, 3, 4))
    assert m.shape == (2, 3, 4) and m[0, 0, 0] and not m[0, 0, 1] and not m[0, 1, 0]
    assert int(m[0].sum()) == 6 and torch.equal(m[0], m[1])  # half the pixels, channels alike
    r = occlusion_mask("random:0.25", (1, 4, 5), seed=3)
    assert int((~r).sum()) == 5  # a quarter of 20 pixels hidden
    assert torch.equal(r, occlusion_mask("random:0.25", (1, 4, 5), seed=3))  # seeded
    assert not torch.equal(r, occlusion_mask("random:0.25", (1, 4, 5), seed=4))
    assert torch.equal(occlusion_mask("random:0.25:3", (1, 4, 5), seed=9), r)  # its own seed
    for bad, match in [
        ("random:1.5", "between 0 and 1"),
        ("random:x", "random:FRACTION"),
        ("random:0.01", "at least one"),
        ("random:0.5:1:2", "random:FRACTION"),
    ]:
        with pytest.raises(ValueError, match=match):
            occlusion_mask(bad, (1, 4, 5))


@pytest.mark.parametrize("name", ["made", "deep-nade"])
def test_conditional_log_likelihood_of_a_completion_is_normalized(name):
    """For a checkerboard mask (not a prefix), exp(log p(hidden | visible)) summed over every
    value of the hidden pixels is one, for each visible part."""
    from chainrule.completion import (
        conditional_log_likelihood,
        is_exact_for,
        occlusion_mask,
    )

    model = tiny(name, (1, 2, 3), 2, ensemble=2)
    mask = occlusion_mask("checkerboard", (1, 2, 3))
    assert is_exact_for(model, mask)
    states = all_states((1, 2, 3), 2)
    cond = conditional_log_likelihood(model, states, mask)
    seen = states.flatten(1)[:, mask.flatten()]
    for values in torch.unique(seen, dim=0):
        same = (seen == values).all(1)
        assert abs(torch.logsumexp(cond[same], 0).item()) < 1e-10
    with pytest.raises(ValueError, match="order-agnostic"):
        conditional_log_likelihood(tiny("nade", (1, 2, 3), 2), states, mask)
    assert not is_exact_for(tiny("nade", (1, 2, 3), 2), mask)
    assert is_exact_for(tiny("nade", (1, 2, 3), 2), occlusion_mask("bottom-half", (1, 2, 3)))
