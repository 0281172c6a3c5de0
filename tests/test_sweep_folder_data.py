"""``folder:PATH`` reads every image mode by its real value range or refuses it in one line;
data caveats (``Splits.caveat``) and ``describe(max_train=...)``.

The folder tests drive the command line as a user does (``chainrule train --model independent
--closed-form --data folder:DIR``) and then check the loaded pixels against the values written.
"""

from __future__ import annotations

import numpy as np
import pytest

from chainrule.data import DataError, Splits, load_dataset

from .conftest import DATA_DIR, data_file, run_cli

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

H, W, N = 4, 5, 10  # ten tiny images: split 8/1/1


def train_folder(capsys, folder, tmp_path):
    """``chainrule train`` on ``folder:DIR``: (exit code, stdout, stderr)."""
    return run_cli(
        capsys,
        "train",
        "--model",
        "independent",
        "--closed-form",
        "--data",
        f"folder:{folder}",
        "--out",
        tmp_path / f"run-{folder.name}",
        "--quiet",
    )


def assert_accepted(capsys, folder, tmp_path, expected, levels):
    """The CLI trains on the folder, and the loaded images are exactly ``expected``."""
    code, out, err = train_folder(capsys, folder, tmp_path)
    assert code == 0, err
    assert "Traceback" not in out + err
    s = load_dataset(f"folder:{folder}")
    assert s.levels == levels
    got = np.concatenate([s.train.numpy(), s.valid.numpy(), s.test.numpy()])
    want = np.stack(expected)
    want = want[:, None] if want.ndim == 3 else want.transpose(0, 3, 1, 2)
    assert got.dtype == np.uint8 and got.shape == want.shape
    # the split shuffles: compare the images as a multiset
    assert sorted(a.tobytes() for a in got) == sorted(a.tobytes() for a in want)
    return s


def assert_refused(capsys, folder, tmp_path, *needles):
    """The CLI refuses the folder with exit code 1 and one line naming ``needles``."""
    code, out, err = train_folder(capsys, folder, tmp_path)
    assert code == 1
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("chainrule train: error: ")
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    with pytest.raises(DataError):
        load_dataset(f"folder:{folder}")
    return lines[0]


def gradient16(i: int) -> np.ndarray:
    """A 16-bit gradient 0..65535 (every image has both ends), different for each ``i``."""
    g = np.linspace(0, 65535, H * W).round().astype(np.int64).reshape(H, W)
    g[1, 1] = (i * 4099) % 65536
    return g


def test_16bit_png_is_reduced_by_v_shift_8_not_clipped(capsys, tmp_path):
    folder = tmp_path / "png16"
    folder.mkdir()
    expected = []
    for i in range(N):
        v = gradient16(i)
        im = Image.fromarray(v.astype(np.uint16))
        assert im.mode == "I;16"
        im.save(folder / f"{i:02d}.png")
        assert Image.open(folder / f"{i:02d}.png").mode.startswith("I")
        expected.append((v >> 8).astype(np.uint8))
    s = assert_accepted(capsys, folder, tmp_path, expected, 256)
    assert s.train.min() == 0 and s.train.max() == 255  # a gradient, not all 255
    assert "16-bit" in s.caveat and "v >> 8" in s.caveat


def test_16bit_tiff_big_and_little_endian_and_int_within_range(capsys, tmp_path):
    folder = tmp_path / "tif16"
    folder.mkdir()
    expected = []
    for i in range(N):
        v = gradient16(i)
        if i % 3 == 0:  # 32-bit integer image holding 16-bit values
            im = Image.fromarray(v.astype(np.int32))
            assert im.mode == "I"
        elif i % 3 == 1:
            im = Image.fromarray(v.astype(np.uint16))
        else:  # big-endian 16 bits
            im = Image.frombytes("I;16B", (W, H), v.astype(">u2").tobytes())
        im.save(folder / f"{i:02d}.tif")
        expected.append((v >> 8).astype(np.uint8))
    assert_accepted(capsys, folder, tmp_path, expected, 256)


