"""The ``chainrule`` command line.

    chainrule train                     # the main job: the default model on the embedded digits
    chainrule train --model M --data D [--epochs N] [--batch-size B] [--lr LR] [--seed S]
                    [--out RUN_DIR] [--resume RUN_DIR] [--overwrite] [--device auto|cpu|cuda] ...
    chainrule eval --checkpoint RUN_DIR [--data D] [--split test]
    chainrule sample --checkpoint RUN_DIR [--n N] [--out FILE.png] [--npz FILE.npz]
    chainrule complete --checkpoint RUN_DIR [--data D] --occlude bottom-half|right-half|box:x,y,w,h
                       [--n 8] [--samples 3] [--out completions.png]
    chainrule params --shape 1x28x28 --levels 2
    chainrule score --checkpoint RUN_DIR [--data D] [--out scores.csv]     # + per-pixel NLL maps
    chainrule detect --checkpoint RUN_DIR [--in D_in] --ood D_out          # AUROC, histograms, ROC
    chainrule features --checkpoint RUN_DIR [--data D] [--out feats.npz]
    chainrule probe --checkpoint RUN_DIR --data D                          # features vs raw pixels
    chainrule receptive-field --model row-lstm                             # which pixels feed one

What a user meets (tested command by command in tests/test_sweep_*.py):

* A mistake (a wrong option, a missing file, a foreign checkpoint, data of the wrong shape, an
  output path that cannot be written) ends in one line on stderr, before any work where it can
  be known before, and exit status 1 (2 for a malformed command line).
* A fault of the machine (a full disk, too little memory) ends in one line and exit status 1;
  every output file is written atomically, so nothing is ever half-written or lost.
* Ctrl-C (SIGINT) or SIGTERM: training saves its state and says how to resume (exit 130 / 143);
  other commands stop at once, leaving nothing behind.
* Progress bars only on a terminal; off one, plain lines; ``--quiet``: neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from chainrule import outputs
from chainrule.outputs import OutputError, check_output

#: the main job: `chainrule train` with no arguments
DEFAULT_DATA = "digits"
DEFAULT_MODEL = "nade"

#: CLI flags that map onto model options of the same name (DESIGN.md's shared option names)
MODEL_FLAGS = {
    "hidden": (int, "hidden units per layer (default: the model's)"),
    "layers": (int, "number of layers (default: the model's)"),
    "order": (int, "order k of a Markov chain (default 1)"),
    "ordering": (
        str,
        "pixel ordering: raster, random:SEED, or a JSON list giving the permutation "
        "(default raster)",
    ),
    "components": (int, "mixture components of RNADE (default: the model's)"),
    "preset": (str, "a named configuration of the model (see PRESETS below)"),
}

#: `chainrule train` flags that a --resume may change (printed when they do); every other
#: flag would change the run and is refused on a resume
RESUME_MAY_CHANGE = (
    "epochs",
    "time_budget",
    "patience",
    "device",
    "checkpoint_every",
    "checkpoint_minutes",
    "data_dir",
)
#: `chainrule train` flags fixed for the life of a run: flag -> field of config.json's "train"
RUN_FIXED = {
    "batch_size": "batch_size",
    "lr": "lr",
    "lr_schedule": "lr_schedule",
    "seed": "seed",
    "max_train": "max_train",
    "dtype": "dtype",
    "grad_clip": "grad_clip",
    "closed_form": "closed_form",
    "bf16": "bf16",
    "init_output_bias": "init_output_bias",
}

#: the largest --n a PNG grid shows (beyond it, samples go to --npz only)
MAX_GRID = 4096
#: images generated at once by `sample` (memory is proportional to it, not to --n)
SAMPLE_BATCH = 1024


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 1."""


