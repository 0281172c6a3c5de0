"""The ``chainrule`` command line.

    chainrule train                     # the main job: the default model on the embedded digits
    chainrule train --model M --data D [--epochs N] [--batch-size B] [--lr LR] [--seed S]
                    [--out RUN_DIR] [--resume RUN_DIR] [--device auto|cpu|cuda] [--hidden H] ...
    chainrule eval --checkpoint RUN_DIR [--data D] [--split test]
    chainrule sample --checkpoint RUN_DIR [--n N] [--out FILE.png]
    chainrule params --shape 1x28x28 --levels 2

Mistakes a user can make (a wrong option, a missing file, a foreign checkpoint, data of the
wrong shape) end in one line on stderr and exit status 1; argparse's own usage errors exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

#: the main job: `chainrule train` with no arguments
DEFAULT_DATA = "digits"
DEFAULT_MODELS = ("nade", "fvsbn")  # the first one that is registered

#: CLI flags that map onto model options of the same name (DESIGN.md's shared option names)
MODEL_FLAGS = {
    "hidden": (int, "hidden units per layer"),
    "layers": (int, "number of layers"),
    "order": (int, "order k of a Markov chain"),
    "ordering": (str, "pixel ordering: raster, random:SEED, or a JSON list giving the permutation"),
    "components": (int, "mixture components (RNADE)"),
    "preset": (str, "a preset configuration of the model (see its docs)"),
}


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 1."""


def _default_model() -> str:
    import chainrule

    names = chainrule.available_models()
    return next(m for m in DEFAULT_MODELS if m in names)


# ---------------------------------------------------------------------- parsing helpers
def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--shape must look like CxHxW (e.g. 1x28x28), got {text!r}") from None
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(f"--shape must be three positive ints CxHxW (e.g. 1x28x28), got {text!r}")
    return parts  # type: ignore[return-value]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Model options given on the command line (flags and --option KEY=VALUE)."""
    opts: dict[str, Any] = {}
    for flag in MODEL_FLAGS:
        v = getattr(args, flag, None)
        if v is not None:
            opts[flag] = _parse_value(v) if flag == "ordering" and v.startswith("[") else v
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option must be KEY=VALUE, got {item!r}")
        opts[key.replace("-", "_")] = _parse_value(value)
    return opts


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model options (fields of the model's config; see `chainrule params`)")
    for flag, (typ, help_) in MODEL_FLAGS.items():
        g.add_argument(f"--{flag}", type=typ, default=None, help=help_)
    g.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="any other field of the model's config (value parsed as JSON when it can be)",
    )


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=None,
        help="folder holding the data files (default: $CHAINRULE_DATA, then ~/.cache/chainrule)",
    )


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    import chainrule
    from chainrule.data import load_dataset
    from chainrule.models import model_class
    from chainrule.train import TrainConfig, describe_result, train

    resume = args.resume is not None
    if resume:
        run = Path(args.resume)
        cfg_path = run / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"cannot resume: {cfg_path} not found (is {run} a run folder?)")
        try:
            saved = json.loads(cfg_path.read_text())
            name, options, data = saved["model"], saved["options"], saved["data"]
            train_cfg = TrainConfig(**saved["train"])
            levels, data_dir = saved["levels"], saved.get("data_dir")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"cannot resume: {cfg_path} is not a chainrule run config ({e})") from None
        if args.epochs is not None:
            train_cfg.epochs = args.epochs
        if args.device is not None:
            train_cfg.device = args.device
        data_dir = args.data_dir or data_dir
    else:
        name = args.model or _default_model()
        data = args.data or DEFAULT_DATA
        data_dir = args.data_dir
        options = model_options(args)
        cls = model_class(name)
        defaults = {**dataclasses.asdict(TrainConfig()), **getattr(cls, "train_defaults", {})}
        given = {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
            "patience": args.patience, "device": args.device, "max_train": args.max_train,
            "time_budget_min": args.time_budget, "lr_schedule": args.lr_schedule,
        }
        defaults.update({k: v for k, v in given.items() if v is not None})
        defaults["closed_form"] = bool(args.closed_form)
        defaults["progress"] = not args.quiet
        train_cfg = TrainConfig(**defaults)
        run = Path(args.out) if args.out else _fresh_run_dir(name, data)
    train_cfg.validate()
    splits = load_dataset(data, data_dir=data_dir)
    if not resume:  # a real-valued model (RNADE) sees the data dequantized to [0, 1]
        levels = None if model_class(name).supports == ("real",) else splits.levels
    model = chainrule.build(name, event_shape=splits.event_shape, levels=levels, **options)
    print(f"data:  {splits.describe()}", file=sys.stderr)
    print(f"model: {name} with {model.num_parameters():,} parameters", file=sys.stderr)
    print(f"run:   {run}", file=sys.stderr)
    result = train(
        model, splits, train_cfg, run, resume=resume,
        run_info={"data": data, "data_dir": str(data_dir) if data_dir else None, "command": " ".join(sys.argv)},
    )
    print(describe_result(result, model.dim))
    for f in result.get("files", []):
        print(f"wrote {f}")
    print(f"checkpoint: {run}")
    return 0


def _fresh_run_dir(model: str, data: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in data)
    base = Path("runs") / f"{model}-{safe}"
    run, k = base, 1
    while run.exists():
        k += 1
        run = Path(f"{base}-{k}")
    return run


def _load_checkpoint(path: str):
    import chainrule

    return chainrule.load(path)


