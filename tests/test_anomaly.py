"""Anomaly detection: metric helpers on hand-computed cases, scores against their definitions,
OOD sets, the threshold, and one-call detection with its errors."""

from __future__ import annotations

import io
import math
import zlib

import numpy as np
import pytest
import torch

import chainrule
from chainrule.anomaly import (
    anomaly_scores,
    compression_bits,
    detect,
    load_ood,
    pixel_nll,
    png_encode,
)
from chainrule.data import Splits, load_dataset
from chainrule.evaluate import (
    detection_metrics,
    flag_rate,
    fpr_at_tpr,
    threshold_for_false_alarm_rate,
)

from .conftest import tiny


# ---------------------------------------------------------------------- metrics, by hand
def test_perfect_separation():
    m = detection_metrics([0.0, 1.0, 2.0], [3.0, 4.0])
    assert m["auroc"] == 1.0 and m["aupr"] == 1.0 and m["aupr_in"] == 1.0
    assert m["fpr_at_95_tpr"] == 0.0
    assert (m["n_in"], m["n_out"]) == (3, 2)


def test_reversed_scores():
    m = detection_metrics([3.0, 4.0], [0.0, 1.0, 2.0])
    assert m["auroc"] == 0.0
    assert m["fpr_at_95_tpr"] == 1.0  # every in-distribution image is flagged before 95% of OOD
    # ranked 4, 3 (in) then 2, 1, 0 (OOD): each OOD image adds recall 1/3 at precision 1/3, 2/4, 3/5
    assert m["aupr"] == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3)


def test_all_ties_are_chance():
    m = detection_metrics([5.0] * 4, [5.0] * 6)
    assert m["auroc"] == 0.5
    assert m["aupr"] == pytest.approx(0.6)  # the base rate: 6 of 10 are OOD
    assert m["fpr_at_95_tpr"] == 1.0


def test_partial_overlap_with_a_tie_by_hand():
    # pairs (out, in): 4 beats all 4; 2 beats 0 and 1, ties 2 (half), loses to 3 -> 6.5 / 8
    m = detection_metrics([0.0, 1.0, 2.0, 3.0], [2.0, 4.0])
    assert m["auroc"] == pytest.approx(6.5 / 8)
    # ranked: 4 (out) | 3 (in) | 2, 2 (in, out tied) -> AP = 0.5 * 1 + 0.5 * (2 / 4)
    assert m["aupr"] == pytest.approx(0.75)
    # 95% TPR needs the threshold at 2: in-distribution 2 and 3 flagged -> FPR 2 / 4
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5)
    assert fpr_at_tpr([0.0, 1.0, 2.0, 3.0], [2.0, 4.0], 0.5) == pytest.approx(0.0)


def test_auroc_is_the_probability_of_ranking_a_pair_right():
    rng = np.random.default_rng(0)
    s_in = rng.integers(0, 20, 60).astype(float)  # many ties
    s_out = rng.integers(5, 25, 40).astype(float)
    greater = (s_out[:, None] > s_in[None, :]).mean()
    equal = (s_out[:, None] == s_in[None, :]).mean()
    assert detection_metrics(s_in, s_out)["auroc"] == pytest.approx(greater + 0.5 * equal)


def test_metrics_refuse_empty_or_nan():
    with pytest.raises(ValueError, match="0 out-of-distribution"):
        detection_metrics([1.0, 2.0], [])
    with pytest.raises(ValueError, match="finite"):
        detection_metrics([1.0, float("nan")], [2.0])


def test_threshold_on_held_out_data():
    s = np.arange(1, 21, dtype=float)  # 1..20
    assert threshold_for_false_alarm_rate(s, 0.05) == 19.0  # flags only 20: 1/20
    assert threshold_for_false_alarm_rate(s, 0.10) == 18.0
    assert threshold_for_false_alarm_rate(s, 0.0) == 20.0
    assert flag_rate(s, 19.0) == 0.05
    assert threshold_for_false_alarm_rate(np.ones(4), 0.05) == 1.0  # ties: nothing flagged
    rng = np.random.default_rng(1)
    for n in (7, 100, 333):
        v = rng.normal(size=n)
        for rate in (0.01, 0.05, 0.2):
            t = threshold_for_false_alarm_rate(v, rate)
            assert flag_rate(v, t) <= rate + 1e-12
            assert flag_rate(v, t - 1e-9) > rate or t == v.min()  # the lowest such threshold
    with pytest.raises(ValueError, match="empty"):
        threshold_for_false_alarm_rate([], 0.05)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        threshold_for_false_alarm_rate([1.0], 1.5)


# ---------------------------------------------------------------------- compression
@pytest.mark.parametrize(
    "shape,levels", [((1, 6, 5), 2), ((1, 4, 4), 17), ((3, 4, 5), 256), ((2, 3, 3), 256)]
)
def test_png_is_lossless_and_is_the_code_length(shape, levels):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, levels, (3, *shape), generator=g).to(torch.uint8)
    for img in x.numpy():
        data = png_encode(img, levels)
        back = np.asarray(Image.open(io.BytesIO(data)))
        c, h, w = shape
        if c == 1:
            back = back.astype(np.uint8)[None]
        elif c == 3:
            back = back.transpose(2, 0, 1)
        else:
            back = back.reshape(c, h, w)
        assert np.array_equal(back, img)
    bits = compression_bits(x, levels, "png")
    assert np.array_equal(bits, [8 * len(png_encode(img, levels)) for img in x.numpy()])


