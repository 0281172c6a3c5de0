"""The mixture of separately trained models (``chainrule mix``) and the named orderings.

Exactness by enumeration (float64, tiny images): normalization, the marginal of a prefix mask,
sampler against density, completion against p(rest | given); the sampler against the naive
oracle; the checkpoint and the command as a user runs them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import chainrule
from chainrule import sampling
from chainrule.models.mixture import Mixture, from_models
from chainrule.orderings import resolve_ordering

from .conftest import run_cli, tiny
from .oracles import all_states, empirical, model_total_variation, tv_threshold

SHAPE = (1, 2, 3)


def members(levels=2, shape=SHAPE):
    """Three different models on three orderings (random weights): NADE raster, NADE columns,
    FVSBN reverse-raster; and a PixelCNN (raster) where the levels allow it."""
    torch.manual_seed(0)
    ms = [
        tiny("nade", shape, levels, ordering="raster"),
        tiny("nade", shape, levels, ordering="columns"),
        tiny("fvsbn", shape, levels, ordering="reverse-raster"),
    ]
    if levels == 2:
        ms.append(tiny("pixelcnn", shape, levels))
    return ms


@pytest.mark.parametrize("levels", [2, 3])
def test_the_mixture_is_normalized_and_the_mean_of_its_members(levels):
    ms = members(levels)
    mix = from_models(ms)
    x = all_states(SHAPE, levels)
    lp = mix.log_prob(x)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    # the mean of the members' probabilities, state by state (probabilities, not logs)
    mean = sum(m.log_prob(x).exp() for m in ms) / len(ms)
    torch.testing.assert_close(lp.exp(), mean, rtol=1e-12, atol=0)
    # and it differs from every member (the mixture is not one of them)
    assert all((lp - m.log_prob(x)).abs().max() > 1e-3 for m in ms)


def test_sampler_agrees_with_density_and_equals_the_naive_oracle():
    mix = from_models(members())
    n = 20000
    s = mix.sample(n, generator=torch.Generator().manual_seed(0))
    assert model_total_variation(s, mix) < tv_threshold(n, 2**6)
    a = mix.sample(64, generator=torch.Generator().manual_seed(5))
    b = sampling.naive_sample(mix, 64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def prefix_mask():
    """The first pixel alone: the one mask that is a prefix of raster, columns (both start at
    the top left) and not of reverse-raster; so two members are used for the exact cases."""
    m = torch.zeros(SHAPE, dtype=torch.bool)
    m[0, 0, 0] = True
    return m


def test_marginal_of_a_prefix_mask_is_the_sum_over_the_hidden_values():
    ms = members()
    mix = from_models([ms[0], ms[1], ms[3]])  # raster, columns, raster (PixelCNN)
    mask = prefix_mask()
    x = all_states(SHAPE, 2)
    lp = mix.log_prob(x)
    for value in (0.0, 1.0):
        keep = x[:, 0, 0, 0] == value
        expected = torch.logsumexp(lp[keep], 0)
        got = mix.log_prob_observed(x[keep][:1], mask)
        assert abs(got.item() - expected.item()) < 1e-10
    # the top row is a prefix of raster but not of columns: refused, not approximated
    top = torch.zeros(SHAPE, dtype=torch.bool)
    top[0, 0, :] = True
    with pytest.raises(ValueError, match="every member's ordering"):
        mix.log_prob_observed(x[:1], top)


def test_completion_of_a_prefix_of_every_member_is_the_exact_conditional():
    ms = members()
    mix = from_models([ms[0], ms[1], ms[3]])
    mask = prefix_mask()
    given = torch.ones(1, *SHAPE)
    n = 20000
    s = mix.sample(n, given=given, mask=mask, generator=torch.Generator().manual_seed(2))
    assert (s[:, 0, 0, 0] == 1).all()
    x = all_states(SHAPE, 2)
    lp = mix.log_prob(x)
    keep = x[:, 0, 0, 0] == 1
    p_cond = torch.where(keep, lp, torch.full_like(lp, -torch.inf)).softmax(0)
    tv = 0.5 * (empirical(s, 2) - p_cond).abs().sum().item()
    assert tv < tv_threshold(n, int(keep.sum()))
    # the member weights p(k | given) matter: picking members uniformly is measurably wrong
    # (the same test with uniform weights fails on these random members)
    uniform = (
        sum(
            torch.where(keep, m.log_prob(x), torch.full_like(lp, -torch.inf)).softmax(0)
            for m in (ms[0], ms[1], ms[3])
        )
        / 3
    )
    assert 0.5 * (uniform - p_cond).abs().sum().item() > tv_threshold(n, int(keep.sum()))
    a = mix.sample(32, given=given, mask=mask, generator=torch.Generator().manual_seed(3))
    b = sampling.naive_sample(
        mix, 32, given.expand(32, *SHAPE), mask.expand(32, *SHAPE), torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)


def test_completion_that_is_not_a_prefix_of_every_member_warns_and_keeps_given():
    mix = from_models(members())
    mask = prefix_mask()  # not a prefix of reverse-raster
    with pytest.warns(UserWarning, match="not a prefix of every member"):
        s = mix.sample(5, given=torch.ones(1, *SHAPE), mask=mask)
    assert (s[:, 0, 0, 0] == 1).all()


def test_no_conditionals_features_side_by_side_and_round_trip(tmp_path):
    ms = members()
    mix = from_models(ms)
    x = all_states(SHAPE, 2)[:7]
    assert not mix.has_conditionals
    with pytest.raises(ValueError, match="not defined"):
        mix.conditional_log_probs(x)
    f = mix.features(x)
    assert f.shape == (7, sum(m.features(x).shape[1] for m in ms))
    chainrule.save(mix, tmp_path / "mix")
    back = chainrule.load(tmp_path / "mix").double()
    assert isinstance(back, Mixture) and back.num_members == 4
    torch.testing.assert_close(back.log_prob(x), mix.log_prob(x), rtol=0, atol=1e-6)
    # a mixture of mixtures is flattened
    assert from_models([mix, ms[0]]).num_members == 5


def test_members_must_agree_and_have_one_ordering():
    with pytest.raises(ValueError, match="one kind"):
        from_models([tiny("nade", (1, 2, 3)), tiny("nade", (1, 3, 2))])
    with pytest.raises(ValueError, match="one kind"):
        from_models([tiny("nade", SHAPE, 2), tiny("nade", SHAPE, 3)])
    with pytest.raises(ValueError, match="ensemble already"):
        from_models([tiny("nade", SHAPE, ensemble=2), tiny("nade", SHAPE)])
    with pytest.raises(ValueError, match="one or more members"):
        chainrule.models.registry.build("mixture", SHAPE, members=[])
    assert "mixture" not in chainrule.available_models()  # made by `chainrule mix`, not trained


def test_named_orderings():
    """Written out by hand for a 2 x 3 image (flat index = 3 * row + column) and for two
    channels of a 1 x 2 image (flat index = 2 * channel + column): channels stay innermost."""
    expect = {
        "raster": [0, 1, 2, 3, 4, 5],
        "columns": [0, 3, 1, 4, 2, 5],
        "reverse-raster": [5, 4, 3, 2, 1, 0],
        "reverse-columns": [5, 2, 4, 1, 3, 0],
    }
    for name, order in expect.items():
        assert resolve_ordering(name, (1, 2, 3)).tolist() == order
    rgb = {"raster": [0, 2, 1, 3], "reverse-raster": [1, 3, 0, 2], "columns": [0, 2, 1, 3]}
    for name, order in rgb.items():
        assert resolve_ordering(name, (2, 1, 2)).tolist() == order
    with pytest.raises(ValueError, match="columns"):
        resolve_ordering("diagonal", (1, 2, 3))


# ---------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two NADEs (raster, columns) trained for one epoch on 300 digits."""
    from chainrule.cli import main

    root = tmp_path_factory.mktemp("mix")
    out = {}
    for ordering in ("raster", "columns"):
        out[ordering] = root / ordering
        argv = ["train", "--model", "nade", "--hidden", "8", "--epochs", "1", "--max-train", "300"]
        assert main([*argv, "--ordering", ordering, "--out", str(out[ordering]), "--quiet"]) == 0
    return out


