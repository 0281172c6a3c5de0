"""``python -m chainrule.pretrained add RUN_DIR --recipe NAME [--name NAME]`` | ``list`` | ``verify``."""

from __future__ import annotations

import argparse
import sys

from chainrule import pretrained


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chainrule.pretrained", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="ship the best model of a finished run")
    a.add_argument("run_dir", help="a finished run folder (model.safetensors, result.json)")
    a.add_argument("--recipe", required=True, help="the recipe that made it")
    a.add_argument("--name", default=None, help="the pretrained name (default: the recipe's)")
    sub.add_parser("list", help="the shipped weights")
    sub.add_parser("verify", help="check every shipped file against index.json")
    args = p.parse_args(argv)
    try:
        if args.command == "add":
            e = pretrained.add(args.run_dir, args.recipe, args.name)
            name = args.name or args.recipe
            print(
                f"added pretrained:{name} ({e['bytes'] / 1024:.0f} KiB, test NLL "
                f"{e['test_nll_nats']}, sha256 {e['sha256']})"
            )
            print(f"total shipped: {pretrained.total_bytes() / 2**20:.2f} MiB")
        elif args.command == "list":
            print(pretrained.describe())
        else:
            for name in pretrained.names():
                pretrained.resolve(name)
                print(f"ok pretrained:{name}")
    except (ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