def test_8bit_stored_as_16bit_comes_back_exactly(tmp_path):
    folder = tmp_path / "x257"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (H, W)) for _ in range(N)]
    for i, a in enumerate(images):
        Image.fromarray((a * 257).astype(np.uint16)).save(folder / f"{i}.png")
    s = load_dataset(f"folder:{folder}")
    got = sorted(a.tobytes() for a in np.concatenate([s.train, s.valid, s.test]))
    assert got == sorted(a.astype(np.uint8)[None].tobytes() for a in images)


def test_1bit_images_are_binary(capsys, tmp_path):
    folder = tmp_path / "bits"
    folder.mkdir()
    rng = np.random.default_rng(1)
    expected = []
    for i in range(N):
        a = rng.integers(0, 2, (H, W)).astype(bool)
        im = Image.fromarray(a)
        assert im.mode == "1"
        im.save(folder / f"{i}.png")
        expected.append(a.astype(np.uint8))
    s = assert_accepted(capsys, folder, tmp_path, expected, 2)
    assert "binary" in s.describe() and s.caveat == ""


def test_float_images_in_unit_interval_are_rounded(capsys, tmp_path):
    folder = tmp_path / "float"
    folder.mkdir()
    rng = np.random.default_rng(2)
    expected = []
    for i in range(N):
        k = rng.integers(0, 256, (H, W))
        v = (k / 255.0).astype(np.float32)
        v[0, 0], v[0, 1] = 0.0, 1.0
        k[0, 0], k[0, 1] = 0, 255
        im = Image.fromarray(v)
        assert im.mode == "F"
        im.save(folder / f"{i}.tif")
        expected.append(k.astype(np.uint8))
    s = assert_accepted(capsys, folder, tmp_path, expected, 256)
    assert "round(v * 255)" in s.caveat


def test_float_images_outside_unit_interval_are_refused(capsys, tmp_path):
    folder = tmp_path / "float255"
    folder.mkdir()
    for i in range(N):
        v = np.linspace(0, 300, H * W, dtype=np.float32).reshape(H, W)
        Image.fromarray(v).save(folder / f"{i}.tif")
    assert_refused(capsys, folder, tmp_path, "0.tif", "(F)", "[0, 300]")


def test_float_nan_is_refused(capsys, tmp_path):
    folder = tmp_path / "nan"
    folder.mkdir()
    v = np.full((H, W), 0.5, np.float32)
    v[0, 0] = np.nan
    Image.fromarray(v).save(folder / "a.tif")
    assert_refused(capsys, folder, tmp_path, "a.tif", "(F)", "NaN")


def test_32bit_int_outside_16bit_range_is_refused(capsys, tmp_path):
    folder = tmp_path / "int32"
    folder.mkdir()
    for i in range(N):
        v = np.arange(H * W, dtype=np.int32).reshape(H, W) * 10000
        Image.fromarray(v).save(folder / f"{i}.tif")
    assert_refused(capsys, folder, tmp_path, "0.tif", "(I)", "0..190000")


