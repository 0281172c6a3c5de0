"""``chainrule mix``: the uniform mixture of trained models, written as a checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .common import UserError, add_command, add_quiet, is_pretrained, list_files, run_config


def cmd_mix(args: argparse.Namespace) -> int:
    """the uniform mixture of trained models (an ensemble of orderings), as a checkpoint

    Writes the uniform mixture p(x) = (1/K) sum_k p_k(x) of K trained models of the same
    images (run folders, .safetensors files or pretrained:NAME) to the run folder --out: an
    ordinary checkpoint, exact in log p(x), which eval, sample, complete, score, detect and
    features take like any other. Models trained on different orderings (--ordering raster,
    columns, reverse-raster, reverse-columns) make the best mixtures. Completion is exact when
    the given pixels are a prefix of every member's ordering.
    """
    from chainrule.checkpoint import save
    from chainrule.models.mixture import from_models
    from chainrule.outputs import write_json
    from chainrule.training.run_folder import check_run_folder, preflight_run_folder

    from .common import load_checkpoint

    if len(args.checkpoints) < 2:
        raise UserError("a mixture needs two or more checkpoints")
    out = Path(args.out)
    preflight_run_folder(out, resume=False, overwrite=args.overwrite)
    models = [load_checkpoint(c) for c in args.checkpoints]
    try:
        mix = from_models(models)
    except ValueError as e:
        raise UserError(str(e)) from None
    saved = [run_config(c) or {} for c in args.checkpoints]  # each member's run, if recorded
    datas = [s.get("data") for s in saved]
    data = datas[0] if all(d == datas[0] for d in datas) else None
    size = sum(p.numel() * p.element_size() for p in mix.parameters())
    check_run_folder(out, resume=False, need_bytes=size, overwrite=args.overwrite)
    weights = save(mix, out)
    config = {
        "command": " ".join(["chainrule", *getattr(args, "argv", sys.argv[1:])]),
        "model": "mixture",
        "members": [
            {"checkpoint": c if is_pretrained(c) else str(Path(c)), "model": m.name}
            for c, m in zip(args.checkpoints, models, strict=True)
        ],
        "data": data,
        "data_dir": saved[0].get("data_dir") if data else None,
    }
    config_path = out / "config.json"
    write_json(config_path, config)
    if data is None and not args.quiet:
        print(
            "note: the members do not record one data set: give --data to eval and the others",
            file=sys.stderr,
        )
    print(
        f"mixture of {mix.num_members} models ({', '.join(m.name for m in models)}), "
        f"{mix.num_parameters():,} parameters"
    )
    list_files([weights, out / "model.json", config_path])
    print(f"evaluate it with: chainrule eval --checkpoint {shlex.quote(str(out))}")
    return 0


def add_parser(sub) -> None:
    p = add_command(sub, "mix", cmd_mix)
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="run folders, .safetensors files or pretrained:NAME, two or more",
    )
    p.add_argument("--out", required=True, help="run folder to write the mixture to")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    add_quiet(p)
