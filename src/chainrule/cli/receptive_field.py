"""``chainrule receptive-field``: a PNG of which pixels feed one (the library function is
:func:`chainrule.receptive_field.receptive_field`)."""

from __future__ import annotations

from chainrule import receptive_field as rf
from chainrule.outputs import check_output

from .common import UserError, add_command, add_common, parse_shape
from .options import add_model_flags, model_options


def add_parser(sub) -> None:
    p = add_command(sub, "receptive-field", cmd_receptive_field)
    p.add_argument(
        "--model", default=None, help="model to build (e.g. row-lstm, diagonal-bilstm, pixelcnn)"
    )
    add_common(p, checkpoint="optional", quiet=False)  # a trained run instead of --model
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
    add_model_flags(p)
    add_common(p)  # --quiet


def cmd_receptive_field(args) -> int:
    """PNG of which earlier pixels influence one pixel (gradients through the model)

    Draw the receptive field of one dimension: grey = influences it (log scale), black =
    earlier but outside the context, red = the dimension, blue = later. From a trained
    checkpoint, or from a freshly built model with random weights.
    """
    import torch

    import chainrule

    if (args.model is None) == (args.checkpoint is None):
        raise UserError("give exactly one of --model NAME or --checkpoint RUN_DIR")
    # everything that needs no model is checked first, the output path included
    if args.samples < 1:
        raise UserError(f"--samples must be a positive int, got {args.samples}")
    if args.scale < 1:
        raise UserError(f"--scale must be a positive int (PNG pixels per pixel), got {args.scale}")
    pixel: tuple[int, int] | None = None
    if args.pixel is not None:
        try:
            parts = tuple(int(v) for v in args.pixel.split(","))
        except ValueError:
            raise UserError(f"--pixel must be ROW,COL (e.g. 7,4), got {args.pixel!r}") from None
        if len(parts) != 2:
            raise UserError(f"--pixel must be ROW,COL (e.g. 7,4), got {args.pixel!r}")
        pixel = parts
    if args.out is not None:
        check_output(args.out, what="PNG")
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
    if side > rf.MAX_PNG_SIDE:
        raise UserError(
            f"--scale {args.scale} would make a PNG {side} pixels wide; "
            f"use at most {rf.MAX_PNG_SIDE // max(c * (w + 1) - 1, h)} for {c}x{h}x{w} images"
        )
    out = check_output(args.out or f"receptive-field-{model.name}.png", what="PNG")
    field = rf.receptive_field(model, pixel, args.channel, samples=args.samples, seed=args.seed)
    rf.save_receptive_field_png(field, out, pixel, args.channel, scale=args.scale)
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