def test_mix_writes_a_checkpoint_every_command_takes(runs, capsys, tmp_path):
    mixed = tmp_path / "mixed"
    code, out, err = run_cli(
        capsys, "mix", runs["raster"], runs["columns"], "--out", mixed, "--quiet"
    )
    assert code == 0, err
    assert "mixture of 2 models" in out and (mixed / "model.safetensors").is_file()
    config = json.loads((mixed / "config.json").read_text())
    assert config["data"] == "digits" and len(config["members"]) == 2
    nlls = {}
    for name, ck in (("mix", mixed), *runs.items()):
        code, out, err = run_cli(capsys, "eval", "--checkpoint", ck, "--quiet")
        assert code == 0, err
        nlls[name] = float(out.split("NLL ")[1].split()[0])
    # log of a mean of probabilities: at most log 2 worse than the better member, and here better
    # than the mean of the members' NLLs (Jensen: mean of log <= log of mean, image by image)
    assert nlls["mix"] <= min(nlls["raster"], nlls["columns"]) + math.log(2)
    assert nlls["mix"] <= (nlls["raster"] + nlls["columns"]) / 2
    for argv in (
        ["sample", "--n", "4"],
        ["complete", "--n", "2"],
        ["score", "--mask", "right-half"],  # not a prefix of the columns member: refused
        ["features"],
    ):
        code, out, err = run_cli(capsys, *argv, "--checkpoint", mixed, "--quiet")
        assert "Traceback" not in err
        assert code == (1 if "--mask" in argv else 0), err


