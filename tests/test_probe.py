"""Features and the linear probe: batching, oracles (an affine map of the pixels probes exactly
like the pixels), chance on noise, and errors for unlabelled data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chainrule
from chainrule.data import Splits, load_dataset
from chainrule.probe import (
    dataset_features,
    extract_features,
    linear_probe,
    probe_vs_pixels,
    raw_pixels,
)

from .conftest import randomize, tiny


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_features_are_batched_like_one_pass():
    model = tiny("pixelcnn", event_shape=(1, 4, 4))
    x = torch.randint(0, 2, (11, 1, 4, 4), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )
    f = extract_features(model, x, 2, batch_size=3)
    expected = model.features(x.double()).detach().numpy()
    assert f.shape == expected.shape and f.dtype == np.float32
    assert np.allclose(f, expected, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        extract_features(model, x[:0], 2)
    with pytest.raises(ValueError, match="shape 1x3x3 but the model expects 1x4x4"):
        extract_features(model, x[:, :, :3, :3], 2)


def test_dataset_features_have_labels(digits):
    model = randomize(chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).double(), scale=0.1)
    feats = dataset_features(model, digits)
    for s in ("train", "valid", "test"):
        assert feats[s].shape == (len(digits.split(s)), 64)
        assert np.array_equal(feats[f"{s}_y"], digits.labels[s].numpy())
    # fvsbn has no hidden units: its features are the conditional log-likelihoods, which sum to log p
    lp = model.log_prob(digits.test.double()).detach().numpy()
    assert np.allclose(feats["test"].sum(1), lp, rtol=1e-4)


def _blobs(n: int, seed: int, informative: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for s, m in (("train", n), ("valid", n // 4), ("test", n // 4)):
        y = rng.integers(0, 4, m)
        x = rng.normal(size=(m, 10))
        if informative:
            x[np.arange(m), y] += 6.0  # class k shifts coordinate k
        out[s], out[f"{s}_y"] = x, y
    return out


def test_probe_reads_linear_information_and_not_noise():
    good = linear_probe(_blobs(400, 0, True))
    assert good["test_accuracy"] > 0.97 and good["dim"] == 10 and good["n_train"] == 400
    assert good["C"] in (0.01, 0.1, 1.0)
    bad = linear_probe(_blobs(400, 1, False))  # 4 classes, labels independent of the features
    assert bad["test_accuracy"] < 0.45


def test_an_affine_map_of_the_pixels_probes_like_the_pixels(digits):
    # an independent model's features are log p(x_i), affine in each binary pixel: after
    # standardization the probe sees the same inputs up to sign, so the accuracy is the same
    model = randomize(chainrule.build("independent", event_shape=(1, 8, 8), levels=2).double())
    r = probe_vs_pixels(model, digits)
    assert r["pixels"]["test_accuracy"] > 0.8
    assert r["features"]["test_accuracy"] == pytest.approx(
        r["pixels"]["test_accuracy"], abs=1.5 / 270
    )
    assert r["features"]["C"] == r["pixels"]["C"]


def test_probe_refuses_unlabelled_or_broken_input(digits):
    unlabelled = Splits("binarized-like", digits.train, digits.valid, digits.test, levels=2)
    model = tiny("fvsbn", event_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="no labels"):
        probe_vs_pixels(model, unlabelled)
    feats = raw_pixels(digits)
    broken = {**feats, "test_y": feats["test_y"][:-1]}
    with pytest.raises(ValueError, match="labels"):
        linear_probe(broken)
    one_class = {**feats, "train_y": np.zeros_like(feats["train_y"])}
    with pytest.raises(ValueError, match="single class"):
        linear_probe(one_class)
