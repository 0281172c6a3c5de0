"""Receptive fields: which dimensions of the input influence one conditional, measured by
gradients through the real model.

``receptive_field(model, pixel=(r, c), channel=k)`` returns a ``(C, H, W)`` map of
``mean |d out / d x|`` over a few random images, where ``out`` is the output-head parameters
of dimension ``(k, r, c)`` when the model exposes them (``_params``: PixelCNN, Row LSTM,
Diagonal BiLSTM) and the conditional log-likelihoods of every level otherwise. A zero entry
means "outside the context" (exactly zero, since masks are multiplied in, not approximated);
entries after ``(k, r, c)`` in raster order are zero for every causal model. The lecture's
picture falls out: the Row LSTM's context is a triangle above the pixel, the Diagonal BiLSTM's
is every previous pixel, and a stack of 3 x 3 masked convolutions (PixelCNN) has a blind spot
to the upper right.

:func:`save_receptive_field_png` draws the map: grey levels (log scale) for influence, black
for none, red for the chosen dimension, blue for the dimensions after it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from . import outputs
from .models.base import AutoregressiveModel
from .plots import _make_parent

#: the largest side, in pixels, of a receptive-field PNG (a bigger --scale is refused up front)
MAX_PNG_SIDE = 16384


def _check_target(
    model: AutoregressiveModel, pixel: tuple[int, int], channel: int
) -> tuple[int, int, int]:
    c, h, w = model.event_shape
    try:
        r, col = (int(v) for v in pixel)
    except (TypeError, ValueError):
        raise ValueError(f"pixel must be (row, column), got {pixel!r}") from None
    if not (0 <= r < h and 0 <= col < w):
        raise ValueError(f"pixel must lie in the {h} x {w} image (0-based), got ({r}, {col})")
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < c:
        raise ValueError(f"channel must be an int in 0..{c - 1}, got {channel!r}")
    return channel, r, col


def receptive_field(
    model: AutoregressiveModel,
    pixel: tuple[int, int],
    channel: int = 0,
    *,
    samples: int = 8,
    seed: int = 0,
) -> Tensor:
    """Influence of every input dimension on the conditional of ``(channel, *pixel)``.

    Args:
        model: a discrete model whose conditionals are differentiable in the input.
        pixel: ``(row, column)``, 0-based.
        channel: colour channel of the target dimension.
        samples: number of random images the gradient magnitudes are averaged over.
        seed: seed of those images.

    Returns:
        ``(C, H, W)`` float64 tensor, ``>= 0``; zero where the input has no influence.
    """
    if model.levels is None:
        raise ValueError("receptive_field needs a discrete model (levels=2 or K)")
    if not getattr(model, "input_differentiable", True):
        raise ValueError(
            f"model {model.name!r} looks its conditionals up in tables: no gradient in x"
        )
    k, r, col = _check_target(model, pixel, channel)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.levels, (samples, *model.event_shape), generator=g)
    x = x.to(device=model._device, dtype=model._dtype).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            params_fn = getattr(model, "_params", None)
            if params_fn is not None:
                out = params_fn(x)[:, k, r, col]  # (S, P) head parameters
            else:
                out = model._conditional_log_probs(x)[:, k, r, col]  # (S,)
            grads = [
                torch.autograd.grad(o, x, retain_graph=True)[0].abs()
                for o in out.reshape(samples, -1).sum(0)
            ]
    finally:
        model.train(was_training)
    field = torch.stack(grads).sum(0).mean(0).detach().to("cpu", torch.float64)  # (C, H, W)
    if params_fn is None:
        field[k, r, col] = 0.0  # the scored value itself is not context
    return field


def context_mask(field: Tensor) -> Tensor:
    """Boolean ``(C, H, W)``: True where the dimension influences the target."""
    return field > 0


def save_receptive_field_png(
    field: Tensor, path: str | Path, pixel: tuple[int, int], channel: int = 0, scale: int = 16
) -> Path:
    """Write a PNG of a receptive field (channels side by side).

    Args:
        field: ``(C, H, W)`` from :func:`receptive_field`.
        path: output file (``.png``).
        pixel, channel: the target dimension (drawn red; dimensions after it blue).
        scale: pixels per image pixel.
    """
    from PIL import Image

    c, h, w = field.shape
    r0, c0 = pixel
    f = field.to(torch.float64)
    pos = f[f > 0]
    lo = math.log(pos.min().item()) if len(pos) else 0.0
    hi = math.log(pos.max().item()) if len(pos) else 1.0
    gap = 1
    img = torch.full((h, c * (w + gap) - gap, 3), 255, dtype=torch.uint8)
    for k in range(c):
        for r in range(h):
            for col in range(w):
                v = f[k, r, col].item()
                after = (r, col, k) > (r0, c0, channel)
                if (r, col, k) == (r0, c0, channel):
                    rgb = (220, 30, 30)
                elif v > 0:
                    t = 0.25 + 0.75 * ((math.log(v) - lo) / (hi - lo) if hi > lo else 1.0)
                    rgb = (int(255 * t),) * 3
                elif after:
                    rgb = (60, 80, 160)
                else:
                    rgb = (0, 0, 0)
                img[r, k * (w + gap) + col] = torch.tensor(rgb, dtype=torch.uint8)
    path = Path(path)
    _make_parent(path)
    im = Image.fromarray(img.numpy(), "RGB").resize(
        (img.shape[1] * scale, h * scale), Image.Resampling.NEAREST
    )
    return outputs.save_pil(im, path)
