"""Data loaders: shapes, levels, splits, forms, and clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from chainrule.data import DataError, load_dataset, read_idx

from .conftest import DATA_DIR, data_file


def test_digits_binary_and_levels():
    s = load_dataset("digits")
    assert s.event_shape == (1, 8, 8) and s.levels == 2
    assert (len(s.train), len(s.valid), len(s.test)) == (1257, 270, 270)
    assert s.train.dtype == torch.uint8 and set(s.train.unique().tolist()) == {0, 1}
    k = load_dataset("digits:levels")
    assert k.levels == 17 and k.train.max() == 16
    # the same split, whatever the form
    assert torch.equal((k.test >= 8).to(torch.uint8), s.test)
    assert s.labels["test"] is not None and len(s.labels["test"]) == 270


def test_splits_are_disjoint_and_deterministic():
    a, b = load_dataset("digits:levels"), load_dataset("digits:levels")
    assert torch.equal(a.train, b.train)
    rows = {tuple(r.tolist()) for r in a.train.flatten(1)}
    overlap = sum(tuple(r.tolist()) in rows for r in a.test.flatten(1))
    assert overlap < 5  # the digits set has a handful of exact duplicates, not a leaked split


def test_binarized_mnist_fixed():
    data_file("binarized_mnist.npz")
    s = load_dataset("binarized-mnist", data_dir=DATA_DIR)
    assert (len(s.train), len(s.valid), len(s.test)) == (50000, 10000, 10000)
    assert s.event_shape == (1, 28, 28) and s.levels == 2 and s.binarization == "fixed"


def test_mnist_compact_split_and_forms():
    data_file("mnist_test.npz")
    s = load_dataset("mnist", data_dir=DATA_DIR)
    assert (len(s.train), len(s.valid), len(s.test)) == (8000, 1000, 1000) and s.levels == 256
    b = load_dataset("mnist:binarize", data_dir=DATA_DIR)
    assert b.levels == 2 and torch.equal(b.test, (s.test >= 128).to(torch.uint8))
    q = load_dataset("mnist:levels=4", data_dir=DATA_DIR)
    assert q.levels == 4 and q.train.max() == 3
    d = load_dataset("mnist:dynamic", data_dir=DATA_DIR)
    assert d.binarization == "dynamic" and d.train_intensities is not None and d.levels == 2


def test_cifar_compact_is_rgb_and_says_it_is_not_comparable():
    data_file("cifar10_jpeg_test.npz")
    s = load_dataset("cifar10", data_dir=DATA_DIR)
    assert s.event_shape == (3, 32, 32) and s.levels == 256
    assert "NOT comparable" in s.notes


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=f"binarized-mnist not found.*{tmp_path}"):
        load_dataset("binarized-mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown data set 'mnits'"):
        load_dataset("mnits")
    with pytest.raises(DataError, match="unknown form"):
        load_dataset("digits:sideways")


def test_corrupt_compact_file_is_refused(tmp_path):
    (tmp_path / "mnist_test.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="sha256"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_files_and_truncation(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in imgs.shape)
    labels = np.arange(30, dtype=np.uint8) % 10
    lab_header = bytes([0, 0, 8, 1]) + (30).to_bytes(4, "big")
    sub = tmp_path / "notmnist"
    sub.mkdir()
    with gzip.open(sub / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + imgs.tobytes())
    with gzip.open(sub / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(lab_header + labels.tobytes())
    np.testing.assert_array_equal(read_idx(sub / "t10k-images-idx3-ubyte.gz"), imgs)
    s = load_dataset("notmnist", data_dir=tmp_path)
    assert s.event_shape == (1, 28, 28) and len(s.train) + len(s.valid) + len(s.test) == 30
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(header + imgs.tobytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")


def test_npz_and_folder_datasets(tmp_path):
    from PIL import Image

    x = np.random.default_rng(1).integers(0, 2, (40, 5, 6), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x=x)
    s = load_dataset(f"npz:{tmp_path / 'mine.npz'}")
    assert s.event_shape == (1, 5, 6) and s.levels == 2 and len(s.train) == 32
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.full((4, 4, 3), i * 10, np.uint8)).save(folder / f"{i}.png")
    f = load_dataset(f"folder:{folder}")
    assert f.event_shape == (3, 4, 4) and f.levels == 256
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "odd.png")
    with pytest.raises(DataError, match="differ in size"):
        load_dataset(f"folder:{folder}")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_cifar_python_reader_refuses_code(tmp_path):
    import pickle

    from chainrule.data import _cifar_batch

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(DataError, match="refusing to load builtins.print"):
        _cifar_batch(pickle.dumps(Evil()), "evil")
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})
    x, y = _cifar_batch(good, "good")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 2]
