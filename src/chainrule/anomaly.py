"""Anomaly detection with an exact likelihood: scores, out-of-distribution sets, one-call detection.

A model trained on some images gives every image its exact negative log-likelihood
``-log p(x)`` (nats). Images unlike the training data should get a *high* NLL, so the NLL is an
anomaly score. Three scores are computed for every image:

``nll``
    ``-log p(x)`` in nats per image.
``bits_per_dim``
    ``-log p(x) / (D ln 2)``. For one model and one image size it is a monotone function of the
    NLL, so it ranks images identically (same AUROC); it is the unit comparable across sizes.
``complexity``
    The complexity-corrected score of Serra et al. (2020), "Input complexity and
    out-of-distribution detection with likelihood-based generative models" (ICLR):
    ``S(x) = -log2 p(x) - L(x)`` in bits, where ``L(x)`` is the length in bits of the image
    losslessly compressed by a generic compressor. Raw likelihood is dominated by how *simple*
    an image is (Nalisnick et al. 2019, "Do deep generative models know what they don't know?"):
    a plain image is likely under any model. Subtracting a generic compressor's code length asks
    instead "how much better than a generic compressor does the model do on this image?".

The compressor (``compressor=``) is either

* ``"png"`` (default): Pillow's PNG encoder at ``compress_level=9``; binary images are written
  as 1-bit PNG (mode ``"1"``), other single-channel images as 8-bit greyscale holding the level
  numbers ``0 .. K-1`` as they are, three channels as RGB, any other channel count as the
  channels stacked vertically in greyscale. ``L(x)`` includes PNG's fixed header and chunk
  overhead (a constant shift of the score for a given size, so it changes no ranking).
* ``"zlib"``: ``zlib.compress(level=9)`` of the raw bytes (one byte per dimension, levels as
  they are), a simpler and faster stand-in.

Serra et al. used PNG, JPEG2000 and FLIF; FLIF compresses better and gave them the best
results. Neither FLIF nor JPEG2000 is used here (no dependency beyond Pillow and zlib).

Out-of-distribution sets (:func:`load_ood`) are data-set names (``notmnist:binarize``, ...)
plus built-in transformations of the in-distribution data:

==================  ============================================================================
``noise``           uniform noise: every dimension drawn uniformly from the levels ``0..K-1``
                    of the in-distribution data (binary: fair coin flips); as many images as the
                    in-distribution split, seed 0.
``flip``            the in-distribution split turned upside down (vertical flip).
``flip:NAME``       the data set NAME's split turned upside down (e.g. ``flip:digits``).
``hflip[:NAME]``    mirrored left-right.
``invert[:NAME]``   levels inverted, ``v -> K-1-v`` (black on white).
==================  ============================================================================

Known limits: a complexity-corrected score favours sets that are *complex* (noise is far from
any compressor's model too); and no score here is calibrated across models.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import outputs
from .data import DATASETS, Splits, load_dataset
from .evaluate import (
    check_compatible,
    detection_metrics,
    flag_rate,
    per_image_nll,
    threshold_for_false_alarm_rate,
)
from .models.base import AutoregressiveModel

SCORES = ("nll", "bits_per_dim", "complexity")
COMPRESSORS = ("png", "zlib")
#: units of each score, for tables and axis labels
SCORE_UNITS = {
    "nll": "NLL (nats per image)",
    "bits_per_dim": "bits/dim",
    "complexity": "complexity-corrected score (bits)",
}
TRANSFORMS = ("flip", "hflip", "invert")


# ---------------------------------------------------------------------- lossless code length
def _as_uint8_images(x: Tensor | np.ndarray) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 255 or not np.array_equal(a, np.round(a))):
        raise ValueError("compression needs whole-number levels in 0..255")
    return a.astype(np.uint8)


def png_encode(img: np.ndarray, levels: int) -> bytes:
    """One ``(C, H, W)`` uint8 image as PNG bytes (the layout of the module docstring)."""
    from PIL import Image

    c, h, w = img.shape
    if c == 1 and levels == 2:
        pil = Image.fromarray(img[0].astype(bool))  # mode "1": one bit per pixel
    elif c == 1:
        pil = Image.fromarray(np.ascontiguousarray(img[0]))
    elif c == 3:
        pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
    else:
        pil = Image.fromarray(np.ascontiguousarray(img.reshape(c * h, w)))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def compression_bits(
    x: Tensor | np.ndarray, levels: int, compressor: str = "png", *, progress: bool = False
) -> np.ndarray:
    """Lossless code length ``L(x)`` of every image, in bits.

    Args:
        x: ``(N, C, H, W)`` images holding whole numbers ``0 .. levels-1``.
        levels: number of levels K of the data (2 for binary).
        compressor: ``"png"`` or ``"zlib"`` (see the module docstring).
        progress: a bar on a terminal (:func:`chainrule.outputs.progress`); False: nothing.

    Returns:
        ``(N,)`` float64 code lengths in bits (8 times the compressed byte count).
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compressor!r}: use one of {', '.join(COMPRESSORS)}")
    a = _as_uint8_images(x)
    images = outputs.progress(a, desc=f"{compressor} lengths", total=len(a)) if progress else a
    if compressor == "png":
        sizes = [len(png_encode(img, levels)) for img in images]
    else:
        sizes = [len(zlib.compress(img.tobytes(), 9)) for img in images]
    return 8.0 * np.asarray(sizes, dtype=np.float64)