def _run_data(checkpoint: str, data: str | None, data_dir: str | None) -> tuple[str, str | None]:
    """The data set named on the command line, else the one the run was trained on."""
    if data:
        return data, data_dir
    cfg = Path(checkpoint) / "config.json"
    if cfg.is_file():
        try:
            saved = json.loads(cfg.read_text())
            return saved["data"], data_dir or saved.get("data_dir")
        except (json.JSONDecodeError, KeyError):
            pass
    raise UserError(f"--data is needed: {checkpoint} does not record the data it was trained on")


def cmd_eval(args: argparse.Namespace) -> int:
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible, summarize

    model = _load_checkpoint(args.checkpoint)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    check_compatible(model, splits.event_shape, splits.levels, data)
    x = splits.split(args.split)
    s = summarize(model, x, splits.levels, batch_size=args.batch_size, progress=True)
    deq = " (discrete-equivalent: dequantized, + D ln K)" if s["dequantized"] else ""
    print(
        f"{data} {args.split} ({s['n']} images): NLL {s['nll_nats']:.3f} nats per image "
        f"(+/- {s['nll_stderr']:.3f}), {s['bits_per_dim']:.4f} bits/dim{deq}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"data": data, "split": args.split, **s}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from chainrule.plots import sample_grid

    model = _load_checkpoint(args.checkpoint)
    if args.n < 1:
        raise UserError(f"--n must be a positive int, got {args.n}")
    out = Path(args.out) if args.out else Path(args.checkpoint) / "samples.png"
    _check_writable(out)
    g = torch.Generator().manual_seed(args.seed)
    x = model.sample(args.n, generator=g)
    sample_grid(x, model.levels, out)
    print(f"wrote {out} ({args.n} samples)")
    if args.npz:
        import numpy as np

        np.savez_compressed(args.npz, x=x.cpu().numpy())
        print(f"wrote {args.npz}")
    return 0


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist")


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
    import chainrule
    from chainrule.models import model_class

    shape = parse_shape(args.shape)
    levels = None if args.levels in (0, None) else args.levels
    c, h, w = shape
    names = [args.model] if args.model else chainrule.available_models()
    print(f"exact parameter counts for {c}x{h}x{w} images, "
          f"{'real values' if levels is None else f'{levels} levels'} (n = {c * h * w} dimensions)")
    for name in names:
        cls = model_class(name)
        lv = None if cls.supports == ("real",) else levels
        if lv is None and "real" not in cls.supports:
            continue
        try:
            opts = model_options(args) if args.model else ({"order": args.order} if name == "markov" and args.order else {})
            count = chainrule.count_parameters(name, shape, lv, **opts)
        except ValueError as e:
            print(f"  {name:16s} -- ({e})")
            continue
        form = _power_form(count, lv)
        note = "" if lv == levels else "  (real-valued model)"
        print(f"  {name:16s} {count}" + (f"  = {form}" if form else "") + note)
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    import chainrule

    p = argparse.ArgumentParser(
        prog="chainrule",
        description="Explicit autoregressive generative models of images: exact log p(x), "
        "sampling, completion.",
    )
    p.add_argument("--version", action="version", version=f"chainrule {chainrule.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (no arguments: the main job on digits)",
                       description="Train a model by maximum likelihood. With no arguments: the "
                       "default model on the embedded digits data set.")
    t.add_argument("--model", choices=chainrule.available_models(), default=None,
                   help=f"model to train (default: {_default_model()})")
    t.add_argument("--data", default=None,
                   help=f"data set: digits, binarized-mnist, mnist, fashion-mnist, notmnist, cifar10, "
                   f"folder:PATH, npz:PATH; forms NAME:binarize, NAME:dynamic, NAME:levels=K (default {DEFAULT_DATA})")
    _add_data_dir(t)
    t.add_argument("--epochs", type=int, default=None, help="maximum number of epochs")
    t.add_argument("--batch-size", type=int, default=None, help="images per training step")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    t.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None, help="learning-rate schedule")
    t.add_argument("--seed", type=int, default=None, help="random seed (runs are deterministic under a seed)")
    t.add_argument("--patience", type=int, default=None, help="stop after this many epochs without a better valid NLL (0: never)")
    t.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    t.add_argument("--time-budget", type=float, default=None, metavar="MIN", help="stop training after MIN minutes")
    t.add_argument("--closed-form", action="store_true", help="fit by counting (independent, markov, table)")
    t.add_argument("--out", default=None, help="run folder (default: runs/MODEL-DATA[-N])")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="where to train (default auto)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="NLL (nats) and bits/dim of a checkpoint on a data split")
    e.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    e.add_argument("--data", default=None, help="data set (default: the one the run was trained on)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", default=None, help="also write the figures to this JSON file")
    _add_data_dir(e)
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="draw images from a checkpoint into a PNG grid")
    s.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--out", default=None, help="PNG file (default: RUN_DIR/samples.png)")
    s.add_argument("--npz", default=None, help="also save the raw samples to this .npz")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample)

    q = sub.add_parser("params", help="exact parameter counts of every model for an image shape")
    q.add_argument("--shape", default="1x28x28", help="CxHxW (default 1x28x28)")
    q.add_argument("--levels", type=int, default=2, help="levels per dimension (2 binary, 256 8-bit; 0: real)")
    q.add_argument("--model", default=None, help="only this model (then model options apply)")
    _add_model_flags(q)
    q.set_defaults(func=cmd_params)
    return p


def main(argv: list[str] | None = None) -> int:
    from chainrule.train import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, ValueError, TrainingError, FileNotFoundError, PermissionError) as e:
        msg = str(e) if not isinstance(e, (FileNotFoundError, PermissionError)) or not e.filename else f"{e.strerror}: {e.filename}"
        print(f"chainrule {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"chainrule {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