def test_zlib_code_length_and_simple_images_are_shorter():
    rng = np.random.default_rng(0)
    x = np.zeros((2, 1, 28, 28), np.uint8)
    x[1] = rng.integers(0, 2, (1, 28, 28))
    z = compression_bits(x, 2, "zlib")
    assert z[0] == 8 * len(zlib.compress(x[0].tobytes(), 9))
    assert z[0] < z[1]
    p = compression_bits(x, 2, "png")
    assert p[0] < p[1]
    assert p[1] > 784  # a random binary image cannot be compressed below its 784 bits
    with pytest.raises(ValueError, match="unknown compressor"):
        compression_bits(x, 2, "flif")


# ---------------------------------------------------------------------- scores
def test_scores_follow_their_definitions():
    model = tiny("fvsbn", event_shape=(1, 3, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (10, 1, 3, 3), generator=g).to(torch.uint8)
    s = anomaly_scores(model, x, 2, compressor="zlib", batch_size=3)
    nll = -model.log_prob(x.double()).detach().numpy()
    assert np.allclose(s["nll"], nll)
    assert np.allclose(s["bits_per_dim"], nll / (9 * math.log(2)))
    assert np.allclose(s["complexity"], nll / math.log(2) - compression_bits(x, 2, "zlib"))
    again = anomaly_scores(model, x, 2, batch_size=3, code_bits=compression_bits(x, 2, "zlib"))
    assert all(np.array_equal(again[k], s[k]) for k in s)  # precomputed code lengths: same scores
    with pytest.raises(ValueError, match="code_bits has 3 entries for 10 images"):
        anomaly_scores(model, x, 2, code_bits=np.zeros(3))
    maps = pixel_nll(model, x, 2)
    assert maps.shape == (10, 3, 3)
    assert torch.allclose(maps.flatten(1).sum(1), torch.as_tensor(nll))
    with pytest.raises(ValueError, match="empty"):
        anomaly_scores(model, x[:0], 2)


# ---------------------------------------------------------------------- OOD sets
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_ood_sets(digits):
    noise, lv, desc = load_ood("noise", digits)
    assert noise.shape == digits.test.shape and noise.dtype == torch.uint8 and lv == 2
    assert set(noise.unique().tolist()) == {0, 1}
    assert abs(noise.double().mean().item() - 0.5) < 0.02  # fair coins over 17280 pixels
    assert torch.equal(load_ood("noise", digits)[0], noise)  # seeded
    flip, lv, desc = load_ood("flip", digits)
    assert torch.equal(flip, digits.test.flip(2)) and "upside down" in desc
    assert torch.equal(load_ood("flip:digits", digits)[0], flip)
    assert torch.equal(load_ood("hflip", digits)[0], digits.test.flip(3))
    assert torch.equal(load_ood("invert", digits)[0], 1 - digits.test)
    levels17, lv, _ = load_ood("digits:levels", digits)
    assert lv == 17 and levels17.max() > 1
    noise17, lv, _ = load_ood("noise", load_dataset("digits:levels"))
    assert lv == 17 and noise17.max() == 16
    every = load_ood("digits", digits, split="all")[0]
    assert torch.equal(every, torch.cat([digits.train, digits.valid, digits.test]))
    assert torch.equal(load_ood("flip", digits, split="all")[0], every.flip(2))
    with pytest.raises(ValueError, match="unknown data set"):
        load_ood("nothing", digits)
    with pytest.raises(ValueError, match="unknown split"):
        load_ood("flip", digits, split="everything")


# ---------------------------------------------------------------------- detection in one call
@pytest.fixture(scope="module")
def fitted(digits):
    model = chainrule.build("independent", event_shape=(1, 8, 8), levels=2).double()
    return model.fit(digits.train.double())  # closed form, smoothed: no probability is 0 or 1


def test_detect_separates_noise_and_not_itself(fitted, digits):
    det = detect(fitted, digits, "noise", compressor="zlib")
    for name, floor in (("nll", 0.99), ("bits_per_dim", 0.99), ("complexity", 0.95)):
        m = det.metrics[name]
        assert m["auroc"] > floor
        assert m["false_alarm_rate"] < 0.2 and m["detection_rate"] > 0.8
    assert det.metrics["nll"]["auroc"] == det.metrics["bits_per_dim"]["auroc"]  # a monotone map
    same = detect(fitted, digits, "digits", scores=("nll",))
    assert same.metrics["nll"]["auroc"] == 0.5  # the test split against itself: chance, exactly
    assert "AUROC" in det.table() and det.as_dict()["metrics"]["nll"]["auroc"] > 0.99


def test_threshold_in_detect_is_chosen_on_valid(fitted, digits):
    det = detect(fitted, digits, "flip", scores=("nll",), false_alarm_rate=0.1)
    m = det.metrics["nll"]
    valid_nll = -fitted.log_prob(digits.valid.double()).detach().numpy()
    assert m["threshold"] == threshold_for_false_alarm_rate(valid_nll, 0.1)
    assert m["false_alarm_rate"] == flag_rate(det.scores_in["nll"], m["threshold"])


def test_detect_refuses_incompatible_or_empty_sets(fitted, digits, tmp_path):
    with pytest.raises(ValueError, match="17 levels but the model was built for levels=2"):
        detect(fitted, digits, "digits:levels")
    big = tmp_path / "big.npz"
    np.savez(big, x=np.zeros((50, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="shape 1x28x28 but the model expects 1x8x8"):
        detect(fitted, digits, f"npz:{big}")
    empty = Splits("empty", digits.train, digits.valid, digits.test[:0], levels=2)
    with pytest.raises(ValueError, match="empty set"):
        detect(fitted, empty, "noise")
    with pytest.raises(ValueError, match="unknown score"):
        detect(fitted, digits, "noise", scores=("likelihood",))