def test_8bit_modes_are_read_as_before(capsys, tmp_path):
    """L, LA (alpha dropped), RGB, RGBA (alpha dropped, not composited), P (palette looked up):
    the values PIL's convert("L") / convert("RGB") give, as before."""
    rng = np.random.default_rng(3)
    grey = tmp_path / "grey"
    grey.mkdir()
    expected = []
    for i in range(N):
        a = rng.integers(0, 256, (H, W)).astype(np.uint8)
        if i % 2:
            alpha = rng.integers(0, 256, (H, W)).astype(np.uint8)
            im = Image.fromarray(np.stack([a, alpha], -1), "LA")
        else:
            im = Image.fromarray(a, "L")
        im.save(grey / f"{i}.png")
        expected.append(a)
    assert_accepted(capsys, grey, tmp_path, expected, 256)

    colour = tmp_path / "colour"
    colour.mkdir()
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    expected = []
    for i in range(N):
        rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
        if i % 3 == 0:
            im = Image.fromarray(rgb, "RGB")
        elif i % 3 == 1:
            alpha = rng.integers(0, 256, (H, W, 1)).astype(np.uint8)
            im = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
        else:
            idx = rng.integers(0, 256, (H, W)).astype(np.uint8)
            im = Image.fromarray(idx, "P")
            im.putpalette(palette.tobytes())
            rgb = palette[idx]
        im.save(colour / f"{i}.png")
        expected.append(rgb)
    s = assert_accepted(capsys, colour, tmp_path, expected, 256)
    assert s.event_shape == (3, H, W) and s.caveat == ""


def test_images_of_other_sizes_or_kinds_are_refused_by_name(capsys, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(N):
        Image.fromarray(np.full((H, W), i, np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((H, W), np.uint16)).save(folder / "5b.png")  # 16-bit among 8-bit
    assert_refused(capsys, folder, tmp_path, "5b.png", "differ in kind", "16-bit", "8-bit")
    (folder / "5b.png").unlink()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "5c.png")  # colour among grey
    assert_refused(capsys, folder, tmp_path, "5c.png", "differ in kind", "colour")
    (folder / "5c.png").unlink()
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(folder / "5d.png")
    assert_refused(capsys, folder, tmp_path, "5d.png", "differ in size", "5x5", "5x4")


def test_empty_unreadable_and_unsupported_folders_are_refused(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert_refused(capsys, empty, tmp_path, "holds no images")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert_refused(capsys, broken, tmp_path, "cannot read image", "a.png")
    lab = tmp_path / "lab"
    lab.mkdir()
    Image.new("LAB", (W, H)).save(lab / "a.tif")
    assert_refused(capsys, lab, tmp_path, "a.tif", "mode LAB")


# ---------------------------------------------------------------------- caveats
def test_caveats_of_the_shared_data_sets():
    data_file("mnist_test.npz")
    s = load_dataset("mnist", data_dir=DATA_DIR)
    assert "10000-image test set split 8000/1000/1000" in s.caveat
    assert "not comparable" in s.caveat
    for form in ("mnist:binarize", "mnist:dynamic", "mnist:levels=4"):
        assert load_dataset(form, data_dir=DATA_DIR).caveat == s.caveat
    assert load_dataset("digits").caveat.startswith("scikit-learn's 8x8 digits")
    assert load_dataset("digits:levels").caveat == load_dataset("digits").caveat


def test_binarized_mnist_full_set_has_no_caveat():
    data_file("binarized_mnist.npz")
    s = load_dataset("binarized-mnist", data_dir=DATA_DIR)
    assert (len(s.train), len(s.valid), len(s.test)) == (50000, 10000, 10000)
    assert s.caveat == ""


def test_cifar_and_notmnist_caveats():
    data_file("cifar10_jpeg_test.npz")
    data_file("notmnist_test.npz")
    c = load_dataset("cifar10", data_dir=DATA_DIR).caveat
    assert "JPEG" in c and "NOT comparable" in c and "8000/1000/1000" in c
    n = load_dataset("notmnist", data_dir=DATA_DIR).caveat
    assert "test set split 8000/1000/1000" in n


def test_describe_names_the_training_subset():
    s = load_dataset("digits")
    base = s.describe()
    assert base == "digits: 1x8x8, binary, threshold binarization; 1257/270/270 train/valid/test"
    assert s.describe(max_train=None) == base == s.describe(max_train=0)
    assert s.describe(max_train=5000) == base  # more than there are: all are used
    assert s.describe(max_train=500) == base + "; train 500 of 1257 images (--max-train)"
    assert Splits("x", s.train, s.valid, s.test, levels=2).caveat == ""