# ---------------------------------------------------------------------- scores
def anomaly_scores(
    model: AutoregressiveModel,
    x: Tensor,
    data_levels: int,
    *,
    compressor: str = "png",
    batch_size: int = 256,
    progress: bool = False,
    code_bits: np.ndarray | None = None,
    mask: Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Every anomaly score of every image (higher = more anomalous).

    With ``mask`` (``(C, H, W)`` boolean, True = visible) the images have missing pixels: the
    NLL is -log p(visible) (the exact marginal, :func:`chainrule.evaluate.visible_log_prob`),
    bits/dim are per visible dimension, and the code length is that of the image with the
    missing pixels set to 0.

    Args:
        model: a trained model.
        x: ``(N, C, H, W)`` uint8 images with ``data_levels`` levels, already checked as
            compatible with the model (:func:`chainrule.evaluate.check_compatible`).
        data_levels: levels of the data.
        compressor: for the complexity-corrected score.
        progress: bars on a terminal (NLL, then code lengths); False: nothing.
        code_bits: the images' code lengths if already known (``compression_bits(x, ...)``
            does not depend on the model: scoring one set with several models reuses it).

    Returns:
        ``{"nll": (N,) nats, "bits_per_dim": (N,), "complexity": (N,) bits,
        "compression_bits": (N,) bits}`` as float64 arrays.
    """
    if len(x) == 0:
        raise ValueError("cannot score an empty set of images (0 images)")
    nll = per_image_nll(
        model, x, data_levels, mask=mask, batch_size=batch_size, progress=progress
    ).numpy()
    seen = x if mask is None else x * mask.to(x.device, x.dtype)
    comp = (
        compression_bits(seen, data_levels, compressor, progress=progress)
        if code_bits is None
        else code_bits
    )
    if len(comp) != len(x):
        raise ValueError(f"code_bits has {len(comp)} entries for {len(x)} images")
    nll_bits = nll / math.log(2)
    return {
        "nll": nll,
        "bits_per_dim": nll_bits / (model.dim if mask is None else int(mask.sum())),
        "complexity": nll_bits - comp,
        "compression_bits": comp,
    }


@torch.no_grad()
def pixel_nll(
    model: AutoregressiveModel,
    x: Tensor,
    data_levels: int,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Per-pixel NLL maps ``-log p(x_i | x_<i)``, summed over channels: ``(N, H, W)`` nats.

    Real-valued models give densities of dequantized values (no ``ln K`` offset added here).
    ``progress``: a bar on a terminal (:func:`chainrule.outputs.progress`); False: nothing.
    """
    from .evaluate import in_batches, to_model_input

    g = torch.Generator().manual_seed(0)
    xm = to_model_input(model, x, data_levels, g)  # one draw for all: batching changes nothing
    out = in_batches(
        model,
        xm,
        lambda xb: -model.conditional_log_probs(xb).sum(1),
        batch_size=batch_size,
        progress=progress,
        desc="NLL maps",
    )
    return torch.cat(out).double().cpu()


# ---------------------------------------------------------------------- OOD sets
#: the built-in out-of-distribution sets (beside data-set names), for messages
SPECIAL_OOD = "noise, flip[:NAME], hflip[:NAME], invert[:NAME]"


