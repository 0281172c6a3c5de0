"""The ``chainrule`` command line.

    chainrule train                     # the main job: the default model on the embedded digits
    chainrule train --model M --data D [--epochs N] [--batch-size B] [--lr LR] [--seed S]
                    [--out RUN_DIR] [--resume RUN_DIR] [--device auto|cpu|cuda] [--hidden H] ...
    chainrule eval --checkpoint RUN_DIR [--data D] [--split test]
    chainrule sample --checkpoint RUN_DIR [--n N] [--out FILE.png]
    chainrule complete --checkpoint RUN_DIR [--data D] --occlude bottom-half|right-half|box:x,y,w,h
                       [--n 8] [--samples 3] [--out completions.png]
    chainrule params --shape 1x28x28 --levels 2
    chainrule score --checkpoint RUN_DIR [--data D] [--out scores.csv]     # + per-pixel NLL maps
    chainrule detect --checkpoint RUN_DIR [--in D_in] --ood D_out          # AUROC, histograms, ROC
    chainrule features --checkpoint RUN_DIR [--data D] [--out feats.npz]
    chainrule probe --checkpoint RUN_DIR --data D                          # features vs raw pixels

Mistakes a user can make (a wrong option, a missing file, a foreign checkpoint, data of the
wrong shape) end in one line on stderr and exit status 1; argparse's own usage errors exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

#: the main job: `chainrule train` with no arguments
DEFAULT_DATA = "digits"
DEFAULT_MODEL = "nade"

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
            raise UserError(
                f"cannot resume: {cfg_path} is not a chainrule run config ({e})"
            ) from None
        if args.epochs is not None:
            train_cfg.epochs = args.epochs
        if args.device is not None:
            train_cfg.device = args.device
        for key in ("checkpoint_every", "checkpoint_minutes"):  # safe to change on resume
            if getattr(args, key) is not None:
                setattr(train_cfg, key, getattr(args, key))
        if args.bf16:
            train_cfg.bf16 = True
        train_cfg.progress = train_cfg.progress and not args.quiet
        data_dir = args.data_dir or data_dir
    else:
        name = args.model or DEFAULT_MODEL
        data = args.data or DEFAULT_DATA
        data_dir = args.data_dir
        options = model_options(args)
        cls = model_class(name)
        defaults = {**dataclasses.asdict(TrainConfig()), **getattr(cls, "train_defaults", {})}
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
        train_cfg = TrainConfig(**defaults)
        run = Path(args.out) if args.out else _fresh_run_dir(name, data)
    train_cfg.validate()
    splits = load_dataset(data, data_dir=data_dir)
    if not resume:  # a real-valued model (RNADE) sees the data dequantized to [0, 1]
        levels = None if model_class(name).supports == ("real",) else splits.levels
    import torch

    from chainrule.distributed import env_rank, env_world_size

    torch.manual_seed(train_cfg.seed)  # the same initial weights in every process and every run
    model = chainrule.build(name, event_shape=splits.event_shape, levels=levels, **options)
    main_rank = env_rank() == 0
    if main_rank:
        print(f"data:  {splits.describe()}", file=sys.stderr)
        print(f"model: {name} with {model.num_parameters():,} parameters", file=sys.stderr)
        world = env_world_size()
        print(f"run:   {run}" + (f" ({world} processes)" if world > 1 else ""), file=sys.stderr)
    result = train(
        model,
        splits,
        train_cfg,
        run,
        resume=resume,
        run_info={
            "data": data,
            "data_dir": str(data_dir) if data_dir else None,
            "command": " ".join(sys.argv),
        },
    )
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
        Path(args.json).write_text(
            json.dumps({"data": data, "split": args.split, **s}, indent=2) + "\n"
        )
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


def cmd_complete(args: argparse.Namespace) -> int:
    """Complete occluded test images: a grid of originals, occluded inputs, completions."""
    import warnings

    import torch

    from chainrule.completion import complete, completion_grid, occlusion_mask
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible, to_model_input

    if args.n < 1:
        raise UserError(f"--n must be a positive int, got {args.n}")
    if args.samples < 1:
        raise UserError(f"--samples must be a positive int, got {args.samples}")
    model = _load_checkpoint(args.checkpoint)
    mask = occlusion_mask(args.occlude, model.event_shape)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "completions.png"
    _check_writable(out)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    check_compatible(model, splits.event_shape, splits.levels, data)
    x = splits.split(args.split)[: args.n]
    if len(x) == 0:
        raise UserError(f"{data} {args.split} is an empty set (0 images)")
    g = torch.Generator().manual_seed(args.seed)
    images = to_model_input(model, x, splits.levels, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comp = complete(model, images, mask, samples=args.samples, generator=g)
    completion_grid(images, mask, comp, model.levels, out)
    exact = "not exact (see note)" if caught else "exact draws from p(hidden | visible)"
    print(f"wrote {out} ({len(x)} images x {args.samples} completions, {args.occlude}: {exact})")
    for w in caught[:1]:
        print(f"note: {w.message}", file=sys.stderr)
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
    print(
        f"exact parameter counts for {c}x{h}x{w} images, "
        f"{'real values' if levels is None else f'{levels} levels'} (n = {c * h * w} dimensions)"
    )
    for name in names:
        cls = model_class(name)
        lv = None if cls.supports == ("real",) else levels
        if lv is None and "real" not in cls.supports:
            continue
        try:
            opts = (
                model_options(args)
                if args.model
                else ({"order": args.order} if name == "markov" and args.order else {})
            )
            count = chainrule.count_parameters(name, shape, lv, **opts)
        except ValueError as e:
            print(f"  {name:16s} -- ({e})")
            continue
        form = _power_form(count, lv)
        note = "" if lv == levels else "  (real-valued model)"
        print(f"  {name:16s} {count}" + (f"  = {form}" if form else "") + note)
    return 0


# ---------------------------------------------------------------------- score / detect / features / probe
def _model_on(args: argparse.Namespace):
    """The checkpoint's model, in eval mode, on --device."""
    from chainrule.train import resolve_device

    model = _load_checkpoint(args.checkpoint)
    return model.to(resolve_device(getattr(args, "device", None) or "auto")).eval()


