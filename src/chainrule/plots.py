"""Pictures people look at: sample grids, training curves (written as PNG).

Grids are drawn with NumPy and Pillow (pixel-exact, nearest-neighbour upscaling); curves and
histograms with matplotlib's Agg backend (no screen needed). All functions return the path
written.

Every file goes through :mod:`chainrule.outputs` (rendered in memory, then written atomically):
a full disk or an interruption never leaves a truncated PNG nor replaces a good one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import outputs

#: colours shared by every plot
TRAIN_COLOUR = "#1f77b4"
VALID_COLOUR = "#d62728"


def _to_uint8(x: Tensor, levels: int | None) -> np.ndarray:
    """``(N, C, H, W)`` levels (or [0,1] values) -> ``(N, H, W, C)`` uint8."""
    x = x.detach().to(torch.float64).cpu()
    scale = 1.0 if levels is None else float(levels - 1)
    img = (x / scale).clamp(0, 1) * 255.0
    return img.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(x: Tensor, levels: int | None, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images into one ``(H', W', 3)`` uint8 array with a grey border."""
    imgs = _to_uint8(x, levels)
    n, h, w, c = imgs.shape
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, 3), 128, np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = imgs[k]
    return grid


def _make_parent(path: Path) -> None:
    """Create the folder of ``path`` if needed; an :class:`~chainrule.outputs.OutputError`
    (one line) when it cannot be (a part of the path is a file, no permission, ...)."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for up in [parent, *parent.parents]:
            if up.exists() and not up.is_dir():
                raise outputs.OutputError(
                    f"cannot write {path}: {up} is a file, not a folder"
                ) from None
        raise outputs.OutputError(
            f"cannot write {path}: cannot create folder {parent}: {e.strerror or e}"
        ) from None


def save_image(
    arr: np.ndarray, path: str | Path, min_size: int = 256, caption: str | None = None
) -> Path:
    """Save an ``(H, W, 3)`` uint8 array, upscaled by an integer factor to at least ``min_size``,
    with ``caption`` (one or more lines) written in a white band above it."""
    from PIL import Image, ImageDraw

    path = Path(path)
    _make_parent(path)
    factor = max(1, int(math.ceil(min_size / max(arr.shape[:2]))))
    img = Image.fromarray(arr).resize(
        (arr.shape[1] * factor, arr.shape[0] * factor), Image.Resampling.NEAREST
    )
    if caption:
        import textwrap

        width = max(20, img.width // 6)  # PIL's default font: about 6 pixels a character
        lines = [w for line in caption.splitlines() for w in textwrap.wrap(line, width) or [""]]
        band = 6 + 14 * len(lines)
        framed = Image.new("RGB", (img.width, img.height + band), "white")
        framed.paste(img, (0, band))
        draw = ImageDraw.Draw(framed)
        for k, line in enumerate(lines):
            draw.text((4, 3 + 14 * k), line, fill="black")
        img = framed
    return outputs.save_pil(img, path)


def sample_grid(x: Tensor, levels: int | None, path: str | Path, nrow: int | None = None) -> Path:
    """Write a grid of images (samples, data, completions) as PNG."""
    return save_image(image_grid(x, levels, nrow), path)


def training_curve(metrics: list[dict], path: str | Path, title: str = "") -> Path:
    """Train and valid NLL (nats per image) per epoch, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(
        epochs, [m["train_nll"] for m in metrics], "o-", color=TRAIN_COLOUR, label="train", ms=3
    )
    checked = [m for m in metrics if m.get("valid_nll") is not None]  # --valid-every N
    ax.plot(
        [m["epoch"] for m in checked],
        [m["valid_nll"] for m in checked],
        "s-",
        color=VALID_COLOUR,
        label="valid",
        ms=3,
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per image)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _write_figure(fig, path)