def _unknown_ood(spec: str, name: str) -> ValueError:
    return ValueError(
        f"unknown data set {name!r} in OOD set {spec!r}; use {SPECIAL_OOD}, or a data set: "
        f"{', '.join(DATASETS)}, folder:PATH, npz:PATH (forms NAME:binarize, NAME:dynamic, "
        "NAME:levels=K)"
    )


def _check_ood_name(spec: str, name: str) -> None:
    """Refuse a data-set name that is none (before loading anything)."""
    if name.startswith(("folder:", "npz:")):
        return
    if name.partition(":")[0] not in DATASETS:
        raise _unknown_ood(spec, name)


def ood_binarize_hint(spec: str) -> str:
    """The ``--ood`` form that binarizes an OOD set (for a binary model meeting 8-bit data)."""
    head, _, rest = spec.partition(":")
    prefix, name = (f"{head}:", rest) if head in TRANSFORMS and rest else ("", spec)
    if not name or name.startswith(("folder:", "npz:")) or name.partition(":")[0] not in DATASETS:
        return "--ood NAME:binarize"
    return f"--ood {prefix}{name.partition(':')[0]}:binarize"


def _uniform_noise(n: int, shape: tuple[int, int, int], levels: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, *shape), generator=g).to(torch.uint8)


def load_ood(
    spec: str,
    reference: Splits,
    *,
    split: str = "test",
    data_dir: str | None = None,
    seed: int = 0,
) -> tuple[Tensor, int, str]:
    """Images of an out-of-distribution set named ``spec`` (see the module docstring).

    Args:
        spec: a data-set name (``notmnist:binarize``), ``noise``, or a transformation
            ``flip``/``hflip``/``invert`` optionally followed by ``:NAME``.
        reference: the in-distribution data (for ``noise`` and the bare transformations).
        split: which split of the named data set to use (``"all"``: the three together);
            ``noise`` draws as many images as the reference's test split.

    Returns:
        ``(images, levels, description)``: uint8 ``(N, C, H, W)``, the number of levels.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"OOD set must be a non-empty name, got {spec!r}")
    if spec == "noise":
        x = reference.test
        return (
            _uniform_noise(len(x), reference.event_shape, reference.levels, seed),
            reference.levels,
            f"uniform noise over {reference.levels} levels (seed {seed})",
        )
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"unknown split {split!r}: use train, valid, test or all")
    head, _, rest = spec.partition(":")
    if head in TRANSFORMS:
        if rest:
            _check_ood_name(spec, rest)
        base = reference if not rest else load_dataset(rest, data_dir=data_dir)
        x = _split(base, split)
        if head == "flip":
            x = torch.flip(x, dims=[2])
        elif head == "hflip":
            x = torch.flip(x, dims=[3])
        else:
            x = (base.levels - 1 - x.long()).to(torch.uint8)
        what = {"flip": "upside down", "hflip": "mirrored left-right", "invert": "inverted"}[head]
        return x, base.levels, f"{base.name} {split} {what}"
    _check_ood_name(spec, spec)
    s = load_dataset(spec, data_dir=data_dir)
    return _split(s, split), s.levels, f"{s.describe()} ({split})"


def _split(s: Splits, split: str) -> Tensor:
    if split == "all":  # an OOD set is never trained on: all of its images may be used
        return torch.cat([s.train, s.valid, s.test])
    return s.split(split)


# ---------------------------------------------------------------------- detection in one call
@dataclass
class Detection:
    """What :func:`detect` found: metrics per score, threshold and false-alarm rates."""

    in_name: str
    ood_name: str
    compressor: str
    target_false_alarm: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    scores_in: dict[str, np.ndarray] = field(default_factory=dict)
    scores_out: dict[str, np.ndarray] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "in": self.in_name,
            "ood": self.ood_name,
            "compressor": self.compressor,
            "target_false_alarm_rate": self.target_false_alarm,
            "metrics": self.metrics,
        }

    def table(self) -> str:
        lines = [
            f"{'score':14s} {'AUROC':>7s} {'AUPR':>7s} {'FPR@95':>7s}  "
            f"{'threshold':>11s} {'false alarms':>12s} {'OOD caught':>10s}"
        ]
        for name, m in self.metrics.items():
            lines.append(
                f"{name:14s} {m['auroc']:7.4f} {m['aupr']:7.4f} {m['fpr_at_95_tpr']:7.4f}  "
                f"{m['threshold']:11.4g} {m['false_alarm_rate']:12.4f} {m['detection_rate']:10.4f}"
            )
        return "\n".join(lines)


def _check_set(
    x: Tensor,
    levels: int,
    model: AutoregressiveModel,
    name: str,
    binarize_hint: str = "--in NAME:binarize",
) -> None:
    if len(x) == 0:
        raise ValueError(f"{name} is an empty set (0 images)")
    check_compatible(model, tuple(x.shape[1:]), levels, name, binarize_hint=binarize_hint)


def _check_max_images(n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"the number of images to use must be a positive int, got {n!r}")


def _subset(x: Tensor, n: int | None, seed: int = 0) -> Tensor:
    """``n`` images of ``x`` drawn at random with ``seed`` (in their order; all when ``n`` is
    None or ``>= len(x)``): :func:`chainrule.outputs.random_subset`, as every command does
    (test splits are often sorted by class, so the first N are no sample)."""
    _check_max_images(n)
    if n is None or n >= len(x):
        return x
    return x[outputs.random_subset(len(x), n, seed)]


def detect(
    model: AutoregressiveModel,
    in_data: Splits,
    ood_spec: str,
    *,
    data_dir: str | None = None,
    scores: tuple[str, ...] = SCORES,
    compressor: str = "png",
    false_alarm_rate: float = 0.05,
    max_images: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    mask: Tensor | None = None,
) -> Detection:
    """Score in-distribution test images against an OOD set and measure how well each score
    separates them.

    The threshold of each score is chosen on the in-distribution *valid* split (held out) so that
    at most ``false_alarm_rate`` of it is flagged; the false-alarm rate reported is then measured
    on the in-distribution *test* split, and the detection rate on the OOD set.

    ``max_images`` caps each set (test, valid, OOD) at that many images drawn at random with
    ``seed`` (:func:`chainrule.outputs.random_subset`, the same draw for a set of a given size
    as every other command's); ``progress`` shows bars on a terminal only. ``mask`` (True =
    visible): every image has the same pixels missing, and is scored by its visible ones
    (:func:`anomaly_scores`).

    Raises:
        ValueError: a set of another shape or number of levels than the model's, or an empty set.
    """
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise ValueError(f"unknown score(s) {unknown}: use some of {', '.join(SCORES)}")
    _check_max_images(max_images)
    x_test = _subset(in_data.test, max_images, seed)
    x_valid = _subset(in_data.valid, max_images, seed)
    _check_set(x_test, in_data.levels, model, f"in-distribution set {in_data.name}")
    _check_set(x_valid, in_data.levels, model, f"in-distribution set {in_data.name} (valid)")
    x_ood, ood_levels, ood_desc = load_ood(ood_spec, in_data, data_dir=data_dir, seed=seed)
    x_ood = _subset(x_ood, max_images, seed)
    _check_set(x_ood, ood_levels, model, f"OOD set {ood_spec}", ood_binarize_hint(ood_spec))

    def scores_of(x: Tensor, levels: int) -> dict[str, np.ndarray]:
        return anomaly_scores(
            model,
            x,
            levels,
            compressor=compressor,
            batch_size=batch_size,
            progress=progress,
            mask=mask,
        )

    s_test, s_valid = scores_of(x_test, in_data.levels), scores_of(x_valid, in_data.levels)
    s_ood = scores_of(x_ood, ood_levels)
    det = Detection(in_data.name, ood_desc, compressor, false_alarm_rate)
    return compare_scores(det, s_test, s_valid, s_ood, scores)


def compare_scores(
    det: Detection,
    s_test: dict[str, np.ndarray],
    s_valid: dict[str, np.ndarray],
    s_ood: dict[str, np.ndarray],
    scores: tuple[str, ...] = SCORES,
) -> Detection:
    """Fill ``det`` with the metrics of every score, given the scores of in-distribution test,
    in-distribution valid (for the threshold) and OOD images (as :func:`anomaly_scores` gives)."""
    for name in scores:
        m = detection_metrics(s_test[name], s_ood[name])
        thr = threshold_for_false_alarm_rate(s_valid[name], det.target_false_alarm)
        m.update(
            threshold=thr,
            false_alarm_rate=flag_rate(s_test[name], thr),
            detection_rate=flag_rate(s_ood[name], thr),
            mean_in=float(np.mean(s_test[name])),
            mean_out=float(np.mean(s_ood[name])),
        )
        det.metrics[name] = m
        det.scores_in[name] = s_test[name]
        det.scores_out[name] = s_ood[name]
    return det
