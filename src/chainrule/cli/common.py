"""What every command shares: the parser classes, argparse types, the common flags
(--checkpoint, --data, --device, --batch-size, --data-dir, --quiet, defined here once), the
checkpoint and data a command works on, and where its default outputs go."""

from __future__ import annotations

import argparse
import inspect
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from chainrule import outputs
from chainrule.outputs import OutputError, check_output

#: the main job: `chainrule train` with no arguments
DEFAULT_DATA = "digits"
DEFAULT_MODEL = "nade"

#: the largest --n a PNG grid shows (beyond it, samples go to --npz only)
MAX_GRID = 4096
#: images generated at once by `sample` (memory is proportional to it, not to --n)
SAMPLE_BATCH = 1024


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 1."""


# ---------------------------------------------------------------------- argparse
class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (not the usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
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


def add_command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], **kw: Any
) -> argparse.ArgumentParser:
    """The subcommand ``name``, run by ``func``. Its ``help`` (the line in ``chainrule
    --help``) and ``description`` are the first line and the rest of ``func``'s docstring,
    unless ``kw`` gives them (with ``epilog``)."""
    head, _, rest = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    kw.setdefault("help", " ".join(head.split()))
    kw.setdefault("description", " ".join(rest.split()) or None)
    p = sub.add_parser(name, formatter_class=_Help, **kw)
    p.set_defaults(func=func)
    return p


def add_common(
    p: argparse.ArgumentParser,
    *,
    checkpoint: str | None = None,
    data: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    data_dir: bool = False,
    quiet: bool = True,
) -> None:
    """The flags several commands share, defined once.

    Args:
        checkpoint: ``"required"`` or ``"optional"`` (None: no --checkpoint).
        data: the help line of --data (None: no --data).
        batch_size: the default of --batch-size (None: no --batch-size).
        device: the default of --device (None: no --device; ``"unset"``: default None).
        data_dir: add --data-dir.
        quiet: add --quiet.
    """
    if checkpoint is not None:
        p.add_argument(
            "--checkpoint",
            required=checkpoint == "required",
            default=None,
            help="run folder, .safetensors file or pretrained:NAME (see `chainrule pretrained`)",
        )
    if data is not None:
        p.add_argument("--data", default=None, help=data)
    if batch_size is not None:
        p.add_argument(
            "--batch-size", type=positive_int, default=batch_size, help="images per batch"
        )
    if device is not None:
        p.add_argument(
            "--device",
            choices=["auto", "cpu", "cuda"],
            default=None if device == "unset" else device,
            help="where to compute" if device != "unset" else "where to compute (default auto)",
        )
    if data_dir:
        p.add_argument(
            "--data-dir",
            default=None,
            help="folder holding the data files (default: $CHAINRULE_DATA, then ~/.cache/chainrule)",
        )
    if quiet:
        add_quiet(p)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (results only)"
    )


RUN_DATA_HELP = "data set (default: the one the run was trained on)"


# ---------------------------------------------------------------------- parsing helpers
def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--shape must look like CxHxW (e.g. 1x28x28), got {text!r}") from None
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(f"--shape must be three positive ints CxHxW (e.g. 1x28x28), got {text!r}")
    return parts


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def info(msg: str) -> None:
    """A line of information on stderr (not under --quiet)."""
    outputs.say(msg)


def data_line(splits, max_train: int = 0) -> str:
    """The data line: the data set, and what is true of it that a figure needs beside it."""
    try:
        text = splits.describe(max_train=max_train or None)
    except TypeError:  # a Splits without the max_train argument
        text = splits.describe()
    caveat = getattr(splits, "caveat", "")
    return text + (f"\n       note: {caveat}" if caveat else "")


def caveat_line(splits) -> str:
    """The data set's caveat as extra title lines of a plot that shows a figure ("" if none)."""
    import textwrap

    caveat = getattr(splits, "caveat", "")
    return "\n" + textwrap.fill(caveat, 90) if caveat else ""


def safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def csv_text(rows: list[list]) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def list_files(files: Sequence[Path | str]) -> None:
    """Every command ends by listing what it wrote."""
    if not files:
        print("files written: none")
    for f in files:
        print(f"wrote {f}")


def check_output_dir(path: Path, what: str) -> None:
    """An output folder: writable if it exists, else creatable (checked without creating it)."""
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"cannot write {what} {path}: it is a file, not a folder")
        check_output(path / "check", what=what)
    else:
        check_output(path, what=what)


# ---------------------------------------------------------------------- checkpoints
def is_pretrained(checkpoint: str | None) -> bool:
    from chainrule.pretrained import PREFIX

    return bool(checkpoint) and str(checkpoint).startswith(PREFIX)


def load_checkpoint(path: str):
    import chainrule

    return chainrule.load(path)


def model_on(args: argparse.Namespace):
    """The checkpoint's model, in eval mode, on --device."""
    from chainrule.training import resolve_device

    model = load_checkpoint(args.checkpoint)
    return model.to(resolve_device(getattr(args, "device", None) or "auto")).eval()


def run_config(checkpoint: str) -> dict | None:
    """The config.json of the run a checkpoint comes from (a pretrained one: its registry
    entry, which records the data), or None."""
    if is_pretrained(checkpoint):
        from chainrule.pretrained import entry

        e = entry(str(checkpoint))
        return {"data": e["data"]} if e.get("data") else None
    ck = Path(checkpoint)
    cfg = (ck if ck.is_dir() else ck.parent) / "config.json"
    if cfg.is_file():
        try:
            saved = json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return saved if isinstance(saved, dict) else None
    return None


def run_data(checkpoint: str, data: str | None, data_dir: str | None) -> tuple[str, str | None]:
    """The data set named on the command line, else the one the run was trained on."""
    if data:
        return data, data_dir
    saved = run_config(checkpoint)
    if saved is not None:
        try:
            return saved["data"], data_dir or saved.get("data_dir")
        except (KeyError, TypeError):
            pass
    raise UserError(f"--data is needed: {checkpoint} does not record the data it was trained on")


def load_split(model: Any, data: str, data_dir: str | None, split: str) -> tuple[Any, Any]:
    """``(images, splits)``: split ``split`` of data set ``data``, checked against the model's
    shape and levels, and refused when it is empty."""
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible

    splits = load_dataset(data, data_dir=data_dir)
    check_compatible(model, splits.event_shape, splits.levels, data)
    x = splits.split(split)
    if len(x) == 0:
        raise UserError(f"{data} {split} is an empty set (0 images)")
    return x, splits


def output_file(args: argparse.Namespace, default_name: str, *, what: str) -> Path:
    """``--out`` if given, else :func:`default_out`; checked before any work
    (:func:`chainrule.outputs.check_output`)."""
    if args.out:
        return check_output(args.out, what="--out")
    return check_output(default_out(args, default_name), what=what)


def default_out(args: argparse.Namespace, name: str) -> Path:
    """A default output file beside the checkpoint: in the run folder, or, for a
    NAME.safetensors file, NAME-<name> next to it; for ``pretrained:NAME`` (no run folder, and
    the package is no place to write): NAME-<name> in the current folder."""
    if is_pretrained(args.checkpoint):
        return Path(f"{safe(str(args.checkpoint).split(':', 1)[1])}-{name}")
    ck = Path(args.checkpoint)
    return ck / name if ck.is_dir() else ck.with_name(f"{ck.stem}-{name}")
