"""``chainrule score``, ``detect``, ``features`` and ``probe``: what a trained model is good
for besides its NLL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chainrule import outputs
from chainrule.outputs import check_output

from .common import (
    RUN_DATA_HELP,
    UserError,
    add_command,
    add_common,
    caveat_line,
    check_output_dir,
    csv_text,
    default_out,
    list_files,
    load_split,
    model_on,
    nonneg_int,
    output_file,
    positive_int,
    run_data,
    safe,
)


def cmd_score(args: argparse.Namespace) -> int:
    """per-image NLL (nats, bits/dim, complexity-corrected) to CSV, and per-pixel NLL maps as PNG

    Score every image of a split: NLL in nats and bits/dim, the lossless code length and the
    complexity-corrected score, one CSV row per image (its index in the split), and per-pixel
    NLL maps of the most and least likely images as PNG.
    """
    import torch

    from chainrule.anomaly import anomaly_scores, pixel_nll
    from chainrule.evaluate import per_image_nll
    from chainrule.outputs import random_subset
    from chainrule.plots import pixel_nll_maps

    data, data_dir = run_data(args.checkpoint, args.data, args.data_dir)
    out = output_file(args, f"scores-{safe(data)}-{args.split}.csv", what="scores")
    model = model_on(args)
    png = out.with_name(out.stem + "_nll_maps.png")
    if args.maps or args.images:
        check_output(png, what="maps")
    x_all, splits = load_split(model, data, data_dir, args.split)
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
    mask = visible_mask(args, model)
    sel = random_subset(len(x_all), args.max_images, seed=args.seed)
    x = x_all[sel]
    s = anomaly_scores(
        model,
        x,
        splits.levels,
        compressor=args.compressor,
        batch_size=args.batch_size,
        progress=True,
        mask=mask,
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
    outputs.write_text(out, csv_text(rows))
    files: list[Path] = [out]
    nll = s["nll"]
    subset = (
        f"{len(x)} of {len(x_all)} images, drawn at random with seed {args.seed}"
        if len(x) < len(x_all)
        else f"{len(x)} images"
    )
    if mask is not None:
        print(
            f"--mask {args.mask}: {int(mask.sum())} of {mask.numel()} values visible; the NLL is "
            "-log p(visible), exact (the missing values summed out)"
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
    if mask is not None and not args.images:
        idx = []  # maps show every pixel's conditional: asked for by --images only
    if idx and not model.has_conditionals:
        print(
            f"note: no per-pixel NLL maps: this {model.name} is an ensemble (a mixture), whose "
            "per-pixel conditionals are not defined",
            file=sys.stderr,
        )
        idx = []
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
                "(NLL in nats)" + caveat_line(splits),
            )
        )
    list_files(files)
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
    out_dir = Path(args.out_dir) if args.out_dir else default_out(args, f"detect-{safe(args.ood)}")
    check_output_dir(out_dir, "--out-dir")
    json_path = Path(args.json) if args.json else out_dir / "detect.json"
    if args.json:
        check_output(json_path, what="--json")
    model = model_on(args)
    mask = visible_mask(args, model)
    data, data_dir = run_data(args.checkpoint, args.in_data, args.data_dir)
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
        mask=mask,
    )
    if mask is not None:
        print(
            f"--mask {args.mask}: every image scored by its {int(mask.sum())} visible values of "
            f"{mask.numel()} (-log p(visible), exact)"
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
    if "complexity" in scores:
        print(
            f"complexity score: NLL in bits minus the {args.compressor.upper()} code length "
            "(Serra et al. 2020)"
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
    list_files(files)
    return 0


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
    files.append(outputs.write_text(out_dir / "scores.csv", csv_text(rows)))
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
                title=f"{model.name}: {name}, AUROC {m['auroc']:.3f}" + caveat_line(splits),
            )
        )
    files.append(
        roc_plot(
            {n: (det.scores_in[n], det.scores_out[n]) for n in scores},
            out_dir / "roc.png",
            title=f"{model.name}: {data} vs {args.ood}" + caveat_line(splits),
        )
    )
    return files


def cmd_features(args: argparse.Namespace) -> int:
    """the model's features of every split to an .npz

    Features of every image of every split (and the labels, where the data set has them) to a
    compressed .npz, for `chainrule probe --features` or your own use.
    """
    from chainrule.data import load_dataset
    from chainrule.probe import dataset_features

    data, data_dir = run_data(args.checkpoint, args.data, args.data_dir)
    out = output_file(args, f"features-{safe(data)}.npz", what="features")
    model = model_on(args)
    splits = load_dataset(data, data_dir=data_dir)
    feats = dataset_features(model, splits, batch_size=args.batch_size, progress=True)
    outputs.save_npz(out, **feats)
    sizes = ", ".join(f"{s} {feats[s].shape}" for s in ("train", "valid", "test"))
    labelled = "with labels" if "train_y" in feats else "no labels"
    print(f"{model.name} features of {data}: {sizes} ({labelled})")
    list_files([out])
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """linear probe: logistic regression on the features vs on raw pixels

    Representation learning, measured: a logistic regression on the model's features against
    one on the raw pixels, C chosen on the valid split, test accuracy.
    """
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
    model = model_on(args)
    data, data_dir = run_data(args.checkpoint, args.data, args.data_dir)
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
        files.append(outputs.write_text(args.out, csv_text(table)))
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
    list_files(files)
    return 0


def add_max_images(p: argparse.ArgumentParser, what: str) -> None:
    """``--max-images N`` (``what``: which images), drawn at random with ``--seed``."""
    p.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        help=f"{what}, drawn at random with --seed (default: all)",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the --max-images draw")


def visible_mask(args: argparse.Namespace, model):
    """``--mask SPEC``: the visible values (True) of images whose SPEC part is missing, checked
    against what the model can marginalize exactly; None without the flag."""
    if not args.mask:
        return None
    from chainrule.completion import occlusion_mask
    from chainrule.evaluate import check_visible_mask

    mask = occlusion_mask(args.mask, model.event_shape, seed=args.seed)
    check_visible_mask(model, mask)
    return mask.to(model._device)


def add_mask(p) -> None:
    p.add_argument(
        "--mask",
        default=None,
        metavar="SPEC",
        help="score images whose SPEC part is missing by the exact likelihood of the visible "
        "part, -log p(visible): SPEC as `chainrule complete --occlude` (bottom-half, right-half, "
        "box:x,y,w,h, checkerboard, random:FRACTION); any SPEC for made and deep-nade, a part "
        "that comes last in the ordering (bottom-half) for the others",
    )


def add_parsers(sub) -> None:
    """Parsers of score, detect, features and probe."""
    from chainrule.anomaly import COMPRESSORS, SCORES

    def common(p, data_help: str = RUN_DATA_HELP) -> None:
        add_common(
            p,
            checkpoint="required",
            data=data_help or None,
            batch_size=256,
            device="auto",
            data_dir=True,
        )

    sc = add_command(sub, "score", cmd_score)
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
    add_max_images(sc, "score only N images")
    add_mask(sc)

    d = add_command(
        sub,
        "detect",
        cmd_detect,
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
    d.add_argument("--compressor", choices=COMPRESSORS, default="png", help="lossless compressor")
    d.add_argument(
        "--false-alarm",
        type=float,
        default=0.05,
        help="false-alarm rate the threshold is chosen for, on in-distribution valid",
    )
    add_max_images(d, "use at most N images of each set")
    add_mask(d)
    d.add_argument(
        "--out-dir", default=None, help="folder for PNG/CSV/JSON (default: RUN_DIR/detect-OOD)"
    )
    d.add_argument(
        "--json", default=None, help="JSON file for the metrics (default: OUT_DIR/detect.json)"
    )

    f = add_command(sub, "features", cmd_features)
    common(f)
    f.add_argument("--out", default=None, help=".npz file (default: RUN_DIR/features-DATA.npz)")

    pr = add_command(sub, "probe", cmd_probe)
    common(pr, data_help="labelled data set (default: the run's; e.g. mnist:binarize, digits)")
    pr.add_argument(
        "--features", default=None, help="features .npz written by `chainrule features`"
    )
    pr.add_argument(
        "--max-iter", type=positive_int, default=300, help="iterations of the logistic regression"
    )
    pr.add_argument("--out", default=None, help="also write the accuracies to this CSV")
    pr.add_argument("--json", default=None, help="also write the accuracies to this JSON")