def _default_out_dir(args: argparse.Namespace, name: str) -> Path:
    ck = Path(args.checkpoint)
    return (ck if ck.is_dir() else ck.parent) / name


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _list_files(files: list[Path | str]) -> None:
    """Every command ends by listing what it wrote."""
    if not files:
        print("files written: none")
    for f in files:
        print(f"wrote {f}")


def cmd_score(args: argparse.Namespace) -> int:
    import csv

    import torch

    from chainrule.anomaly import anomaly_scores, pixel_nll
    from chainrule.data import load_dataset
    from chainrule.evaluate import check_compatible
    from chainrule.plots import pixel_nll_maps

    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    splits = load_dataset(data, data_dir=data_dir)
    x = splits.split(args.split)
    if len(x) == 0:
        raise UserError(f"{data} {args.split} is an empty set (0 images)")
    check_compatible(model, splits.event_shape, splits.levels, data)
    if args.max_images is not None:
        if args.max_images < 1:
            raise UserError(f"--max-images must be a positive int, got {args.max_images}")
        x = x[: args.max_images]
    out = (
        Path(args.out)
        if args.out
        else _default_out_dir(args, f"scores-{_safe(data)}-{args.split}.csv")
    )
    _check_writable(out)
    s = anomaly_scores(
        model,
        x,
        splits.levels,
        compressor=args.compressor,
        batch_size=args.batch_size,
        progress=True,
    )
    labels = splits.labels.get(args.split)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["index", "nll_nats", "bits_per_dim", f"{args.compressor}_bits", "complexity_bits"]
            + (["label"] if labels is not None else [])
        )
        for i in range(len(x)):
            row = [
                i,
                f"{s['nll'][i]:.6f}",
                f"{s['bits_per_dim'][i]:.6f}",
                f"{s['compression_bits'][i]:.0f}",
                f"{s['complexity'][i]:.6f}",
            ]
            w.writerow(row + ([int(labels[i])] if labels is not None else []))
    files: list[Path] = [out]
    nll = s["nll"]
    print(
        f"{data} {args.split} ({len(x)} images): NLL {nll.mean():.3f} nats per image, "
        f"{s['bits_per_dim'].mean():.4f} bits/dim; {args.compressor} length {s['compression_bits'].mean():.1f} "
        f"bits; complexity-corrected score {s['complexity'].mean():.2f} bits (mean)"
    )
    if args.images:
        try:
            idx = [int(t) for t in args.images.split(",") if t.strip()]
        except ValueError:
            raise UserError(
                f"--images must be comma-separated image indices, got {args.images!r}"
            ) from None
        bad = [i for i in idx if not 0 <= i < len(x)]
        if bad or not idx:
            raise UserError(f"--images must be indices in 0..{len(x) - 1}, got {args.images!r}")
    else:  # the most likely and the least likely images
        order = nll.argsort()
        k = min(args.maps // 2, len(x))
        idx = list(dict.fromkeys(order[:k].tolist() + order[::-1][: args.maps - k].tolist()))
    if idx and args.maps > 0 or args.images:
        xi = x[torch.as_tensor(idx)]
        maps = pixel_nll(model, xi, splits.levels)
        png = out.with_name(out.stem + "_nll_maps.png")
        titles = [f"#{i}: {nll[i]:.1f}" for i in idx]
        files.append(
            pixel_nll_maps(
                xi,
                maps,
                splits.levels,
                png,
                titles,
                title=f"{model.name} on {data} {args.split}: where is the model surprised? "
                "(NLL in nats)",
            )
        )
    _list_files(files)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    import csv

    from chainrule.anomaly import SCORE_UNITS, SCORES, detect
    from chainrule.data import load_dataset
    from chainrule.plots import roc_plot, score_histogram

    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.in_data, args.data_dir)
    scores = tuple(t.strip() for t in args.score.split(",") if t.strip()) if args.score else SCORES
    bad = [t for t in scores if t not in SCORES]
    if bad or not scores:
        raise UserError(f"--score must name some of {', '.join(SCORES)}, got {args.score!r}")
    if not 0.0 <= args.false_alarm < 1.0:
        raise UserError(f"--false-alarm must lie in [0, 1), got {args.false_alarm}")
    out_dir = (
        Path(args.out_dir) if args.out_dir else _default_out_dir(args, f"detect-{_safe(args.ood)}")
    )
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
        batch_size=args.batch_size,
        progress=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"in-distribution: {det.in_name} test ({len(next(iter(det.scores_in.values())))} images); "
        f"threshold chosen on its valid split for a {args.false_alarm:.0%} false-alarm rate"
    )
    print(
        f"out-of-distribution: {det.ood_name} ({len(next(iter(det.scores_out.values())))} images)"
    )
    print(
        f"complexity score: NLL in bits minus the {args.compressor.upper()} code length (Serra et al. 2020)"
    )
    print(det.table())
    files: list[Path] = []
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
                title=f"{model.name}: {name}, AUROC {m['auroc']:.3f}",
            )
        )
    files.append(
        roc_plot(
            {n: (det.scores_in[n], det.scores_out[n]) for n in scores},
            out_dir / "roc.png",
            title=f"{model.name}: {data} vs {args.ood}",
        )
    )
    csv_path = out_dir / "scores.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "index", *scores])
        for tag, sc in (("in", det.scores_in), ("ood", det.scores_out)):
            for i in range(len(sc[scores[0]])):
                w.writerow([tag, i, *(f"{sc[n][i]:.6f}" for n in scores)])
    files.append(csv_path)
    json_path = Path(args.json) if args.json else out_dir / "detect.json"
    _check_writable(json_path)
    json_path.write_text(
        json.dumps(
            {"checkpoint": str(args.checkpoint), "model": model.name, **det.as_dict()}, indent=2
        )
        + "\n"
    )
    files.append(json_path)
    _list_files(files)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from chainrule.data import load_dataset
    from chainrule.probe import dataset_features

    model = _model_on(args)
    data, data_dir = _run_data(args.checkpoint, args.data, args.data_dir)
    out = Path(args.out) if args.out else _default_out_dir(args, f"features-{_safe(data)}.npz")
    _check_writable(out)
    splits = load_dataset(data, data_dir=data_dir)
    feats = dataset_features(model, splits, batch_size=args.batch_size)
    np.savez_compressed(out, **feats)
    sizes = ", ".join(f"{s} {feats[s].shape}" for s in ("train", "valid", "test"))
    labelled = "with labels" if "train_y" in feats else "no labels"
    print(f"{model.name} features of {data}: {sizes} ({labelled})")
    _list_files([out])
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from chainrule.data import load_dataset
    from chainrule.probe import _check_probe_input, dataset_features, linear_probe, raw_pixels

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
        feats = dataset_features(model, splits, batch_size=args.batch_size)
    rows = [
        ("features", linear_probe(feats, name=f"{model.name} features", max_iter=args.max_iter)),
        ("pixels", linear_probe(pixels, name=f"pixels of {data}", max_iter=args.max_iter)),
    ]
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
        out = Path(args.out)
        _check_writable(out)
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["representation", "dim", "C", "train_accuracy", "valid_accuracy", "test_accuracy"]
            )
            for name, r in rows:
                w.writerow(
                    [
                        name,
                        r["dim"],
                        r["C"],
                        r["train_accuracy"],
                        r["valid_accuracy"],
                        r["test_accuracy"],
                    ]
                )
        files.append(out)
    if args.json:
        jp = Path(args.json)
        _check_writable(jp)
        jp.write_text(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "model": model.name,
                    "data": data,
                    **dict(rows),
                },
                indent=2,
            )
            + "\n"
        )
        files.append(jp)
    _list_files(files)
    return 0