def test_mix_mistakes_are_one_line(runs, capsys, tmp_path):
    code, _, err = run_cli(capsys, "mix", runs["raster"], "--out", tmp_path / "m")
    assert code == 1 and "two or more" in err
    code, _, err = run_cli(
        capsys, "mix", runs["raster"], tmp_path / "nowhere", "--out", tmp_path / "m"
    )
    assert code == 1 and "no checkpoint" in err and "Traceback" not in err
    # a model for other images
    other = tmp_path / "other"
    chainrule.save(chainrule.build("nade", (1, 4, 4), 2, hidden=3), other)
    code, _, err = run_cli(capsys, "mix", runs["raster"], other, "--out", tmp_path / "m")
    assert code == 1 and "one kind" in err and not (tmp_path / "m").exists()
    # an existing run is never overwritten without --overwrite
    before = (runs["raster"] / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "mix", runs["raster"], runs["columns"], "--out", runs["raster"])
    assert code == 1 and "already holds" in err
    assert (runs["raster"] / "model.safetensors").read_bytes() == before


def test_members_of_every_family_mix():
    """MADE (one mask), DeepNADE, Row LSTM and Diagonal BiLSTM members (their own decoders, a
    single ordering each): normalized, and the sampler equals the naive oracle."""
    torch.manual_seed(1)
    ms = [
        tiny("made", SHAPE, masks=1, ensemble=1),
        tiny("deep-nade", SHAPE),
        tiny("row-lstm", SHAPE),
        tiny("diagonal-bilstm", SHAPE),
    ]
    mix = from_models(ms)
    lp = mix.log_prob(all_states(SHAPE, 2))
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    a = mix.sample(40, generator=torch.Generator().manual_seed(1))
    b = sampling.naive_sample(mix, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and len(torch.unique(a.flatten(1), dim=0)) > 1
