"""Representation learning: a model's features and a linear probe on them.

``model.features(x)`` gives a ``(B, F)`` vector per image without using any label: NADE's hidden
units after the whole image is seen, PixelRNN/PixelCNN's last hidden layer pooled to 4 x 4, and,
for models without hidden units, the per-dimension conditional log-likelihoods.

A *linear probe* measures how much class information those features hold in a linearly readable
form: a multinomial logistic regression (scikit-learn, features standardized on the training
split) is fitted on the training split, its inverse regularization ``C`` is chosen on the valid
split from a small grid, and its accuracy is reported on the test split, beside the *same*
classifier (same grid, same splits) fitted on the raw pixels.

Binarized MNIST has no labels: probe on ``mnist:binarize`` (the labelled 8-bit MNIST test set,
thresholded at 128 and split 8000/1000/1000 with seed 0) or on ``digits``. Known limit: a
threshold binarization differs from the fixed (sampled) binarization the model was trained on;
both are 0/1 images of the same digits.

A fit that stops at ``max_iter`` before converging is reported in one line on stderr
(:func:`convergence_note`), not as scikit-learn's multi-line ``ConvergenceWarning``.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import outputs
from .data import Splits
from .evaluate import check_compatible, map_images
from .models.base import AutoregressiveModel

#: inverse regularization strengths tried on the valid split
C_GRID = (0.01, 0.1, 1.0)
SPLITS = ("train", "valid", "test")


@torch.no_grad()
def extract_features(
    model: AutoregressiveModel, x: Tensor, data_levels: int, **kw: Any
) -> np.ndarray:
    """``model.features`` of every image, ``(N, F)`` float32 (in eval mode, batched).

    Args:
        x: ``(N, C, H, W)`` uint8 images with ``data_levels`` levels.
        kw: ``batch_size``, ``seed``, ``progress``, ``desc`` (default "features") of
            :func:`chainrule.evaluate.map_images`.
    """
    if len(x) == 0:
        raise ValueError("cannot extract features of an empty set (0 images)")
    check_compatible(model, tuple(x.shape[1:]), data_levels)
    kw.setdefault("desc", "features")
    out = map_images(
        model, x, data_levels, lambda xm: model.features(xm).float().cpu().numpy(), **kw
    )
    return np.concatenate(out)


def dataset_features(
    model: AutoregressiveModel, splits: Splits, *, batch_size: int = 256, progress: bool = False
) -> dict[str, np.ndarray]:
    """Features and labels of every split: ``{"train": (N, F), "train_y": (N,), ...}``.

    Label arrays are present only where the data set has labels. ``progress``: a bar per split
    on a terminal only; False: nothing."""
    if len(splits.train) == 0:
        raise ValueError(f"{splits.name} has an empty training split")
    check_compatible(model, splits.event_shape, splits.levels, splits.name)
    out: dict[str, np.ndarray] = {}
    for s in SPLITS:
        out[s] = extract_features(
            model,
            splits.split(s),
            splits.levels,
            batch_size=batch_size,
            progress=progress,
            desc=f"features ({s})",
        )
        y = splits.labels.get(s)
        if y is not None:
            out[f"{s}_y"] = y.numpy()
    return out


def raw_pixels(splits: Splits) -> dict[str, np.ndarray]:
    """The raw pixels (scaled to [0, 1]) and labels in the layout of :func:`dataset_features`."""
    out: dict[str, np.ndarray] = {}
    for s in SPLITS:
        out[s] = splits.split(s).flatten(1).numpy().astype(np.float32) / max(1, splits.levels - 1)
        y = splits.labels.get(s)
        if y is not None:
            out[f"{s}_y"] = y.numpy()
    return out


def _check_probe_input(feats: dict[str, np.ndarray], name: str) -> None:
    for s in SPLITS:
        if s not in feats:
            raise ValueError(f"{name}: the {s} split is missing (need train, valid and test)")
        if f"{s}_y" not in feats:
            raise ValueError(
                f"{name} has no labels for its {s} split: a probe needs labelled data "
                "(e.g. mnist:binarize or digits; binarized-mnist has no labels)"
            )
        if len(feats[s]) == 0:
            raise ValueError(f"{name}: the {s} split is empty")
        if len(feats[s]) != len(feats[f"{s}_y"]):
            raise ValueError(
                f"{name}: {len(feats[s])} {s} feature rows but {len(feats[f'{s}_y'])} labels"
            )
        if feats[s].ndim != 2:
            raise ValueError(f"{name}: features must be (N, F), got {feats[s].shape} for {s}")
    if len(np.unique(feats["train_y"])) < 2:
        raise ValueError(
            f"{name}: the training split holds a single class; a probe needs two or more"
        )


def _fit_quietly(clf, x: np.ndarray, y: np.ndarray) -> bool:
    """``clf.fit(x, y)``; whether it converged. scikit-learn's ``ConvergenceWarning`` is caught
    (the caller reports it in one line); any other warning is passed on as it was."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return converged


