"""``chainrule train``: fresh runs, --recipe NAME, --resume RUN_DIR."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

from .common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    UserError,
    add_command,
    add_common,
    data_line,
    flag,
    info,
)
from .options import (
    TRAIN_FLAG_NAMES,
    add_model_flags,
    add_train_flags,
    given_train_settings,
    model_options,
    option_flag,
    train_flags,
)

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


def run_fixed() -> dict[str, str]:
    """`chainrule train` flags fixed for the life of a run: dest -> field of config.json's
    "train" (every training flag that RESUME_MAY_CHANGE does not name)."""
    return {tf.dest: tf.field for tf in train_flags() if tf.dest not in RESUME_MAY_CHANGE}


#: set by main() when SIGTERM arrives
SIGNAL: dict[str, int] = {}


def train_defaults(name: str) -> dict[str, Any]:
    """TrainConfig's defaults with the model's own training defaults on top."""
    from chainrule.models import model_class
    from chainrule.training import TrainConfig

    return {**dataclasses.asdict(TrainConfig()), **getattr(model_class(name), "train_defaults", {})}


def _resume_settings(args: argparse.Namespace, run: Path):
    """What a --resume continues: the saved settings, the flags that may change applied (and
    printed), every flag that would change the run refused in one line naming it."""
    from chainrule.training import read_counters, read_run_config

    rc = read_run_config(run)  # one-line TrainingError for a missing, corrupt or foreign config
    saved, name, options, data = rc.raw, rc.model, rc.options, rc.data
    train_cfg, levels, data_dir = rc.train, rc.levels, rc.data_dir
    if args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: give one")
    if args.recipe is not None:
        was = (saved.get("recipe") or {}).get("name")
        if args.recipe != was:
            raise UserError(
                f"--recipe cannot change on --resume: {run} was started "
                + (f"with --recipe {was}" if was else "without a recipe")
            )
    # flags that would change the run: refused unless they repeat the saved value
    if args.model is not None and args.model != name:
        raise UserError(f"--model cannot change on --resume: {run} trains {name}")
    if args.data is not None and args.data != data:
        raise UserError(f"--data cannot change on --resume: {run} was trained on {data}")
    for dest, field in run_fixed().items():
        v = getattr(args, dest)
        if v is None or v is False:
            continue
        old = getattr(train_cfg, field)
        if v != old:
            raise UserError(
                f"{flag(dest)} cannot change on --resume: {run} was started with "
                f"{flag(dest)} {old} (start a new run with --out to change it)"
            )
    for key, v in model_options(args).items():
        if key not in options or options[key] != v:
            old = options.get(key, "(not an option of this model)")
            raise UserError(
                f"{option_flag(args, key)} cannot change on --resume: {run} has {key} = {old}"
            )
    # flags that may change
    changes: list[tuple[str, Any, Any]] = []  # (what, before, now)
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
    for field in ("patience", "device", "checkpoint_every", "checkpoint_minutes"):
        v = getattr(args, field)
        if v is not None and v != getattr(train_cfg, field):
            changes.append((field, getattr(train_cfg, field), v))
            setattr(train_cfg, field, v)
    if args.data_dir is not None and args.data_dir != data_dir:
        changes.append(("data_dir", data_dir, args.data_dir))
        data_dir = args.data_dir
    if args.time_budget is not None:
        changes.append(("time budget", "", f"{args.time_budget:g} more minutes"))
    # a finished run: something must let it go on
    stopped = str(counters.get("stop_reason") or "")  # "" when it never stopped
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
        info(f"changed on resume: {field} " + (f"{old} -> {new}" if old != "" else str(new)))
    train_cfg.progress = not args.quiet
    try:
        train_cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    return name, options, data, data_dir, levels, train_cfg, saved.get("recipe")


def _apply_recipe(args: argparse.Namespace) -> tuple[str, str, dict, dict, dict]:
    """--recipe NAME: the recipe's model, data, options and training settings, with the
    flags given beside it on top (each override said). Returns (model, data, options,
    train settings, the record for config.json)."""
    from chainrule.recipes import recipe, recipe_command

    r = recipe(args.recipe)  # ValueError (one line) for an unknown name
    name, data = r["model"], r["data"]
    options = dict(r.get("options", {}))
    settings = dict(r.get("train", {}))
    info(f"recipe {args.recipe}: {r['description']}")
    info(f"recipe settings: {recipe_command(args.recipe)}")
    overrides: dict[str, Any] = {}
    if args.model is not None and args.model != name:
        overrides["model"] = (name, args.model)
        name = args.model
        options = {}  # another model's options do not carry over
    if args.data is not None and args.data != data:
        overrides["data"] = (data, args.data)
        data = args.data
    for key, v in model_options(args).items():
        if options.get(key) != v:
            overrides[key] = (options.get(key), v)
        options[key] = v
    for field, v in given_train_settings(args).items():
        if settings.get(field) != v:
            overrides[field] = (settings.get(field), v)
        settings[field] = v
    for key, (old, new) in overrides.items():
        was = "not set" if old is None else f"{old:g}" if isinstance(old, float) else f"{old}"
        now = f"{new:g}" if isinstance(new, float) else f"{new}"
        info(
            f"overridden by the command line: {flag(TRAIN_FLAG_NAMES.get(key, key))} {now} "
            f"(recipe: {was})"
        )
    record = {
        "name": args.recipe,
        "settings": {
            "model": r["model"],
            "data": r["data"],
            "options": r.get("options", {}),
            "train": r.get("train", {}),
        },
        "overrides": {k: new for k, (old, new) in overrides.items()},
    }
    return name, data, options, settings, record


def cmd_train(args: argparse.Namespace) -> int:
    from chainrule.models import model_class
    from chainrule.training import TrainConfig, preflight_run_folder

    resume = args.resume is not None
    recipe_record = None
    if resume:
        run = Path(args.resume)
        if args.out is not None and Path(args.out) != run:
            raise UserError("--resume RUN continues RUN in place: leave out --out")
        name, options, data, data_dir, levels, train_cfg, recipe_record = _resume_settings(
            args, run
        )
    else:
        if args.recipe is not None:
            name, data, options, given, recipe_record = _apply_recipe(args)
        else:
            name = args.model or DEFAULT_MODEL
            data = args.data or DEFAULT_DATA
            options = model_options(args)
            given = given_train_settings(args)
        data_dir = args.data_dir
        levels = None  # from the data, once loaded
        cls = model_class(name)
        settings = train_defaults(name)
        settings.update(given)
        settings["progress"] = not args.quiet
        train_cfg = TrainConfig(**settings)
        if train_cfg.closed_form and getattr(cls, "fit", None) is None:
            raise UserError(
                f"--closed-form: model {name!r} has no closed-form fit (train it with Adam)"
            )
        run = Path(args.out) if args.out else _fresh_run_dir(name, data, args.recipe)
        train_cfg.validate()
    preflight_run_folder(run, resume, overwrite=args.overwrite)  # before any data is loaded
    existed = run.exists()
    try:
        return _train_in(
            args, run, resume, name, options, data, data_dir, levels, train_cfg, recipe_record
        )
    except BaseException:
        # a run that failed before writing anything leaves no empty folder behind
        if not existed and run.is_dir() and not any(run.iterdir()):
            run.rmdir()
        raise


def _train_in(args, run, resume, name, options, data, data_dir, levels, train_cfg, recipe_record):
    import chainrule
    from chainrule.data import load_dataset
    from chainrule.models import model_class
    from chainrule.training import TrainingInterrupted, describe_result, train

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
        info(f"data:  {data_line(splits, train_cfg.max_train)}")
        info(f"model: {name} with {model.num_parameters():,} parameters")
        world = env_world_size()
        info(f"run:   {run}" + (f" ({world} processes)" if world > 1 else ""))
    run_info = {
        "data": data,
        "data_dir": str(data_dir) if data_dir else None,
        "command": " ".join(["chainrule", *getattr(args, "argv", sys.argv[1:])]),
    }
    if recipe_record is not None:
        run_info["recipe"] = recipe_record
    try:
        result = train(
            model,
            splits,
            train_cfg,
            run,
            resume=resume,
            overwrite=args.overwrite,
            more_minutes=args.time_budget if resume else None,
            run_info=run_info,
        )
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", 0) or SIGNAL.get("signum") or signal.SIGINT
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


def _fresh_run_dir(model: str, data: str, recipe: str | None = None) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in data)
    base = Path("runs") / (recipe or f"{model}-{safe}")
    run, k = base, 1
    while run.exists():
        k += 1
        run = Path(f"{base}-{k}")
    return run


def _train_epilog() -> str:
    """The per-model training defaults and presets, for `chainrule train --help`."""
    import chainrule
    from chainrule.models import model_class
    from chainrule.models.pixelrnn import PRESETS
    from chainrule.training import TrainConfig

    base = dataclasses.asdict(TrainConfig())
    shown = ("epochs", "batch_size", "lr", "lr_schedule", "patience")
    lines = [
        "training defaults (a flag given on the command line wins):",
        "  every model: "
        + ", ".join(f"{flag(k)} {base[k]}" for k in (*shown, "seed", "checkpoint_minutes")),
    ]
    for name in chainrule.available_models():
        own = getattr(model_class(name), "train_defaults", {})
        if own:
            lines.append(f"  {name}: " + ", ".join(f"{flag(k)} {v}" for k, v in own.items()))
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
        "recipes (--recipe NAME; `chainrule recipes` shows their settings): flags given beside",
        "  --recipe override its settings (each override is printed).",
        "a run folder that holds a run (finished or not) is never overwritten without --overwrite;",
        "--resume RUN may change "
        + ", ".join(flag(k) for k in RESUME_MAY_CHANGE)
        + "; other flags "
        "that would change the run are refused.",
        "Ctrl-C or SIGTERM saves the training state and prints the --resume command.",
    ]
    return "\n".join(lines)


def add_parser(sub) -> None:
    import chainrule

    t = add_command(
        sub,
        "train",
        cmd_train,
        help="train a model (no arguments: the main job on digits)",
        description="Train a model by maximum likelihood (Adam; the best model on the valid "
        "split is kept; early stopping). With no arguments: the default model "
        f"({DEFAULT_MODEL}) on the embedded digits data set.",
        epilog=_train_epilog(),
    )
    t.add_argument(
        "--model",
        choices=chainrule.available_models(),
        default=None,
        help=f"model to train (default: {DEFAULT_MODEL})",
    )
    add_common(
        t,
        data=f"data set: digits, binarized-mnist, mnist, fashion-mnist, notmnist, cifar10, "
        f"folder:PATH, npz:PATH; forms NAME:binarize, NAME:dynamic, NAME:levels=K "
        f"(default {DEFAULT_DATA})",
        data_dir=True,
        quiet=False,
    )
    t.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="train a named recipe (see `chainrule recipes`); flags given beside it override "
        "its settings",
    )
    add_train_flags(t)  # --epochs, --batch-size, --lr, ... --device: from TrainConfig
    t.add_argument("--out", default=None, help="run folder (default: runs/MODEL-DATA[-N])")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run that --out holds (without it, a folder holding a run is refused)",
    )
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run (see below)")
    add_common(t)  # --quiet
    add_model_flags(t)
