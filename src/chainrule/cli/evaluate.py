"""``chainrule eval``, ``sample``, ``complete`` and ``params``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chainrule import outputs
from chainrule.outputs import check_output

from .common import (
    MAX_GRID,
    RUN_DATA_HELP,
    SAMPLE_BATCH,
    UserError,
    add_command,
    add_common,
    default_out,
    flag,
    load_checkpoint,
    load_split,
    nonneg_int,
    parse_shape,
    positive_int,
    run_data,
    safe,
)
from .options import add_model_flags, model_options


def cmd_eval(args: argparse.Namespace) -> int:
    """NLL (nats) and bits/dim of a checkpoint on a data split

    Exact test NLL of a checkpoint: nats per image (with its standard error) and bits per
    dimension.
    """
    from chainrule.evaluate import summarize

    if args.json:
        check_output(args.json, what="--json")
    model = load_checkpoint(args.checkpoint)
    data, data_dir = run_data(args.checkpoint, args.data, args.data_dir)
    x, splits = load_split(model, data, data_dir, args.split)
    s = summarize(model, x, splits.levels, batch_size=args.batch_size, progress=True)
    deq = " (discrete-equivalent: dequantized, + D ln K)" if s["dequantized"] else ""
    print(
        f"{data} {args.split} ({s['n']} images): NLL {s['nll_nats']:.3f} nats per image "
        f"(+/- {s['nll_stderr']:.3f}), {s['bits_per_dim']:.4f} bits/dim{deq}"
    )
    caveat = getattr(splits, "caveat", "")
    if caveat:
        print(f"note: {caveat}")
    if args.json:
        outputs.write_json(
            args.json, {"data": data, "split": args.split, "data_caveat": caveat, **s}
        )
        print(f"wrote {args.json}")
    return 0


def _available_bytes() -> int | None:
    """Memory available to this process (Linux /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from chainrule.plots import sample_grid

    n = args.n
    if n > MAX_GRID and not args.npz:
        raise UserError(
            f"--n {n}: a PNG grid shows at most {MAX_GRID} images; to draw more, give "
            f"--npz FILE (the PNG then shows the first {MAX_GRID})"
        )
    out = Path(args.out) if args.out else default_out(args, f"samples-n{n}-seed{args.seed}.png")
    check_output(out, what="--out")
    if args.npz:
        check_output(args.npz, what="--npz")
    model = load_checkpoint(args.checkpoint)
    itemsize = 4 if model.levels is None else 1  # real values as float32, levels as uint8
    need = n * model.dim * itemsize
    avail = _available_bytes()
    if avail is not None and need > avail // 2:
        raise UserError(
            f"--n {n}: the samples alone need {need / 2**30:.1f} GiB of memory "
            f"({model.dim} values each) and {avail / 2**30:.1f} GiB is available; ask for fewer"
        )
    g = torch.Generator().manual_seed(args.seed)
    keep = np.empty((n, *model.event_shape), dtype=np.float32 if itemsize == 4 else np.uint8)
    batches = range(0, n, SAMPLE_BATCH)
    for i in outputs.progress(batches, desc="sampling", total=len(batches)):
        b = min(SAMPLE_BATCH, n - i)
        x = model.sample(b, generator=g).cpu()
        keep[i : i + b] = x.numpy() if itemsize == 4 else x.to(torch.uint8).numpy()
    shown = min(n, MAX_GRID)
    sample_grid(torch.from_numpy(keep[:shown]), model.levels, out)
    print(f"wrote {out} ({shown} of {n} samples)" if shown < n else f"wrote {out} ({n} samples)")
    if args.npz:
        outputs.save_npz(args.npz, x=keep)
        print(f"wrote {args.npz}")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    """complete occluded images into a PNG grid (originals, occluded inputs, completions)

    Hide part of some images and let the model draw the hidden part: exact draws from p(hidden
    | visible) when the visible part is a prefix of the model's ordering.
    """
    import warnings

    import torch

    from chainrule.completion import (
        complete,
        completion_grid,
        conditional_log_likelihood,
        is_exact_for,
        occlusion_mask,
    )
    from chainrule.evaluate import to_model_input
    from chainrule.outputs import random_subset

    out = (
        Path(args.out)
        if args.out
        else default_out(args, f"completions-{safe(args.occlude)}-seed{args.seed}.png")
    )
    check_output(out, what="--out")
    model = load_checkpoint(args.checkpoint)
    mask = occlusion_mask(args.occlude, model.event_shape, seed=args.seed)
    data, data_dir = run_data(args.checkpoint, args.data, args.data_dir)
    x_all, splits = load_split(model, data, data_dir, args.split)
    idx = random_subset(len(x_all), args.n, seed=args.seed)
    x = x_all[idx]
    g = torch.Generator().manual_seed(args.seed)
    images = to_model_input(model, x, splits.levels, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comp = complete(model, images, mask, samples=args.samples, generator=g)
    exact = is_exact_for(model, mask) and not caught
    how = (
        "exact draws from p(hidden | visible)"
        + (" (the given-first ordering)" if model.supports_completion_any_mask else "")
        if exact
        else "not exact: the visible pixels do not come first in the model's ordering"
    )
    hidden = int((~mask).sum())
    cond = None
    if exact and model.supports_completion_any_mask and hasattr(model, "ordering_for"):
        cond = conditional_log_likelihood(model, comp.flatten(0, 1), mask).double()
    caption = f"{model.name}, {args.occlude} ({hidden} of {mask.numel()} values hidden): {how}"
    if cond is not None:
        caption += f"\nlog p(hidden | visible) of the completions: {cond.mean():.2f} nats (mean)"
    completion_grid(images, mask, comp, model.levels, out, caption=caption)
    shown = ",".join(str(i) for i in idx.tolist()[:16]) + ("..." if len(idx) > 16 else "")
    print(
        f"wrote {out} ({len(x)} images of {data} {args.split} drawn at random with seed "
        f"{args.seed}: #{shown}; {args.samples} completions each, {args.occlude}: {how})"
    )
    if cond is not None:
        print(
            f"conditional log-likelihood of the completions, log p(hidden | visible): mean "
            f"{cond.mean():.3f} nats over {hidden} hidden values (min {cond.min():.3f}, "
            f"max {cond.max():.3f}; exact)"
        )
    for w in caught[:1]:
        print(f"note: {w.message}", file=sys.stderr)
    return 0


def _power_form(count: int, levels: int | None) -> str:
    """'2^784 - 1' for counts of the form K^m - 1 (the full table), else ''."""
    if levels is None:
        return ""
    m, v = 0, count + 1
    while v % levels == 0 and v > 1:
        v //= levels
        m += 1
    return f"{levels}^{m} - 1" if v == 1 and m > 1 else ""


def cmd_params(args: argparse.Namespace) -> int:
    """exact parameter counts of every model for an image shape

    Exact parameter counts (Python ints, printed in full: 2^784 - 1 has 237 digits) of every
    model, or of one model with its options.
    """
    import chainrule
    from chainrule.models import model_class

    shape = parse_shape(args.shape)
    if args.levels < 0 or args.levels == 1:
        raise UserError(
            f"--levels must be 0 (real values) or at least 2 (2 binary, 256 8-bit), got {args.levels}"
        )
    levels = None if args.levels == 0 else args.levels
    c, h, w = shape
    if args.model:
        try:
            model_class(args.model)
        except ValueError as e:
            raise UserError(str(e)) from None
    given = model_options(args)
    if not args.model and set(given) - {"order"}:
        flags = ", ".join(sorted(flag(k) for k in set(given) - {"order"}))
        raise UserError(f"{flags} applies to one model: add --model NAME")
    if hasattr(sys, "set_int_max_str_digits"):  # counts such as 256^3072 - 1 print in full
        sys.set_int_max_str_digits(0)
    names = [args.model] if args.model else chainrule.available_models()
    lines = [
        f"exact parameter counts for {c}x{h}x{w} images, "
        f"{'real values' if levels is None else f'{levels} levels'} (n = {c * h * w} dimensions)"
    ]
    for name in names:
        cls = model_class(name)
        lv = None if cls.supports == ("real",) else levels
        if lv is None and "real" not in cls.supports:
            if args.model:
                raise UserError(f"{name} models discrete levels: give --levels 2 or more")
            continue
        opts = (
            given
            if args.model
            else ({"order": given["order"]} if name == "markov" and "order" in given else {})
        )
        try:
            count = chainrule.count_parameters(name, shape, lv, **opts)
        except ValueError as e:
            if args.model:  # the user's options: their mistake, one line
                raise UserError(str(e)) from None
            lines.append(f"  {name:16s} -- ({e})")
            continue
        form = _power_form(count, lv)
        note = "" if lv == levels else "  (real-valued model)"
        lines.append(f"  {name:16s} {count}" + (f"  = {form}" if form else "") + note)
    print("\n".join(lines))
    return 0


def add_parsers(sub) -> None:
    e = add_command(sub, "eval", cmd_eval)
    add_common(e, checkpoint="required", data=RUN_DATA_HELP, batch_size=256, data_dir=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split")
    e.add_argument("--json", default=None, help="also write the figures to this JSON file")

    s = add_command(
        sub,
        "sample",
        cmd_sample,
        help="draw images from a checkpoint into a PNG grid",
        description=f"Draw new images (ancestral sampling, {SAMPLE_BATCH} at a time) into a PNG "
        f"grid of at most {MAX_GRID}, and optionally all of them into an .npz.",
    )
    add_common(s, checkpoint="required")
    s.add_argument("--n", type=positive_int, default=64, help="number of images")
    s.add_argument(
        "--out",
        default=None,
        help="PNG file (default: RUN_DIR/samples-nN-seedS.png; for pretrained:NAME, "
        "NAME-samples-nN-seedS.png here)",
    )
    s.add_argument("--npz", default=None, help="also save the raw samples to this .npz")
    s.add_argument("--seed", type=nonneg_int, default=0, help="seed of the draw")

    cp = add_command(sub, "complete", cmd_complete)
    add_common(cp, checkpoint="required", data=RUN_DATA_HELP, data_dir=True)
    cp.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split")
    cp.add_argument(
        "--occlude",
        default="bottom-half",
        metavar="SPEC",
        help="the hidden part: bottom-half (exact in raster order), right-half, the rectangle "
        "box:x,y,w,h (column, row, width, height), checkerboard, or random:FRACTION[:SEED] "
        "(that fraction of the pixels, drawn with --seed); exact for any of them with an "
        "order-agnostic model (made, deep-nade), which also reports log p(hidden | visible); "
        "default bottom-half",
    )
    cp.add_argument(
        "--n", type=positive_int, default=8, help="number of images, drawn at random with --seed"
    )
    cp.add_argument("--samples", type=positive_int, default=3, help="completions per image")
    cp.add_argument(
        "--out", default=None, help="PNG file (default: RUN_DIR/completions-OCCLUDE-seedS.png)"
    )
    cp.add_argument("--seed", type=nonneg_int, default=0, help="seed of the images and the draws")

    q = add_command(sub, "params", cmd_params)
    q.add_argument("--shape", default="1x28x28", help="CxHxW")
    q.add_argument(
        "--levels", type=int, default=2, help="levels per dimension (2 binary, 256 8-bit; 0: real)"
    )
    q.add_argument("--model", default=None, help="only this model (then model options apply)")
    add_model_flags(q)
    add_common(q)