def convergence_note(results: list[tuple[str, dict[str, Any]]]) -> str | None:
    """One line saying which fits stopped at ``max_iter`` before converging, or None.

    Args:
        results: ``(name, result of linear_probe)`` pairs.
    """
    parts, max_iter = [], None
    for name, r in results:
        bad = r.get("not_converged_C") or []
        if bad:
            max_iter = r.get("max_iter", max_iter)
            parts.append(f"C={', '.join(f'{c:g}' for c in bad)} ({name})")
    if not parts:
        return None
    return (
        f"note: the logistic regression did not converge in {max_iter} "
        f"iteration{'' if max_iter == 1 else 's'} for "
        f"{' and '.join(parts)}; raise --max-iter"
    )


def linear_probe(
    feats: dict[str, np.ndarray],
    *,
    c_grid: tuple[float, ...] = C_GRID,
    max_iter: int = 300,
    name: str = "features",
    progress: bool = False,
    note: bool = True,
) -> dict[str, Any]:
    """Fit a logistic-regression probe; choose ``C`` on valid; report accuracies.

    Args:
        feats: ``{"train": (N, F), "train_y": (N,), "valid": ..., "valid_y": ...,
            "test": ..., "test_y": ...}`` (as :func:`dataset_features` returns).
        c_grid: inverse regularization strengths to try.
        progress: say "fitting the linear probe on N images ..." on stderr (not under --quiet).
        note: print the one-line :func:`convergence_note` on stderr when a fit stopped at
            ``max_iter`` (False: only return it, in ``not_converged_C``).

    Returns:
        ``{"test_accuracy", "valid_accuracy", "train_accuracy", "C", "dim", "n_train",
        "fit_seconds", "max_iter", "not_converged_C"}`` (the values of C whose fit stopped at
        ``max_iter`` before converging; empty when all converged).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_probe_input(feats, name)
    if not c_grid:
        raise ValueError("c_grid must hold at least one value")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter (--max-iter) must be a positive int, got {max_iter!r}")
    if progress:
        outputs.say(
            f"fitting the linear probe on {len(feats['train'])} images ({name}, "
            f"{len(c_grid)} value{'s' if len(c_grid) != 1 else ''} of C) ..."
        )
    t0 = time.perf_counter()
    best: tuple[float, float, Any] | None = None
    not_converged: list[float] = []
    for c in c_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        if not _fit_quietly(clf, feats["train"], feats["train_y"]):
            not_converged.append(c)
        acc = float(clf.score(feats["valid"], feats["valid_y"]))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    assert best is not None
    valid_acc, c, clf = best
    result = {
        "test_accuracy": float(clf.score(feats["test"], feats["test_y"])),
        "valid_accuracy": valid_acc,
        "train_accuracy": float(clf.score(feats["train"], feats["train_y"])),
        "C": c,
        "dim": int(feats["train"].shape[1]),
        "n_train": int(len(feats["train"])),
        "fit_seconds": time.perf_counter() - t0,
        "max_iter": max_iter,
        "not_converged_C": not_converged,
    }
    if note:
        line = convergence_note([(name, result)])
        if line:
            print(line, file=sys.stderr, flush=True)
    return result


def probe_vs_pixels(
    model: AutoregressiveModel,
    splits: Splits,
    *,
    batch_size: int = 256,
    feats: dict[str, np.ndarray] | None = None,
    progress: bool = False,
    note: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """The probe on the model's features beside the same probe on raw pixels.

    Args:
        feats: features already extracted (e.g. read from ``chainrule features``' .npz), one
            row per image of each split; labels missing there are taken from ``splits``.
            None: extracted now.
        progress: bars for the features and a line per fit (terminal-only bars,
            :mod:`chainrule.outputs`); False: nothing.
        note: one line on stderr (:func:`convergence_note`) when any fit, of either probe,
            stopped at ``max_iter`` before converging.
        kw: passed to :func:`linear_probe` (``c_grid``, ``max_iter``).
    """
    pixels = raw_pixels(splits)
    _check_probe_input(pixels, splits.name)  # labels first: features cost a pass of the model
    if feats is None:
        feats = dataset_features(model, splits, batch_size=batch_size, progress=progress)
    else:
        for s in SPLITS:
            rows = len(feats[s]) if s in feats else 0
            if rows != len(pixels[s]):
                raise ValueError(
                    f"the features do not match {splits.name}: their {s} split has {rows} rows, "
                    f"the data {len(pixels[s])} images"
                )
        feats = {**{k: v for k, v in pixels.items() if k.endswith("_y")}, **feats}
    names = (f"{model.name} features on {splits.name}", f"pixels of {splits.name}")
    fits = [
        linear_probe(f, name=n, progress=progress, note=False, **kw)
        for f, n in zip((feats, pixels), names, strict=True)
    ]
    line = convergence_note(list(zip(names, fits, strict=True)))
    if note and line:
        print(line, file=sys.stderr, flush=True)
    return {"data": splits.name, "features": fits[0], "pixels": fits[1]}