# ---------------------------------------------------------------------- anomaly detection pictures
#: in-distribution vs out-of-distribution, everywhere (same blue/red as train/valid)
IN_COLOUR = TRAIN_COLOUR
OOD_COLOUR = VALID_COLOUR
#: one colour per anomaly score on ROC plots
SCORE_COLOURS = {"nll": "#1f77b4", "bits_per_dim": "#2ca02c", "complexity": "#9467bd"}
#: bits/dim ranks images exactly like the NLL (same curve): dashed so that both stay visible
SCORE_STYLES = {"bits_per_dim": "--"}
#: colour map of "surprise" maps (per-pixel NLL): white = expected, dark red = surprising
SURPRISE_CMAP = "Reds"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` atomically (its folder made if needed) and close it, written or not."""
    plt = _pyplot()
    path = Path(path)
    try:
        _make_parent(path)
        return outputs.save_figure(fig, path)
    finally:
        plt.close(fig)


def _save_figure(fig, path: str | Path) -> Path:
    fig.tight_layout()
    return _write_figure(fig, path)


def pixel_nll_maps(
    x: Tensor,
    nll_maps: Tensor,
    levels: int | None,
    path: str | Path,
    titles: list[str] | None = None,
    title: str = "",
) -> Path:
    """Images (top row) above their per-pixel NLL maps (bottom row), as PNG.

    Args:
        x: ``(N, C, H, W)`` images (levels, or values in [0, 1] when ``levels`` is None).
        nll_maps: ``(N, H, W)`` per-pixel NLL in nats (``-log p(x_i | x_<i)`` summed over channels).
        titles: one short caption per image (e.g. its total NLL).

    All maps share one colour scale (0 to the largest value), shown by one colour bar.
    """
    plt = _pyplot()
    n = len(x)
    if n == 0 or len(nll_maps) != n:
        raise ValueError(
            f"pixel_nll_maps needs as many maps as images, got {len(nll_maps)} and {n}"
        )
    imgs = _to_uint8(x, levels)
    maps = nll_maps.detach().double().cpu().numpy()
    vmax = max(float(maps.max()), 1e-9)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.9, 3.0), dpi=120, squeeze=False)
    im = None
    for k in range(n):
        img = imgs[k]
        axes[0, k].imshow(
            img[..., 0] if img.shape[-1] == 1 else img,
            cmap="gray",
            vmin=0,
            vmax=255,
            interpolation="nearest",
        )
        im = axes[1, k].imshow(
            maps[k], cmap=SURPRISE_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest"
        )
        if titles:
            axes[0, k].set_title(titles[k], fontsize=7)
        for a in axes[:, k]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("NLL per pixel", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    bar = fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.05, pad=0.02)
    bar.set_label("nats", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _write_figure(fig, path)


def score_histogram(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    path: str | Path,
    xlabel: str = "anomaly score",
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """Overlaid histograms of the scores of two sets (shared bins, densities), as PNG.

    A dashed line marks ``threshold`` when one is given (images above it are flagged).
    """
    plt = _pyplot()
    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.hist(
        a, bins=bins, density=True, alpha=0.55, color=IN_COLOUR, label=f"{labels[0]} (n={a.size})"
    )
    ax.hist(
        b, bins=bins, density=True, alpha=0.55, color=OOD_COLOUR, label=f"{labels[1]} (n={b.size})"
    )
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def roc_plot(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = ""
) -> Path:
    """ROC curves (false-positive rate vs true-positive rate), one per score, as PNG.

    Args:
        curves: ``{score name: (scores_in, scores_out)}``; OOD is the positive class and a
            higher score means more anomalous. The legend gives each AUROC (scikit-learn).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    for k, (name, (s_in, s_out)) in enumerate(curves.items()):
        s_in, s_out = np.asarray(s_in).ravel(), np.asarray(s_out).ravel()
        y = np.r_[np.zeros(s_in.size), np.ones(s_out.size)]
        s = np.r_[s_in, s_out]
        fpr, tpr, _ = roc_curve(y, s)
        colour = SCORE_COLOURS.get(name, f"C{k}")
        ax.plot(
            fpr,
            tpr,
            color=colour,
            lw=1.5,
            ls=SCORE_STYLES.get(name, "-"),
            label=f"{name} (AUROC {roc_auc_score(y, s):.3f})",
        )
    ax.axhline(0.95, color="black", lw=0.6, ls="--")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save_figure(fig, path)