# ---------------------------------------------------------------------- argparse
class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (not the usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help line ends with its default (when it has a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _number(kind, low: float, name: str, strict: bool = True):
    """An argparse type: ``kind`` (int/float), finite, > low (strict) or >= low."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}")
        if v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}")
        return v

    parse.__name__ = name  # argparse names the type in some messages
    return parse


positive_int = _number(int, 0, "a positive int")
nonneg_int = _number(int, 0, "an int >= 0", strict=False)
positive_float = _number(float, 0.0, "a positive number")
nonneg_float = _number(float, 0.0, "a number >= 0", strict=False)


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
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="any other field of the model's config (value parsed as JSON when it can be)",
    )


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the data files (default: $CHAINRULE_DATA, then ~/.cache/chainrule)",
    )


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (results only)"
    )


def _data_line(splits, max_train: int = 0) -> str:
    """The data line: the data set, and what is true of it that a figure needs beside it."""
    try:
        text = splits.describe(max_train=max_train or None)
    except TypeError:  # a Splits without the max_train argument
        text = splits.describe()
    caveat = getattr(splits, "caveat", "")
    return text + (f"\n       note: {caveat}" if caveat else "")


# ---------------------------------------------------------------------- train
def _train_defaults(name: str) -> dict[str, Any]:
    """TrainConfig's defaults with the model's own training defaults on top."""
    from chainrule.models import model_class
    from chainrule.train import TrainConfig

    return {**dataclasses.asdict(TrainConfig()), **getattr(model_class(name), "train_defaults", {})}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _resume_settings(args: argparse.Namespace, run: Path):
    """What a --resume continues: the saved settings, the flags that may change applied (and
    printed), every flag that would change the run refused in one line naming it."""
    from chainrule.train import TrainConfig, read_counters

    cfg_path = run / "config.json"
    if not run.is_dir():
        raise UserError(f"cannot resume: {run} is not a folder (is it a run folder?)")
    if not cfg_path.is_file():
        raise UserError(f"cannot resume: {cfg_path} not found (is {run} a run folder?)")
    try:
        saved = json.loads(cfg_path.read_text())
        name, options, data = saved["model"], dict(saved["options"]), saved["data"]
        train_cfg = TrainConfig(**saved["train"])
        levels, data_dir = saved["levels"], saved.get("data_dir")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot resume: {cfg_path} is not a chainrule run config ({e})") from None
    if args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: give one")
    # flags that would change the run: refused unless they repeat the saved value
    if args.model is not None and args.model != name:
        raise UserError(f"--model cannot change on --resume: {run} trains {name}")
    if args.data is not None and args.data != data:
        raise UserError(f"--data cannot change on --resume: {run} was trained on {data}")
    for flag, field in RUN_FIXED.items():
        v = getattr(args, flag)
        if v is None or v is False:
            continue
        old = getattr(train_cfg, field)
        if v != old:
            raise UserError(
                f"{_flag(flag)} cannot change on --resume: {run} was started with "
                f"{_flag(flag)} {old} (start a new run with --out to change it)"
            )
    for key, v in model_options(args).items():
        if key not in options or options[key] != v:
            shown = "--" + key if key in MODEL_FLAGS else f"--option {key}"
            old = options.get(key, "(not an option of this model)")
            raise UserError(f"{shown} cannot change on --resume: {run} has {key} = {old}")
    # flags that may change
    changes = []
    counters = read_counters(run) or {}
    done = int(counters.get("epoch", 0))
    if args.epochs is not None:
        if args.epochs <= done and not train_cfg.closed_form:
            raise UserError(
                f"--epochs {args.epochs}: {run} has trained {done} epochs already; "
                f"give more than {done} to train on"
            )
        changes.append(("epochs", train_cfg.epochs, args.epochs))
        train_cfg.epochs = args.epochs
    for flag, field in (
        ("patience", "patience"),
        ("device", "device"),
        ("checkpoint_every", "checkpoint_every"),
        ("checkpoint_minutes", "checkpoint_minutes"),
    ):
        v = getattr(args, flag)
        if v is not None and v != getattr(train_cfg, field):
            changes.append((field, getattr(train_cfg, field), v))
            setattr(train_cfg, field, v)
    if args.data_dir is not None and args.data_dir != data_dir:
        changes.append(("data_dir", data_dir, args.data_dir))
        data_dir = args.data_dir
    if args.time_budget is not None:
        changes.append(("time budget", "", f"{args.time_budget:g} more minutes"))
    # a finished run: something must let it go on
    stopped = counters.get("stop_reason")
    if (run / "result.json").exists() and not train_cfg.closed_form:
        why = {
            "early stopping": f"it stopped early at epoch {done}",
            "time budget": f"its time budget ran out in epoch {done + 1}",
        }.get(stopped, f"it trained all its {done} epochs")
        going_on = done < train_cfg.epochs and (
            stopped in ("early stopping", "time budget")
            and (args.epochs is not None or args.patience is not None or args.time_budget)
            or stopped not in ("early stopping", "time budget")
        )
        if not going_on:
            raise UserError(
                f"{run} is finished ({why}); to train on, give --epochs N (more than {done})"
                + (" or --time-budget MIN" if stopped == "time budget" else "")
            )
    for field, old, new in changes:
        _info(f"changed on resume: {field} " + (f"{old} -> {new}" if old != "" else str(new)))
    train_cfg.progress = not args.quiet
    try:
        train_cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    return name, options, data, data_dir, levels, train_cfg


def _info(msg: str) -> None:
    """A line of information on stderr (not under --quiet)."""
    outputs.say(msg)


def cmd_train(args: argparse.Namespace) -> int:
    from chainrule.models import model_class
    from chainrule.train import TrainConfig, preflight_run_folder

    resume = args.resume is not None
    if resume:
        run = Path(args.resume)
        if args.out is not None and Path(args.out) != run:
            raise UserError("--resume RUN continues RUN in place: leave out --out")
        name, options, data, data_dir, levels, train_cfg = _resume_settings(args, run)
    else:
        name = args.model or DEFAULT_MODEL
        data = args.data or DEFAULT_DATA
        data_dir = args.data_dir
        levels = None  # from the data, once loaded
        options = model_options(args)
        cls = model_class(name)
        defaults = _train_defaults(name)
        given = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "patience": args.patience,
            "device": args.device,
            "max_train": args.max_train,
            "time_budget_min": args.time_budget,
            "lr_schedule": args.lr_schedule,
            "checkpoint_every": args.checkpoint_every,
            "checkpoint_minutes": args.checkpoint_minutes,
            "dtype": args.dtype,
            "grad_clip": args.grad_clip,
        }
        defaults.update({k: v for k, v in given.items() if v is not None})
        defaults["closed_form"] = bool(args.closed_form)
        defaults["progress"] = not args.quiet
        defaults["bf16"] = bool(args.bf16)
        defaults["init_output_bias"] = bool(args.init_output_bias)
        train_cfg = TrainConfig(**defaults)
        if train_cfg.closed_form and getattr(cls, "fit", None) is None:
            raise UserError(
                f"--closed-form: model {name!r} has no closed-form fit (train it with Adam)"
            )
        run = Path(args.out) if args.out else _fresh_run_dir(name, data)
        train_cfg.validate()
    preflight_run_folder(run, resume, overwrite=args.overwrite)  # before any data is loaded
    existed = run.exists()
    try:
        return _train_in(args, run, resume, name, options, data, data_dir, levels, train_cfg)
    except BaseException:
        # a run that failed before writing anything leaves no empty folder behind
        if not existed and run.is_dir() and not any(run.iterdir()):
            run.rmdir()
        raise


def _train_in(args, run, resume, name, options, data, data_dir, levels, train_cfg) -> int:
    import chainrule
    from chainrule.data import load_dataset
    from chainrule.models import model_class
    from chainrule.train import TrainingInterrupted, describe_result, train

    splits = load_dataset(data, data_dir=data_dir)
    if train_cfg.max_train and train_cfg.max_train > len(splits.train):
        raise UserError(
            f"--max-train {train_cfg.max_train}: {data} has only {len(splits.train)} training images"
        )
    if not resume:  # a real-valued model (RNADE) sees the data dequantized to [0, 1]
        levels = None if model_class(name).supports == ("real",) else splits.levels
    import torch

    from chainrule.distributed import env_rank, env_world_size

    torch.manual_seed(train_cfg.seed)  # the same initial weights in every process and every run
    model = chainrule.build(name, event_shape=splits.event_shape, levels=levels, **options)
    main_rank = env_rank() == 0
    if main_rank:
        _info(f"data:  {_data_line(splits, train_cfg.max_train)}")
        _info(f"model: {name} with {model.num_parameters():,} parameters")
        world = env_world_size()
        _info(f"run:   {run}" + (f" ({world} processes)" if world > 1 else ""))
    try:
        result = train(
            model,
            splits,
            train_cfg,
            run,
            resume=resume,
            overwrite=args.overwrite,
            more_minutes=args.time_budget if resume else None,
            run_info={
                "data": data,
                "data_dir": str(data_dir) if data_dir else None,
                "command": " ".join(["chainrule", *sys.argv[1:]]),
            },
        )
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", 0) or _SIGNAL.get("signum") or signal.SIGINT
        if main_rank:
            saved = (run / "state.safetensors").exists() and not train_cfg.closed_form
            where = f" at {e.where}" if isinstance(e, TrainingInterrupted) else ""
            what = f"training state saved{where}" if saved else "nothing to resume"
            print(f"chainrule train: interrupted; {what}", file=sys.stderr)
            if saved:
                print(f"resume with: chainrule train --resume {run}", file=sys.stderr)
        return 128 + int(signum)
    if main_rank:
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


# ---------------------------------------------------------------------- eval / sample / complete / params
def _load_checkpoint(path: str):
    import chainrule

    return chainrule.load(path)


def _run_data(checkpoint: str, data: str | None, data_dir: str | None) -> tuple[str, str | None]:
    """The data set named on the command line, else the one the run was trained on."""
    if data:
        return data, data_dir
    ck = Path(checkpoint)
    cfg = (ck if ck.is_dir() else ck.parent) / "config.json"
    if cfg.is_file():
        try:
            saved = json.loads(cfg.read_text())
            return saved["data"], data_dir or saved.get("data_dir")
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            pass
    raise UserError(f"--data is needed: {checkpoint} does not record the data it was trained on")


def _default_out(args: argparse.Namespace, name: str) -> Path:
    """A default output file beside the checkpoint: in the run folder, or, for a
    NAME.safetensors file, NAME-<name> next to it."""
    ck = Path(args.checkpoint)
    return ck / name if ck.is_dir() else ck.with_name(f"{ck.stem}-{name}")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _list_files(files: list[Path | str]) -> None:
    """Every command ends by listing what it wrote."""
    if not files:
        print("files written: none")
    for f in files:
        print(f"wrote {f}")


def _check_output_dir(path: Path, what: str) -> None:
    """An output folder: writable if it exists, else creatable (checked without creating it)."""
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"cannot write {what} {path}: it is a file, not a folder")
        check_output(path / "check", what=what)
    else:
        check_output(path, what=what)


def cmd_eval(args: argparse.Namespace) -> int:
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible, summarize

    if args.json:
        check_output(args.json, what="--json")
    model = _load_checkpoint(args.checkpoint)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    check_compatible(model, splits.event_shape, splits.levels, data)
    x = splits.split(args.split)
    if len(x) == 0:
        raise UserError(f"{data} {args.split} is an empty set (0 images)")
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
    out = Path(args.out) if args.out else _default_out(args, f"samples-n{n}-seed{args.seed}.png")
    check_output(out, what="--out")
    if args.npz:
        check_output(args.npz, what="--npz")
    model = _load_checkpoint(args.checkpoint)
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
    """Complete occluded test images: a grid of originals, occluded inputs, completions."""
    import warnings

    import torch

    from chainrule.completion import complete, completion_grid, occlusion_mask
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible, to_model_input
    from chainrule.outputs import random_subset

    out = (
        Path(args.out)
        if args.out
        else _default_out(args, f"completions-{_safe(args.occlude)}-seed{args.seed}.png")
    )
    check_output(out, what="--out")
    model = _load_checkpoint(args.checkpoint)
    mask = occlusion_mask(args.occlude, model.event_shape)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    check_compatible(model, splits.event_shape, splits.levels, data)
    x_all = splits.split(args.split)
    if len(x_all) == 0:
        raise UserError(f"{data} {args.split} is an empty set (0 images)")
    idx = random_subset(len(x_all), args.n, seed=args.seed)
    x = x_all[idx]
    g = torch.Generator().manual_seed(args.seed)
    images = to_model_input(model, x, splits.levels, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comp = complete(model, images, mask, samples=args.samples, generator=g)
    completion_grid(images, mask, comp, model.levels, out)
    exact = "not exact (see note)" if caught else "exact draws from p(hidden | visible)"
    shown = ",".join(str(i) for i in idx.tolist()[:16]) + ("..." if len(idx) > 16 else "")
    print(
        f"wrote {out} ({len(x)} images of {data} {args.split} drawn at random with seed "
        f"{args.seed}: #{shown}; {args.samples} completions each, {args.occlude}: {exact})"
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
        flags = ", ".join(sorted(_flag(k) for k in set(given) - {"order"}))
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


# ---------------------------------------------------------------------- score / detect / features / probe
def _model_on(args: argparse.Namespace):
    """The checkpoint's model, in eval mode, on --device."""
    from chainrule.train import resolve_device

    model = _load_checkpoint(args.checkpoint)
    return model.to(resolve_device(getattr(args, "device", None) or "auto")).eval()


def _csv_text(rows: list[list]) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def cmd_score(args: argparse.Namespace) -> int:
    import torch

    from chainrule.anomaly import anomaly_scores, pixel_nll
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible, per_image_nll
    from chainrule.outputs import random_subset
    from chainrule.plots import pixel_nll_maps

    if args.out:
        out = check_output(args.out, what="--out")
    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    if not args.out:
        out = check_output(
            _default_out(args, f"scores-{_safe(data)}-{args.split}.csv"), what="scores"
        )
    png = out.with_name(out.stem + "_nll_maps.png")
    if args.maps or args.images:
        check_output(png, what="maps")
    splits = load_dataset(data, data_dir=data_dir)
    x_all = splits.split(args.split)
    if len(x_all) == 0:
        raise UserError(f"{data} {args.split} is an empty set (0 images)")
    check_compatible(model, splits.event_shape, splits.levels, data)
    if args.images:  # checked before any scoring
        try:
            wanted = [int(t) for t in args.images.split(",") if t.strip()]
        except ValueError:
            raise UserError(
                f"--images must be comma-separated image indices, got {args.images!r}"
            ) from None
        bad = [i for i in wanted if not 0 <= i < len(x_all)]
        if bad or not wanted:
            raise UserError(
                f"--images must be indices in 0..{len(x_all) - 1} of {data} {args.split}, "
                f"got {args.images!r}"
            )
    sel = random_subset(len(x_all), args.max_images, seed=args.seed)
    x = x_all[sel]
    s = anomaly_scores(
        model,
        x,
        splits.levels,
        compressor=args.compressor,
        batch_size=args.batch_size,
        progress=True,
    )
    labels = splits.labels.get(args.split)
    rows = [
        ["index", "nll_nats", "bits_per_dim", f"{args.compressor}_bits", "complexity_bits"]
        + (["label"] if labels is not None else [])
    ]
    for k, i in enumerate(sel.tolist()):
        row = [
            i,
            f"{s['nll'][k]:.6f}",
            f"{s['bits_per_dim'][k]:.6f}",
            f"{s['compression_bits'][k]:.0f}",
            f"{s['complexity'][k]:.6f}",
        ]
        rows.append(row + ([int(labels[i])] if labels is not None else []))
    outputs.write_text(out, _csv_text(rows))
    files: list[Path] = [out]
    nll = s["nll"]
    subset = (
        f"{len(x)} of {len(x_all)} images, drawn at random with seed {args.seed}"
        if len(x) < len(x_all)
        else f"{len(x)} images"
    )
    print(
        f"{data} {args.split} ({subset}): NLL {nll.mean():.3f} nats per image, "
        f"{s['bits_per_dim'].mean():.4f} bits/dim; {args.compressor} length {s['compression_bits'].mean():.1f} "
        f"bits; complexity-corrected score {s['complexity'].mean():.2f} bits (mean)"
    )
    if args.images:
        idx = wanted
    else:  # the most likely and the least likely images (indices into the split)
        order = nll.argsort()
        k = min(args.maps // 2, len(x))
        pos = list(dict.fromkeys(order[:k].tolist() + order[::-1][: args.maps - k].tolist()))
        idx = [int(sel[p]) for p in pos]
    if idx and (args.maps > 0 or args.images):
        xi = x_all[torch.as_tensor(idx)]
        maps = pixel_nll(model, xi, splits.levels, progress=True)
        nll_i = per_image_nll(model, xi, splits.levels)
        titles = [f"#{i}: {v:.1f}" for i, v in zip(idx, nll_i.tolist(), strict=True)]
        files.append(
            pixel_nll_maps(
                xi,
                maps,
                splits.levels,
                png,
                titles,
                title=f"{model.name} on {data} {args.split}: where is the model surprised? "
                "(NLL in nats)" + _caveat_line(splits),
            )
        )
    _list_files(files)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from chainrule.anomaly import SCORES, detect
    from chainrule.data import load_dataset

    scores = tuple(t.strip() for t in args.score.split(",") if t.strip()) if args.score else SCORES
    bad = [t for t in scores if t not in SCORES]
    if bad or not scores:
        raise UserError(f"--score must name some of {', '.join(SCORES)}, got {args.score!r}")
    if not 0.0 <= args.false_alarm < 1.0:
        raise UserError(f"--false-alarm must lie in [0, 1), got {args.false_alarm}")
    out_dir = (
        Path(args.out_dir) if args.out_dir else _default_out(args, f"detect-{_safe(args.ood)}")
    )
    _check_output_dir(out_dir, "--out-dir")
    json_path = Path(args.json) if args.json else out_dir / "detect.json"
    if args.json:
        check_output(json_path, what="--json")
    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.in_data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    det = detect(
        model,
        splits,
        args.ood,
        data_dir=data_dir,
        scores=scores,
        compressor=args.compressor,
        false_alarm_rate=args.false_alarm,
        max_images=args.max_images,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
    )
    print(
        f"in-distribution: {det.in_name} test ({len(next(iter(det.scores_in.values())))} images); "
        f"threshold chosen on its valid split for a {args.false_alarm:.0%} false-alarm rate"
    )
    print(
        f"out-of-distribution: {det.ood_name} ({len(next(iter(det.scores_out.values())))} images)"
    )
    if args.max_images:
        print(
            f"subsets: at most {args.max_images} images of each set, drawn at random with seed {args.seed}"
        )
    print(
        f"complexity score: NLL in bits minus the {args.compressor.upper()} code length (Serra et al. 2020)"
    )
    print(det.table())
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:  # the figures first (JSON, CSV), then the pictures
        files = _write_detection(det, args, model, data, scores, out_dir, json_path, splits)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    _list_files(files)
    return 0


def _caveat_line(splits) -> str:
    """The data set's caveat as extra title lines of a plot that shows a figure ("" if none)."""
    import textwrap

    caveat = getattr(splits, "caveat", "")
    return "\n" + textwrap.fill(caveat, 90) if caveat else ""


def _write_detection(
    det, args, model, data, scores, out_dir: Path, json_path: Path, splits=None
) -> list[Path]:
    from chainrule.anomaly import SCORE_UNITS
    from chainrule.plots import roc_plot, score_histogram

    files = [
        outputs.write_json(
            json_path, {"checkpoint": str(args.checkpoint), "model": model.name, **det.as_dict()}
        )
    ]
    rows: list[list] = [["set", "index", *scores]]
    for tag, sc in (("in", det.scores_in), ("ood", det.scores_out)):
        for i in range(len(sc[scores[0]])):
            rows.append([tag, i, *(f"{sc[n][i]:.6f}" for n in scores)])
    files.append(outputs.write_text(out_dir / "scores.csv", _csv_text(rows)))
    for name in scores:
        m = det.metrics[name]
        files.append(
            score_histogram(
                det.scores_in[name],
                det.scores_out[name],
                out_dir / f"hist_{name}.png",
                xlabel=SCORE_UNITS[name],
                labels=(f"in: {data}", f"OOD: {args.ood}"),
                threshold=m["threshold"],
                title=f"{model.name}: {name}, AUROC {m['auroc']:.3f}" + _caveat_line(splits),
            )
        )
    files.append(
        roc_plot(
            {n: (det.scores_in[n], det.scores_out[n]) for n in scores},
            out_dir / "roc.png",
            title=f"{model.name}: {data} vs {args.ood}" + _caveat_line(splits),
        )
    )
    return files


def cmd_features(args: argparse.Namespace) -> int:
    from chainrule.data import load_dataset
    from chainrule.probe import dataset_features

    if args.out:
        out = check_output(args.out, what="--out")
    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    if not args.out:
        out = check_output(_default_out(args, f"features-{_safe(data)}.npz"), what="features")
    splits = load_dataset(data, data_dir=data_dir)
    feats = dataset_features(model, splits, batch_size=args.batch_size, progress=True)
    outputs.save_npz(out, **feats)
    sizes = ", ".join(f"{s} {feats[s].shape}" for s in ("train", "valid", "test"))
    labelled = "with labels" if "train_y" in feats else "no labels"
    print(f"{model.name} features of {data}: {sizes} ({labelled})")
    _list_files([out])
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import numpy as np

    from chainrule.data import load_dataset
    from chainrule.probe import (
        _check_probe_input,
        convergence_note,
        dataset_features,
        linear_probe,
        raw_pixels,
    )

    for path, what in ((args.out, "--out"), (args.json, "--json")):
        if path:
            check_output(path, what=what)
    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    pixels = raw_pixels(splits)
    _check_probe_input(pixels, data)
    if args.features:
        path = Path(args.features)
        if not path.is_file():
            raise UserError(
                f"--features {path}: no such file (write one with `chainrule features`)"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = {k: z[k] for k in z.files}
        except Exception as e:
            raise UserError(f"--features {path} is not a readable .npz file: {e}") from None
        for s in ("train", "valid", "test"):
            if s not in feats or len(feats[s]) != len(pixels[s]):
                raise UserError(
                    f"--features {path} does not match {data}: its {s} split has "
                    f"{len(feats.get(s, []))} rows, the data {len(pixels[s])} images"
                )
    else:
        feats = dataset_features(model, splits, batch_size=args.batch_size, progress=True)
    fit = dict(max_iter=args.max_iter, progress=True, note=False)
    rows = [
        ("features", linear_probe(feats, name=f"{model.name} features", **fit)),
        ("pixels", linear_probe(pixels, name=f"pixels of {data}", **fit)),
    ]
    note = convergence_note(rows)
    if note:
        print(note, file=sys.stderr)
    print(
        f"linear probe (logistic regression, C chosen on valid) on {data}: "
        f"{len(pixels['train'])}/{len(pixels['valid'])}/{len(pixels['test'])} train/valid/test"
    )
    for name, r in rows:
        label = f"{model.name} features" if name == "features" else "raw pixels"
        print(
            f"  {label:22s} dim {r['dim']:5d}  C={r['C']:<5g} test accuracy {r['test_accuracy']:.4f} "
            f"(valid {r['valid_accuracy']:.4f}, train {r['train_accuracy']:.4f})"
        )
    files: list[Path] = []
    if args.out:
        table = [
            ["representation", "dim", "C", "train_accuracy", "valid_accuracy", "test_accuracy"]
        ]
        for name, r in rows:
            table.append(
                [
                    name,
                    r["dim"],
                    r["C"],
                    r["train_accuracy"],
                    r["valid_accuracy"],
                    r["test_accuracy"],
                ]
            )
        files.append(outputs.write_text(args.out, _csv_text(table)))
    if args.json:
        files.append(
            outputs.write_json(
                args.json,
                {
                    "checkpoint": str(args.checkpoint),
                    "model": model.name,
                    "data": data,
                    **dict(rows),
                },
            )
        )
    _list_files(files)
    return 0


# ---------------------------------------------------------------------- parsers
def _train_epilog() -> str:
    """The per-model training defaults and presets, for `chainrule train --help`."""
    import chainrule
    from chainrule.models import model_class
    from chainrule.models.pixelrnn import PRESETS
    from chainrule.train import TrainConfig

    base = dataclasses.asdict(TrainConfig())
    shown = ("epochs", "batch_size", "lr", "lr_schedule", "patience")
    lines = [
        "training defaults (a flag given on the command line wins):",
        "  every model: "
        + ", ".join(f"{_flag(k)} {base[k]}" for k in (*shown, "seed", "checkpoint_minutes")),
    ]
    for name in chainrule.available_models():
        own = getattr(model_class(name), "train_defaults", {})
        if own:
            lines.append(f"  {name}: " + ", ".join(f"{_flag(k)} {v}" for k, v in own.items()))
    lines.append("presets (--preset NAME):")
    for name, presets in PRESETS.items():
        lines.append(
            f"  {name}: "
            + "; ".join(
                f"{p} (" + ", ".join(f"{k} {v}" for k, v in o.items()) + ")"
                for p, o in presets.items()
            )
        )
    lines += [
        "a run folder that holds a run (finished or not) is never overwritten without --overwrite;",
        "--resume RUN may change "
        + ", ".join(_flag(k) for k in RESUME_MAY_CHANGE)
        + "; other flags "
        "that would change the run are refused.",
        "Ctrl-C or SIGTERM saves the training state and prints the --resume command.",
    ]
    return "\n".join(lines)


def _add_tool_parsers(sub) -> None:
    """Parsers of score, detect, features and probe."""
    from chainrule.anomaly import COMPRESSORS, SCORES

    def common(p, data_help: str = "data set (default: the one the run was trained on)") -> None:
        p.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
        if data_help:
            p.add_argument("--data", default=None, help=data_help)
        p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
        p.add_argument(
            "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to compute"
        )
        _add_data_dir(p)
        _add_quiet(p)

    sc = sub.add_parser(
        "score",
        help="per-image NLL (nats, bits/dim, complexity-corrected) to CSV, "
        "and per-pixel NLL maps as PNG",
        description="Score every image of a split: NLL in nats and bits/dim, the lossless "
        "code length and the complexity-corrected score, one CSV row per image (its index in "
        "the split), and per-pixel NLL maps of the most and least likely images as PNG.",
        formatter_class=_Help,
    )
    common(sc)
    sc.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split")
    sc.add_argument("--out", default=None, help="CSV file (default: RUN_DIR/scores-DATA-SPLIT.csv)")
    sc.add_argument(
        "--compressor",
        choices=COMPRESSORS,
        default="png",
        help="lossless compressor for the complexity-corrected score",
    )
    sc.add_argument(
        "--maps",
        type=nonneg_int,
        default=8,
        help="per-pixel NLL maps of the N/2 most and N/2 least likely images (0: none)",
    )
    sc.add_argument(
        "--images", default=None, help="comma-separated indices (into the split) of images to map"
    )
    sc.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        help="score only N images, drawn at random with --seed (default: all)",
    )
    sc.add_argument("--seed", type=nonneg_int, default=0, help="seed of the --max-images draw")
    sc.set_defaults(func=cmd_score)

    d = sub.add_parser(
        "detect",
        help="anomaly detection: AUROC, AUPR, FPR@95%%TPR of each score, "
        "histograms and ROC as PNG, a threshold chosen on held-out data",
        description="Out-of-distribution detection. Scores: "
        + ", ".join(SCORES)
        + ". OOD sets: any data set name (e.g. notmnist:binarize), noise, flip[:NAME], "
        "hflip[:NAME], invert[:NAME] (see chainrule.anomaly).",
        formatter_class=_Help,
    )
    common(d, data_help="")
    d.add_argument(
        "--in",
        dest="in_data",
        default=None,
        help="in-distribution data set (default: the one the run was trained on)",
    )
    d.add_argument(
        "--ood", required=True, help="out-of-distribution set (e.g. notmnist:binarize, noise, flip)"
    )
    d.add_argument(
        "--score", default=None, help=f"comma-separated scores (default all: {','.join(SCORES)})"
    )
    d.add_argument("--compressor", choices=COMPRESSORS, default="png", help="lossless compressor")
    d.add_argument(
        "--false-alarm",
        type=float,
        default=0.05,
        help="false-alarm rate the threshold is chosen for, on in-distribution valid",
    )
    d.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        help="use at most N images of each set, drawn at random with --seed (default: all)",
    )
    d.add_argument("--seed", type=nonneg_int, default=0, help="seed of the --max-images draws")
    d.add_argument(
        "--out-dir", default=None, help="folder for PNG/CSV/JSON (default: RUN_DIR/detect-OOD)"
    )
    d.add_argument(
        "--json", default=None, help="JSON file for the metrics (default: OUT_DIR/detect.json)"
    )
    d.set_defaults(func=cmd_detect)

    f = sub.add_parser(
        "features",
        help="the model's features of every split to an .npz",
        description="Features of every image of every split (and the labels, where the data "
        "set has them) to a compressed .npz, for `chainrule probe --features` or your own use.",
        formatter_class=_Help,
    )
    common(f)
    f.add_argument("--out", default=None, help=".npz file (default: RUN_DIR/features-DATA.npz)")
    f.set_defaults(func=cmd_features)

    pr = sub.add_parser(
        "probe",
        help="linear probe: logistic regression on the features vs on raw pixels",
        description="Representation learning, measured: a logistic regression on the model's "
        "features against one on the raw pixels, C chosen on the valid split, test accuracy.",
        formatter_class=_Help,
    )
    common(pr, data_help="labelled data set (default: the run's; e.g. mnist:binarize, digits)")
    pr.add_argument(
        "--features", default=None, help="features .npz written by `chainrule features`"
    )
    pr.add_argument(
        "--max-iter", type=positive_int, default=300, help="iterations of the logistic regression"
    )
    pr.add_argument("--out", default=None, help="also write the accuracies to this CSV")
    pr.add_argument("--json", default=None, help="also write the accuracies to this JSON")
    pr.set_defaults(func=cmd_probe)


def build_parser() -> argparse.ArgumentParser:
    import chainrule

    p = _Parser(
        prog="chainrule",
        description="Explicit autoregressive generative models of images: exact log p(x), "
        "sampling, completion, anomaly detection, features.",
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=f"chainrule {chainrule.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a model (no arguments: the main job on digits)",
        description="Train a model by maximum likelihood (Adam; the best model on the valid "
        "split is kept; early stopping). With no arguments: the default model "
        f"({DEFAULT_MODEL}) on the embedded digits data set.",
        epilog=_train_epilog(),
        formatter_class=_Help,
    )
    t.add_argument(
        "--model",
        choices=chainrule.available_models(),
        default=None,
        help=f"model to train (default: {DEFAULT_MODEL})",
    )
    t.add_argument(
        "--data",
        default=None,
        help=f"data set: digits, binarized-mnist, mnist, fashion-mnist, notmnist, cifar10, "
        f"folder:PATH, npz:PATH; forms NAME:binarize, NAME:dynamic, NAME:levels=K (default {DEFAULT_DATA})",
    )
    _add_data_dir(t)
    t.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="maximum number of epochs (default: the model's, below)",
    )
    t.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per training step (default 64)",
    )
    t.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="Adam learning rate (default: the model's, below)",
    )
    t.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine", "cosine-time"],
        default=None,
        help="learning-rate schedule (default: the model's, below); cosine decays to 0 over "
        "--epochs, cosine-time over --time-budget (step by step)",
    )
    t.add_argument(
        "--seed",
        type=nonneg_int,
        default=None,
        help="random seed (default 0): the same seed, thread count and machine give the same run",
    )
    t.add_argument(
        "--patience",
        type=nonneg_int,
        default=None,
        help="stop after this many epochs without a better valid NLL (0: never; default: the model's, below)",
    )
    t.add_argument(
        "--max-train",
        type=positive_int,
        default=None,
        help="train on N training images drawn at random with seed 0 (default: all)",
    )
    t.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        metavar="MIN",
        help="stop training after MIN minutes, checked after every step (default: none); "
        "with --resume: MIN more minutes",
    )
    t.add_argument(
        "--closed-form", action="store_true", help="fit by counting (independent, markov, table)"
    )
    t.add_argument("--out", default=None, help="run folder (default: runs/MODEL-DATA[-N])")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run that --out holds (without it, a folder holding a run is refused)",
    )
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run (see below)")
    t.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to train (default auto: CUDA when present)",
    )
    t.add_argument(
        "--bf16", action="store_true", help="bf16 autocast for training (meant for CUDA)"
    )
    t.add_argument(
        "--init-output-bias",
        action="store_true",
        help="start the output biases at the data's per-pixel log-frequencies (NADE)",
    )
    t.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="the weights' dtype (default float32)",
    )
    t.add_argument(
        "--grad-clip",
        type=nonneg_float,
        default=None,
        help="clip the gradient norm to this (default 0: off)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=nonneg_int,
        default=None,
        metavar="STEPS",
        help="also save the training state every STEPS steps (default 0: only at epoch ends, "
        "every --checkpoint-minutes, and on Ctrl-C)",
    )
    t.add_argument(
        "--checkpoint-minutes",
        type=nonneg_float,
        default=None,
        metavar="MIN",
        help="save the training state at least every MIN minutes within an epoch (default 5; 0: off)",
    )
    _add_quiet(t)
    _add_model_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="NLL (nats) and bits/dim of a checkpoint on a data split",
        description="Exact test NLL of a checkpoint: nats per image (with its standard error) "
        "and bits per dimension.",
        formatter_class=_Help,
    )
    e.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    e.add_argument(
        "--data", default=None, help="data set (default: the one the run was trained on)"
    )
    e.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split")
    e.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    e.add_argument("--json", default=None, help="also write the figures to this JSON file")
    _add_data_dir(e)
    _add_quiet(e)
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser(
        "sample",
        help="draw images from a checkpoint into a PNG grid",
        description=f"Draw new images (ancestral sampling, {SAMPLE_BATCH} at a time) into a PNG "
        f"grid of at most {MAX_GRID}, and optionally all of them into an .npz.",
        formatter_class=_Help,
    )
    s.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    s.add_argument("--n", type=positive_int, default=64, help="number of images")
    s.add_argument("--out", default=None, help="PNG file (default: RUN_DIR/samples-nN-seedS.png)")
    s.add_argument("--npz", default=None, help="also save the raw samples to this .npz")
    s.add_argument("--seed", type=nonneg_int, default=0, help="seed of the draw")
    _add_quiet(s)
    s.set_defaults(func=cmd_sample)

    cp = sub.add_parser(
        "complete",
        help="complete occluded images into a PNG grid (originals, occluded inputs, completions)",
        description="Hide part of some images and let the model draw the hidden part: exact "
        "draws from p(hidden | visible) when the visible part is a prefix of the model's ordering.",
        formatter_class=_Help,
    )
    cp.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    cp.add_argument(
        "--data", default=None, help="data set (default: the one the run was trained on)"
    )
    cp.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split")
    cp.add_argument(
        "--occlude",
        default="bottom-half",
        metavar="bottom-half|right-half|box:x,y,w,h",
        help="the hidden part: bottom-half (exact in raster order), right-half, or the "
        "rectangle box:x,y,w,h (column, row, width, height); default bottom-half",
    )
    cp.add_argument(
        "--n", type=positive_int, default=8, help="number of images, drawn at random with --seed"
    )
    cp.add_argument("--samples", type=positive_int, default=3, help="completions per image")
    cp.add_argument(
        "--out", default=None, help="PNG file (default: RUN_DIR/completions-OCCLUDE-seedS.png)"
    )
    cp.add_argument("--seed", type=nonneg_int, default=0, help="seed of the images and the draws")
    _add_data_dir(cp)
    _add_quiet(cp)
    cp.set_defaults(func=cmd_complete)

    q = sub.add_parser(
        "params",
        help="exact parameter counts of every model for an image shape",
        description="Exact parameter counts (Python ints, printed in full: 2^784 - 1 has 237 "
        "digits) of every model, or of one model with its options.",
        formatter_class=_Help,
    )
    q.add_argument("--shape", default="1x28x28", help="CxHxW")
    q.add_argument(
        "--levels", type=int, default=2, help="levels per dimension (2 binary, 256 8-bit; 0: real)"
    )
    q.add_argument("--model", default=None, help="only this model (then model options apply)")
    _add_model_flags(q)
    q.set_defaults(func=cmd_params)

    _add_tool_parsers(sub)
    from chainrule.receptive_field import add_cli_parser as _add_receptive_field_parser

    _add_receptive_field_parser(sub)
    for name, parser in sub.choices.items():  # every command has --quiet and its description
        if not any(a.dest == "quiet" for a in parser._actions):
            _add_quiet(parser)
        if not parser.description:
            parser.description = next(
                (a.help for a in sub._choices_actions if a.dest == name), None
            )
    return p


