"""Datasets: the embedded default (scikit-learn's digits), binarized MNIST, MNIST, Fashion-MNIST,
notMNIST, CIFAR-10, a folder of images, an ``.npz`` of arrays.

Every loader returns :class:`Splits`: ``train``/``valid``/``test`` as ``uint8`` tensors of shape
``(N, C, H, W)`` holding whole numbers ``0 .. levels-1``, plus labels where the data set has them.

Names (the CLI's ``--data``), with optional forms after a colon:

=====================  ==========================================================================
``digits``             8x8 digits from scikit-learn (1797 images, 17 grey levels), binarized at 8
                       (``digits:levels`` keeps the 17 levels). Split 1257/270/270 (seed 0).
``binarized-mnist``    the *fixed* binarization of Larochelle & Murray (2011), 50000/10000/10000.
``mnist``              8-bit MNIST (IDX files: 50000/10000 of the training set, the 10000 test
                       images; from the compact test-set copy alone: 8000/1000/1000, seed 0).
``fashion-mnist``      8-bit Fashion-MNIST (IDX files in ``fashion-mnist/``).
``notmnist``           notMNIST letters (IDX files in ``notmnist/`` or the compact copy).
``cifar10``            CIFAR-10 (the python-format archive, read without unpickling code objects;
                       or the JPEG-decoded test-set copy, 8000/1000/1000, *not* comparable with
                       published CIFAR-10 figures).
``folder:PATH``        every image in a folder (same size and kind), split 80/10/10 (seed 0); 8-bit,
                       or binary for 1-bit images (rules: :func:`_folder`, :data:`FOLDER_RULES`).
``npz:PATH``           arrays ``train``/``valid``/``test`` or ``x`` (split 80/10/10).
=====================  ==========================================================================

Forms for 8-bit data: ``:binarize`` (threshold at 128, fixed), ``:dynamic`` (the training set is
re-binarized by sampling at every epoch; valid/test are sampled once with a fixed seed),
``:levels=K`` (quantized to K levels). Published binarized-MNIST figures use the fixed
binarization of ``binarized-mnist``; every figure this library writes names the data set used.

Caveats: :attr:`Splits.caveat` says, in a sentence, when figures on a data set are not comparable
with published ones (a split of a test set, JPEG-decoded images, a reduction to 8 bits, ...);
"" when there is nothing to say.

Files are looked up in ``--data-dir``, else ``$CHAINRULE_DATA``, else ``~/.cache/chainrule``.
Nothing is downloaded: a missing data set is one message saying where it was looked for.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: sha256 of the compact copies made for this project (../shared/data)
SHA256 = {
    "binarized_mnist.npz": "4c2830802b203335733d2faafe523c442046e7f77d7dbfaafbd8b70fb6d40340",
    "mnist_test.npz": "fe03ede69adf7bb5408464916ac4f1d4cd475510fdfb08add4409b34f0a435ec",
    "notmnist_test.npz": "26db46c999c33433e92acd31fe4807f4dfb9a91a18a643986038e9d282510757",
    "cifar10_jpeg_test.npz": "c0501a381b44d0b55c4d8c214866a723cb4e54dfd837ab2449a7e4d9140123c2",
}

DATASETS = ["digits", "binarized-mnist", "mnist", "fashion-mnist", "notmnist", "cifar10"]

#: the caveats (Splits.caveat) of the built-in data sets; "" where there is none
DIGITS_CAVEAT = "scikit-learn's 8x8 digits (1797 images), a toy set: not comparable with MNIST."
CIFAR_JPEG_CAVEAT = (
    "CIFAR-10 here is its 10000 test images decoded from JPEG (with JPEG artefacts) and split "
    "8000/1000/1000: NOT comparable with published CIFAR-10 bits/dim."
)


def split_test_set_caveat(name: str, n: int, sizes: str) -> str:
    """The caveat of a data set made by splitting its test set (no training files here)."""
    return (
        f"{name} here is its {n}-image test set split {sizes} (seed 0), not the standard "
        f"training/test split: not comparable with published {name} figures."
    )


class DataError(ValueError):
    """A data set that cannot be found or read (one clear message)."""


@dataclass
class Splits:
    """A data set split three ways. Images are uint8 ``(N, C, H, W)`` in ``0 .. levels-1``."""

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    levels: int
    labels: dict[str, Tensor | None] = field(default_factory=dict)
    #: "fixed", "threshold", "dynamic" or "none" (data already at `levels`)
    binarization: str = "none"
    #: with dynamic binarization: the 8-bit training images that are re-sampled each epoch
    train_intensities: Tensor | None = None
    #: number of grey levels of `train_intensities`
    intensity_levels: int = 256
    notes: str = ""
    #: one short sentence per caveat the user must hear ("" when there is none): a fixed split
    #: of a test set, JPEG-decoded images, a reduction to 8 bits... Kept by every form.
    caveat: str = ""

    @property
    def event_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> Tensor:
        if name not in ("train", "valid", "test"):
            raise DataError(f"unknown split {name!r}: use train, valid or test")
        return getattr(self, name)

    def describe(self, max_train: int | None = None) -> str:
        """One line: name, shape, levels, split sizes; with ``max_train`` (the trainer's
        ``--max-train``, 0 or None for all) smaller than the training set, how many training
        images are used. The caveat is not included: it is :attr:`caveat`."""
        c, h, w = self.event_shape
        kind = {2: "binary"}.get(self.levels, f"{self.levels} levels")
        b = f", {self.binarization} binarization" if self.binarization not in ("none", "") else ""
        used = ""
        if max_train and max_train < len(self.train):
            used = f"; train {max_train} of {len(self.train)} images (--max-train)"
        return (
            f"{self.name}: {c}x{h}x{w}, {kind}{b}; "
            f"{len(self.train)}/{len(self.valid)}/{len(self.test)} train/valid/test{used}"
        )


# ---------------------------------------------------------------------- where files live
def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    dirs = []
    if os.environ.get("CHAINRULE_DATA"):
        dirs.append(Path(os.environ["CHAINRULE_DATA"]))
    dirs.append(Path.home() / ".cache" / "chainrule")
    return dirs


def _find(dirs: list[Path], *names: str) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).exists():
                return d / n
    return None


def _missing(what: str, dirs: list[Path], wanted: str) -> DataError:
    where = ", ".join(str(d) for d in dirs)
    return DataError(
        f"{what} not found: looked for {wanted} in {where}. Put the files there, "
        f"or point --data-dir / $CHAINRULE_DATA at the folder that holds them"
    )


def check_sha256(path: Path) -> None:
    expected = SHA256.get(path.name)
    if expected is None:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise DataError(
            f"{path} has sha256 {h.hexdigest()}, expected {expected}: corrupt or another file"
        )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    check_sha256(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file: {e}") from None


# ---------------------------------------------------------------------- file formats
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(data) - offset != n:
        raise DataError(
            f"{path} is truncated: header says {dims}, file has {len(data) - offset} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _idx_pair(dirs: list[Path], prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    for d in dirs:
        for ext in ("", ".gz"):
            img = d / f"{prefix}-images-idx3-ubyte{ext}"
            lab = d / f"{prefix}-labels-idx1-ubyte{ext}"
            if img.exists() and lab.exists():
                return read_idx(img), read_idx(lab).astype(np.int64)
    return None


class _SafeUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 python batches (dicts of bytes, lists and numpy arrays) and nothing
    else: any other global is refused, so no code in the file can run."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:
        raise DataError(f"{source} is not a CIFAR-10 python batch: {e}") from None
    return x, y


def _read_cifar_python(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    raws: dict[str, bytes] = {}
    if path.is_dir():
        for n in names:
            if not (path / n).is_file():
                raise DataError(f"{path} lacks {n} (expected the cifar-10-batches-py folder)")
            raws[n] = (path / n).read_bytes()
    else:
        try:
            with tarfile.open(path, "r:gz") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if base in names and m.isfile():
                        raws[base] = tar.extractfile(m).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot read {path}: {e}") from None
        if set(raws) != set(names):
            raise DataError(f"{path} lacks {sorted(set(names) - set(raws))}")
    batches = {n: _cifar_batch(raws[n], f"{path}:{n}") for n in names}
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "test": batches["test_batch"],
    }


# ---------------------------------------------------------------------- helpers
def _nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4:
        return x
    raise DataError(
        f"expected images of shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape}"
    )


def _split_fixed(x, y, sizes: tuple[float, float], seed: int = 0):
    """Shuffle with a fixed seed and cut off valid and test parts (fractions or counts)."""
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(sizes[0] * n)) if sizes[0] < 1 else int(sizes[0])
    n_test = int(round(sizes[1] * n)) if sizes[1] < 1 else int(sizes[1])
    if n - n_valid - n_test < 1 or n_valid < 1 or n_test < 1:
        raise DataError(f"{n} images are too few to split into train/valid/test")
    te, va, tr = perm[:n_test], perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    ys = (None, None, None) if y is None else (y[tr], y[va], y[te])
    return (x[tr], x[va], x[te]), ys


def _tensor(a) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.uint8)


def _labels(y) -> dict[str, Tensor | None]:
    return {
        s: (None if v is None else torch.from_numpy(np.asarray(v, dtype=np.int64)))
        for s, v in zip(("train", "valid", "test"), y, strict=True)
    }


def _make(name, xs, ys, levels, **kw) -> Splits:
    train, valid, test = (_tensor(_nchw(np.asarray(a))) for a in xs)
    return Splits(name, train, valid, test, levels=levels, labels=_labels(ys), **kw)


# ---------------------------------------------------------------------- the data sets
def _digits() -> tuple[tuple, tuple]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)  # (1797, 8, 8) in 0..16
    return _split_fixed(x, d.target.astype(np.int64), (270, 270))


def _binarized_mnist(dirs) -> Splits:
    path = _find(dirs, "binarized_mnist.npz")
    if path is not None:
        z = _load_npz(path)
        xs: tuple[np.ndarray, ...] = (z["train"], z["valid"], z["test"])
    else:
        amat = [_find(dirs, f"binarized_mnist_{s}.amat") for s in ("train", "valid", "test")]
        found = [p for p in amat if p is not None]
        if len(found) < len(amat):
            raise _missing(
                "binarized-mnist",
                dirs,
                "binarized_mnist.npz or binarized_mnist_{train,valid,test}.amat (Larochelle & Murray 2011)",
            )
        xs = tuple(np.loadtxt(p, dtype=np.uint8).reshape(-1, 28, 28) for p in found)
    return _make(
        "binarized-mnist",
        xs,
        (None, None, None),
        2,
        binarization="fixed",
        notes="fixed binarization of Larochelle & Murray (2011)",
    )


def _split_off_valid(x, y, n_valid: int, seed: int = 0):
    perm = np.random.default_rng(seed).permutation(len(x))
    va, tr = perm[:n_valid], perm[n_valid:]
    return (x[tr], x[va]), (y[tr], y[va])


def _mnist_like(dirs, name: str, subdir: str, compact: str | None) -> Splits:
    idx_dirs = [d / subdir for d in dirs] + (dirs if name == "mnist" else [])
    train, test = _idx_pair(idx_dirs, "train"), _idx_pair(idx_dirs, "t10k")
    if train is not None and test is not None:
        (tr, va), (ytr, yva) = _split_off_valid(*train, 10000)
        return _make(
            name,
            (tr, va, test[0]),
            (ytr, yva, test[1]),
            256,
            notes="training set split 50000/10000 (seed 0); the official test set",
        )
    path = _find(dirs, compact) if compact else None
    if path is not None:
        z = _load_npz(path)
        x, y = z["x"], z.get("y")
    elif test is not None:  # only the test files: split them
        x, y = test
    else:
        wanted = f"{subdir}/{{train,t10k}}-{{images,labels}}-idx*-ubyte[.gz]"
        if compact:
            wanted += f" or {compact}"
        raise _missing(name, dirs, wanted)
    xs, ys = _split_fixed(x, y, (1000, 1000) if len(x) >= 5000 else (0.1, 0.1))
    sizes = "/".join(str(len(a)) for a in xs)
    return _make(
        name,
        xs,
        ys,
        256,
        notes=f"the {len(x)}-image test set split {sizes} (seed 0)",
        caveat=split_test_set_caveat(name, len(x), sizes),
    )


def _cifar10(dirs) -> Splits:
    path = _find(dirs, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    if path is not None:
        parts = _read_cifar_python(path)
        (tr, va), (ytr, yva) = _split_off_valid(*parts["train"], 5000)
        return _make("cifar10", (tr, va, parts["test"][0]), (ytr, yva, parts["test"][1]), 256)
    path = _find(dirs, "cifar10_jpeg_test.npz")
    if path is None:
        raise _missing(
            "cifar10", dirs, "cifar-10-batches-py/, cifar-10-python.tar.gz or cifar10_jpeg_test.npz"
        )
    z = _load_npz(path)
    xs, ys = _split_fixed(z["x"], z["y"], (1000, 1000))
    return _make(
        "cifar10",
        xs,
        ys,
        256,
        notes=(
            "CIFAR-10 test images decoded from JPEG, split 8000/1000/1000 (seed 0): "
            "NOT comparable with published CIFAR-10 bits/dim"
        ),
        caveat=CIFAR_JPEG_CAVEAT,
    )


# How ``folder:PATH`` reads each image mode PIL opens (the README may quote this block):
#
#   1                        1-bit: binary data, levels 2 (0 and 1)
#   L, LA                    8-bit grey, levels 256; the alpha of LA is dropped
#   RGB, RGBA, RGBX, RGBa,   8-bit colour, 3 channels R, G, B, levels 256: alpha dropped (not
#   P, PA, CMYK, YCbCr       composited), palettes looked up, CMYK and YCbCr converted by PIL
#   I;16, I;16B, I;16L,      16-bit grey, reduced to 8 bits by v >> 8 (0..255 -> 0, ...,
#   I;16N, and I with        65280..65535 -> 255; an 8-bit image stored as v * 257 gets its
#   all values in 0..65535   values back exactly), levels 256; never clipped
#   F with all values in     float grey, quantized to 8 bits by round(v * 255) (half to even),
#   [0, 1]                   levels 256
#   anything else            refused, naming the file, the mode and the values it holds: I
#                            outside 0..65535, F outside [0, 1] or not finite, LAB, HSV, ...
#
# (PIL itself reads a 16-bit colour PNG as 8-bit RGB by its high byte: the same v >> 8.)
# Only the first frame of an animated or multi-page file is read. Every image in the folder
# must have the same size and the same kind (1-bit, 8-bit grey, 8-bit colour, 16-bit grey,
# float grey); the first that differs from the first image (in sorted order) is refused by
# name, and so is a file that cannot be read. A reduction to 8 bits is stated in the
# data set's caveat.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_GREY8_MODES = ("L", "LA")
_COLOUR8_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr")
_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _read_image(f: Path) -> tuple[np.ndarray, str]:
    """One image file -> (``uint8`` array ``(H, W)`` or ``(H, W, 3)``, its kind), by the
    rules above; a :class:`DataError` naming the file otherwise."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            mode = im.mode
            if mode == "1":
                return np.asarray(im, dtype=np.uint8), "1-bit"
            if mode in _GREY8_MODES:
                return np.asarray(im.convert("L")), "8-bit grey"
            if mode in _COLOUR8_MODES:
                return np.asarray(im.convert("RGB")), "8-bit colour"
            if mode not in _GREY16_MODES + ("I", "F"):
                raise DataError(
                    f"image {f} has mode {mode}, which is not read: use 1-bit, 8-bit grey or "
                    f"colour, 16-bit grey, or float grey in [0, 1]"
                )
            a = np.asarray(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... on bad files
        raise DataError(f"cannot read image {f}: {e}".replace("\n", " ")) from None
    if a.size == 0:
        raise DataError(f"image {f} is empty ({mode}, shape {a.shape})")
    if mode == "F":
        v = a.astype(np.float64)
        finite = bool(np.isfinite(v).all())
        lo = float(np.nanmin(v)) if not np.isnan(v).all() else float("nan")
        hi = float(np.nanmax(v)) if not np.isnan(v).all() else float("nan")
        if not finite or lo < 0.0 or hi > 1.0:
            extra = "" if finite else " and NaN or infinite values"
            raise DataError(
                f"image {f} is a float (F) image with values in [{lo:g}, {hi:g}]{extra}: only "
                f"floats in [0, 1] are read (as round(v * 255)); scale it to [0, 1] or save it "
                f"as 8 or 16 bits"
            )
        return np.round(v * 255.0).astype(np.uint8), "float grey"
    iv = a.astype(np.int64)
    lo, hi = int(iv.min()), int(iv.max())
    if lo < 0 or hi > 65535:
        raise DataError(
            f"image {f} is a 32-bit integer ({mode}) image with values in {lo}..{hi}: only "
            f"0..65535 (16-bit) is read (as v >> 8); save it as 8 or 16 bits"
        )
    return (iv >> 8).astype(np.uint8), "16-bit grey"


def _folder(path: Path) -> Splits:
    """Every image under ``path`` (sorted, subfolders included), split 80/10/10 (seed 0).

    Each image mode PIL opens is read by its real value range or refused with a
    :class:`DataError` that names the file (the rules are the comment block above):
    1-bit -> binary {0, 1} (levels 2); 8-bit grey (L, LA: alpha dropped) and colour (RGB,
    RGBA, P, ...: alpha dropped, palette looked up) -> as stored, levels 256; 16-bit grey
    (I;16, I;16B, ..., I within 0..65535) -> v >> 8; float (F) in [0, 1] -> round(v * 255);
    other 32-bit integer or float images and other modes -> refused. All images must share
    one size and one kind; the first that differs is refused by name.
    """
    if not path.is_dir():
        raise DataError(f"folder:{path} is not a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"folder:{path} holds no images (.png, .jpg, ...)")
    first = files[0]
    a0, kind = _read_image(first)
    arrays = [a0]
    for f in files[1:]:
        a, k = _read_image(f)
        if k != kind:
            raise DataError(
                f"images in folder:{path} differ in kind: {f} is {k} but {first} is {kind}; "
                f"convert them to one mode"
            )
        if a.shape != a0.shape:
            raise DataError(
                f"images in folder:{path} differ in size: {f} is {_size(a)} but {first} is "
                f"{_size(a0)}; resize them to one size"
            )
        arrays.append(a)
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    xs, ys = _split_fixed(x, None, (0.1, 0.1))
    caveat = {
        "16-bit grey": "16-bit images reduced to 8 bits (v >> 8).",
        "float grey": "float images quantized to 8 bits (round(v * 255)).",
    }.get(kind, "")
    return _make(
        f"folder:{path}",
        xs,
        ys,
        2 if kind == "1-bit" else 256,
        notes=f"{len(files)} {kind} images",
        caveat=caveat,
    )


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]} pixels"