def _add_tool_parsers(sub) -> None:
    """Parsers of score, detect, features and probe."""
    from chainrule.anomaly import COMPRESSORS, SCORES

    def common(p, data_help: str = "data set (default: the one the run was trained on)") -> None:
        p.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
        if data_help:
            p.add_argument("--data", default=None, help=data_help)
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        _add_data_dir(p)

    sc = sub.add_parser(
        "score",
        help="per-image NLL (nats, bits/dim, complexity-corrected) to CSV, "
        "and per-pixel NLL maps as PNG",
    )
    common(sc)
    sc.add_argument("--split", default="test", choices=["train", "valid", "test"])
    sc.add_argument("--out", default=None, help="CSV file (default: RUN_DIR/scores-DATA-SPLIT.csv)")
    sc.add_argument(
        "--compressor",
        choices=COMPRESSORS,
        default="png",
        help="lossless compressor for the complexity-corrected score (default png)",
    )
    sc.add_argument(
        "--maps",
        type=int,
        default=8,
        help="per-pixel NLL maps of the N/2 most and N/2 least likely images (0: none)",
    )
    sc.add_argument(
        "--images", default=None, help="comma-separated indices of images to map instead"
    )
    sc.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    sc.set_defaults(func=cmd_score)

    d = sub.add_parser(
        "detect",
        help="anomaly detection: AUROC, AUPR, FPR@95%%TPR of each score, "
        "histograms and ROC as PNG, a threshold chosen on held-out data",
        description="Out-of-distribution detection. Scores: "
        + ", ".join(SCORES)
        + ". OOD sets: any data set name (e.g. notmnist:binarize), noise, flip[:NAME], "
        "hflip[:NAME], invert[:NAME] (see chainrule.anomaly).",
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
    d.add_argument("--compressor", choices=COMPRESSORS, default="png")
    d.add_argument(
        "--false-alarm",
        type=float,
        default=0.05,
        help="false-alarm rate the threshold is chosen for, on in-distribution valid (default 0.05)",
    )
    d.add_argument("--max-images", type=int, default=None, help="use at most N images of each set")
    d.add_argument(
        "--out-dir", default=None, help="folder for PNG/CSV/JSON (default: RUN_DIR/detect-OOD)"
    )
    d.add_argument(
        "--json", default=None, help="JSON file for the metrics (default: OUT_DIR/detect.json)"
    )
    d.set_defaults(func=cmd_detect)

    f = sub.add_parser("features", help="the model's features of every split to an .npz")
    common(f)
    f.add_argument("--out", default=None, help=".npz file (default: RUN_DIR/features-DATA.npz)")
    f.set_defaults(func=cmd_features)

    pr = sub.add_parser(
        "probe", help="linear probe: logistic regression on the features vs on raw pixels"
    )
    common(pr, data_help="labelled data set (default: the run's; e.g. mnist:binarize, digits)")
    pr.add_argument(
        "--features", default=None, help="features .npz written by `chainrule features`"
    )
    pr.add_argument(
        "--max-iter", type=int, default=300, help="iterations of the logistic regression"
    )
    pr.add_argument("--out", default=None, help="also write the accuracies to this CSV")
    pr.add_argument("--json", default=None, help="also write the accuracies to this JSON")
    pr.set_defaults(func=cmd_probe)


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

    t = sub.add_parser(
        "train",
        help="train a model (no arguments: the main job on digits)",
        description="Train a model by maximum likelihood. With no arguments: the "
        "default model on the embedded digits data set.",
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
    t.add_argument("--epochs", type=int, default=None, help="maximum number of epochs")
    t.add_argument("--batch-size", type=int, default=None, help="images per training step")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    t.add_argument(
        "--lr-schedule", choices=["constant", "cosine"], default=None, help="learning-rate schedule"
    )
    t.add_argument(
        "--seed", type=int, default=None, help="random seed (runs are deterministic under a seed)"
    )
    t.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better valid NLL (0: never)",
    )
    t.add_argument(
        "--max-train", type=int, default=None, help="use only the first N training images"
    )
    t.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MIN",
        help="stop training after MIN minutes",
    )
    t.add_argument(
        "--closed-form", action="store_true", help="fit by counting (independent, markov, table)"
    )
    t.add_argument("--out", default=None, help="run folder (default: runs/MODEL-DATA[-N])")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to train (default auto)",
    )
    t.add_argument(
        "--bf16", action="store_true", help="bf16 autocast for training (meant for CUDA)"
    )
    t.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="the weights' dtype (default float32)",
    )
    t.add_argument(
        "--grad-clip", type=float, default=None, help="clip the gradient norm to this (0: off)"
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="also save the training state every STEPS steps (default: epoch ends, and every "
        "--checkpoint-minutes); --resume continues exactly from the last one",
    )
    t.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=None,
        metavar="MIN",
        help="save the training state at least every MIN minutes within an epoch (default 5; 0: off)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="NLL (nats) and bits/dim of a checkpoint on a data split")
    e.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    e.add_argument(
        "--data", default=None, help="data set (default: the one the run was trained on)"
    )
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

    cp = sub.add_parser(
        "complete",
        help="complete occluded images into a PNG grid (originals, occluded inputs, completions)",
    )
    cp.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    cp.add_argument(
        "--data", default=None, help="data set (default: the one the run was trained on)"
    )
    cp.add_argument("--split", default="test", choices=["train", "valid", "test"])
    cp.add_argument(
        "--occlude",
        default="bottom-half",
        metavar="bottom-half|right-half|box:x,y,w,h",
        help="the hidden part: bottom-half (exact in raster order), right-half, or the "
        "rectangle box:x,y,w,h (column, row, width, height); default bottom-half",
    )
    cp.add_argument("--n", type=int, default=8, help="number of images (the first N of the split)")
    cp.add_argument("--samples", type=int, default=3, help="completions per image")
    cp.add_argument("--out", default=None, help="PNG file (default: RUN_DIR/completions.png)")
    cp.add_argument("--seed", type=int, default=0)
    _add_data_dir(cp)
    cp.set_defaults(func=cmd_complete)

    q = sub.add_parser("params", help="exact parameter counts of every model for an image shape")
    q.add_argument("--shape", default="1x28x28", help="CxHxW (default 1x28x28)")
    q.add_argument(
        "--levels", type=int, default=2, help="levels per dimension (2 binary, 256 8-bit; 0: real)"
    )
    q.add_argument("--model", default=None, help="only this model (then model options apply)")
    _add_model_flags(q)
    q.set_defaults(func=cmd_params)

    _add_tool_parsers(sub)
    from chainrule.receptive_field import add_cli_parser as _add_receptive_field_parser

    _add_receptive_field_parser(sub)
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
        msg = (
            str(e)
            if not isinstance(e, (FileNotFoundError, PermissionError)) or not e.filename
            else f"{e.strerror}: {e.filename}"
        )
        from chainrule.distributed import env_rank

        rank = env_rank() if os.environ.get("RANK", "0").isdigit() else 0
        who = f"chainrule {args.command}" + (f" (rank {rank})" if rank else "")
        print(f"{who}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"chainrule {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
