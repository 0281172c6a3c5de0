"""Pictures people look at: sample grids, training curves (written as PNG).

Grids are drawn with NumPy and Pillow (pixel-exact, nearest-neighbour upscaling); curves and
histograms with matplotlib's Agg backend (no screen needed). All functions return the path
written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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


def save_image(arr: np.ndarray, path: str | Path, min_size: int = 256) -> Path:
    """Save an ``(H, W, 3)`` uint8 array, upscaled by an integer factor to at least ``min_size``."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    factor = max(1, int(math.ceil(min_size / max(arr.shape[:2]))))
    img = Image.fromarray(arr).resize((arr.shape[1] * factor, arr.shape[0] * factor), Image.NEAREST)
    img.save(path)
    return path


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
    ax.plot(epochs, [m["train_nll"] for m in metrics], "o-", color=TRAIN_COLOUR, label="train", ms=3)
    ax.plot(epochs, [m["valid_nll"] for m in metrics], "s-", color=VALID_COLOUR, label="valid", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per image)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