def _npz(path: Path) -> Splits:
    if not path.is_file():
        raise DataError(f"npz:{path}: no such file")
    z = _load_npz(path)
    if all(k in z for k in ("train", "valid", "test")):
        xs = (z["train"], z["valid"], z["test"])
        ys = tuple(z.get(f"{k}_y") for k in ("train", "valid", "test"))
    elif "x" in z:
        xs, ys = _split_fixed(z["x"], z.get("y"), (0.1, 0.1))
    else:
        raise DataError(f"{path} must hold arrays train/valid/test or x; it holds {sorted(z)}")
    for a in xs:
        if not np.issubdtype(a.dtype, np.integer) and not np.array_equal(a, np.round(a)):
            raise DataError(f"{path}: images must hold whole numbers (levels), got dtype {a.dtype}")
        if a.size == 0:
            raise DataError(f"{path}: an empty split")
    top = max(int(np.max(a)) for a in xs)
    low = min(int(np.min(a)) for a in xs)
    if low < 0 or top > 255:
        raise DataError(f"{path}: values must lie in 0..255, got {low}..{top}")
    levels = int(z["levels"]) if "levels" in z else (2 if top <= 1 else 256)
    if top >= levels:
        raise DataError(f"{path}: values up to {top} but levels={levels}")
    return _make(f"npz:{path}", tuple(a.astype(np.uint8) for a in xs), ys, levels)