# ---------------------------------------------------------------------- main
_SIGNAL: dict[str, int] = {}


def _on_sigterm(signum, frame) -> None:
    """SIGTERM: stop like Ctrl-C (clean-up runs, temporary files are removed)."""
    _SIGNAL["signum"] = signum
    raise KeyboardInterrupt


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _out_of_memory_message(e: BaseException) -> str:
    import re

    m = re.search(r"allocate (\d+) bytes", str(e))
    size = f" (it asked for {int(m.group(1)) / 2**30:.1f} GiB)" if m else ""
    return f"out of memory{size}; use a smaller model (--hidden, --layers), --batch-size or --n"


def _one_line(e: BaseException) -> str:
    from chainrule.outputs import _describe_oserror

    if isinstance(e, OSError) and e.filename:
        return _describe_oserror(e, Path(e.filename)) if e.errno else f"{e.strerror}: {e.filename}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    import threading

    from chainrule.train import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    outputs.QUIET = bool(getattr(args, "quiet", False))
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGNAL.clear()
    from chainrule.distributed import env_rank

    rank = env_rank() if os.environ.get("RANK", "0").isdigit() else 0
    who = f"chainrule {args.command}" + (f" (rank {rank})" if rank else "")
    try:
        return args.func(args)
    except (UserError, ValueError, TrainingError, OSError) as e:
        print(f"{who}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise  # a bug of ours: the traceback is what a report needs
        print(f"{who}: error: {_out_of_memory_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{who}: interrupted; nothing was left half-written", file=sys.stderr)
        return 128 + _SIGNAL.get("signum", signal.SIGINT)
    finally:
        outputs.QUIET = False
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    raise SystemExit(main())
