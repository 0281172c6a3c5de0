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
    if not model.is_discrete:
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
        (img.shape[1] * scale, h * scale), Image.NEAREST
    )
    return outputs.save_pil(im, path)


# ---------------------------------------------------------------------- command line
def add_cli_parser(sub) -> None:
    """Add ``chainrule receptive-field`` to the CLI's subparsers (called by ``cli.py``)."""
    from .cli import _add_model_flags

    p = sub.add_parser(
        "receptive-field",
        help="PNG of which earlier pixels influence one pixel (gradients through the model)",
        description="Draw the receptive field of one dimension: grey = influences it (log "
        "scale), black = earlier but outside the context, red = the dimension, blue = later. "
        "From a trained checkpoint, or from a freshly built model with random weights.",
    )
    p.add_argument(
        "--model", default=None, help="model to build (e.g. row-lstm, diagonal-bilstm, pixelcnn)"
    )
    p.add_argument("--checkpoint", default=None, help="use a trained run instead of --model")
    p.add_argument("--shape", default="1x16x16", help="CxHxW of a built model (default 1x16x16)")
    p.add_argument("--levels", type=int, default=2, help="levels of a built model (default 2)")
    p.add_argument("--pixel", default=None, help="ROW,COL, 0-based (default: bottom row, middle)")
    p.add_argument(
        "--channel", type=int, default=0, help="colour channel of the dimension (default 0)"
    )
    p.add_argument(
        "--samples", type=int, default=8, help="random images the gradients are averaged over"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the images")
    p.add_argument("--scale", type=int, default=16, help="PNG pixels per image pixel")
    p.add_argument("--out", default=None, help="PNG file (default receptive-field-MODEL.png)")
    _add_model_flags(p)
    p.set_defaults(func=cmd_receptive_field)


def cmd_receptive_field(args) -> int:
    import chainrule

    from .cli import UserError, model_options, parse_shape

    if (args.model is None) == (args.checkpoint is None):
        raise UserError("give exactly one of --model NAME or --checkpoint RUN_DIR")
    # everything that needs no model is checked first, the output path included
    if args.samples < 1:
        raise UserError(f"--samples must be a positive int, got {args.samples}")
    if args.scale < 1:
        raise UserError(f"--scale must be a positive int (PNG pixels per pixel), got {args.scale}")
    pixel = None
    if args.pixel is not None:
        try:
            pixel = tuple(int(v) for v in args.pixel.split(","))
        except ValueError:
            raise UserError(f"--pixel must be ROW,COL (e.g. 7,4), got {args.pixel!r}") from None
        if len(pixel) != 2:
            raise UserError(f"--pixel must be ROW,COL (e.g. 7,4), got {args.pixel!r}")
    if args.out is not None:
        outputs.check_output(args.out, what="PNG")
    if args.checkpoint is not None:
        model = chainrule.load(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        model = chainrule.build(
            args.model, parse_shape(args.shape), args.levels, **model_options(args)
        )
    c, h, w = model.event_shape
    if pixel is None:
        pixel = (h - 1, w // 2)
    if not (0 <= pixel[0] < h and 0 <= pixel[1] < w):
        raise UserError(
            f"--pixel must lie in the {h} x {w} image (ROW in 0..{h - 1}, COL in 0..{w - 1}), "
            f"got {args.pixel}"
        )
    if not 0 <= args.channel < c:
        raise UserError(
            f"--channel must be in 0..{c - 1} for {c}-channel images ({model.name}), "
            f"got {args.channel}"
        )
    side = max(c * (w + 1) - 1, h) * args.scale
    if side > MAX_PNG_SIDE:
        raise UserError(
            f"--scale {args.scale} would make a PNG {side} pixels wide; "
            f"use at most {MAX_PNG_SIDE // max(c * (w + 1) - 1, h)} for {c}x{h}x{w} images"
        )
    out = outputs.check_output(args.out or f"receptive-field-{model.name}.png", what="PNG")
    field = receptive_field(model, pixel, args.channel, samples=args.samples, seed=args.seed)
    save_receptive_field_png(field, out, pixel, args.channel, scale=args.scale)
    earlier = int(
        sum(
            1
            for k in range(c)
            for r in range(h)
            for col in range(w)
            if (r, col, k) < (pixel[0], pixel[1], args.channel)
        )
    )
    seen = int((field > 0).sum())
    print(
        f"{model.name}: dimension (channel {args.channel}, row {pixel[0]}, col {pixel[1]}) is "
        f"influenced by {seen} of the {earlier} earlier dimensions"
    )
    print(f"wrote {out}")
    return 0