# ---------------------------------------------------------------------- forms
def _apply_form(s: Splits, form: str, seed: int = 0) -> Splits:
    if not form:
        return s
    if form == "binarize":
        if s.levels == 2:
            return s
        half = s.levels // 2
        tr, va, te = ((x >= half).to(torch.uint8) for x in (s.train, s.valid, s.test))
        return Splits(
            s.name + ":binarize",
            tr,
            va,
            te,
            levels=2,
            labels=s.labels,
            binarization="threshold",
            notes=f"threshold at {half}",
            caveat=s.caveat,
        )
    if form == "dynamic":
        if s.levels == 2:
            raise DataError(f"{s.name} is already binary: dynamic binarization needs grey levels")
        g = torch.Generator().manual_seed(seed)
        scale = float(s.levels - 1)
        va, te = (
            torch.bernoulli(x.double() / scale, generator=g).to(torch.uint8)
            for x in (s.valid, s.test)
        )
        return Splits(
            s.name + ":dynamic",
            dynamic_binarize(s.train, s.levels, g),
            va,
            te,
            levels=2,
            labels=s.labels,
            binarization="dynamic",
            train_intensities=s.train,
            intensity_levels=s.levels,
            notes="training set re-binarized by sampling each epoch; valid/test sampled once (seed 0)",
            caveat=s.caveat,
        )
    if form.startswith("levels="):
        try:
            k = int(form.split("=", 1)[1])
        except ValueError:
            raise DataError(f"bad form {form!r}: use levels=K with an int K") from None
        if not 2 <= k <= s.levels:
            raise DataError(f"levels={k} must lie in 2..{s.levels} for {s.name}")
        tr, va, te = (
            (x.long() * k // s.levels).to(torch.uint8) for x in (s.train, s.valid, s.test)
        )
        return Splits(
            f"{s.name}:levels={k}",
            tr,
            va,
            te,
            levels=k,
            labels=s.labels,
            notes=f"quantized to {k} levels",
            caveat=s.caveat,
        )
    raise DataError(f"unknown form {form!r}: use binarize, dynamic or levels=K")


def dynamic_binarize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Sample binary images with p(pixel = 1) = intensity / (levels - 1)."""
    return torch.bernoulli(x.double() / (levels - 1), generator=generator).to(torch.uint8)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Splits:
    """Load a data set by its command-line name (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"data set name must be a non-empty string, got {name!r}")
    dirs = search_dirs(data_dir)
    if name.startswith("folder:"):
        return _folder(Path(name[len("folder:") :]).expanduser())
    if name.startswith("npz:"):
        return _npz(Path(name[len("npz:") :]).expanduser())
    base, _, form = name.partition(":")
    if base == "digits":
        xs, ys = _digits()
        if form == "levels":
            return _make("digits:levels", xs, ys, 17, notes="17 grey levels", caveat=DIGITS_CAVEAT)
        if form not in ("", "binarize"):
            raise DataError(f"unknown form {form!r} for digits: use digits or digits:levels")
        return _make(
            "digits",
            [(np.asarray(x) >= 8).astype(np.uint8) for x in xs],
            ys,
            2,
            binarization="threshold",
            notes="threshold at 8 of 16",
            caveat=DIGITS_CAVEAT,
        )
    if base == "binarized-mnist":
        if form:
            raise DataError(
                "binarized-mnist takes no form: it is already binary (fixed binarization)"
            )
        return _binarized_mnist(dirs)
    if base == "mnist":
        s = _mnist_like(dirs, "mnist", "mnist", "mnist_test.npz")
    elif base == "fashion-mnist":
        s = _mnist_like(dirs, "fashion-mnist", "fashion-mnist", None)
    elif base == "notmnist":
        s = _mnist_like(dirs, "notmnist", "notmnist", "notmnist_test.npz")
    elif base == "cifar10":
        s = _cifar10(dirs)
    else:
        raise DataError(
            f"unknown data set {name!r}; known: {', '.join(DATASETS)}, folder:PATH, npz:PATH "
            f"(forms: NAME:binarize, NAME:dynamic, NAME:levels=K)"
        )
    return _apply_form(s, form)
