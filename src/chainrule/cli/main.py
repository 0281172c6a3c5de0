"""The parser (one module per command group adds its commands) and ``main``: one-line errors,
exit statuses, SIGTERM as Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from chainrule import allocator, outputs

from . import evaluate, mix, receptive_field, recipes, tools, train
from .common import UserError, _Help, _Parser, add_quiet


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
    train.add_parser(sub)
    evaluate.add_parsers(sub)
    tools.add_parsers(sub)
    mix.add_parser(sub)
    receptive_field.add_parser(sub)
    recipes.add_parsers(sub)
    for name, parser in sub.choices.items():  # every command has --quiet and its description
        if not any(a.dest == "quiet" for a in parser._actions):
            add_quiet(parser)
        if not parser.description:
            parser.description = next(
                (a.help for a in sub._choices_actions if a.dest == name), None
            )
    return p


def _on_sigterm(signum, frame) -> None:
    """SIGTERM: stop like Ctrl-C (clean-up runs, temporary files are removed)."""
    train.SIGNAL["signum"] = signum
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

    from chainrule.training import TrainingError

    parser = build_parser()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (recorded in a run's config.json)
    if args.command is None:
        parser.print_help()
        return 2
    outputs.QUIET = bool(getattr(args, "quiet", False))
    allocator.keep_freed_memory()  # each step's large tensors reuse the last step's memory
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    train.SIGNAL.clear()
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
        return 128 + train.SIGNAL.get("signum", signal.SIGINT)
    finally:
        outputs.QUIET = False
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
