"""Representation learning: linear-probe accuracy on a model's features beside raw pixels.

Binarized MNIST has no labels, so the models trained on it (fixed binarization) are probed on
``mnist:binarize``: the labelled 8-bit MNIST test set thresholded at 128 and split
8000/1000/1000 with seed 0 (``chainrule.data``). Models of 8x8 images are probed on ``digits``
(scikit-learn's digits binarized at 8, split 1257/270/270, seed 0).

The probe (``chainrule.probe.linear_probe``): multinomial logistic regression on standardized
features, ``C`` chosen on the valid split from {0.01, 0.1, 1}, accuracy on the test split. The
*reference* is the same probe on the raw pixels, run in the same process: every accuracy is
also given as a ratio to it. An untrained (randomly initialized) copy of each model is probed
too, to show what training adds beyond random features of the same size.

Models: run folders (``--checkpoint``, trained on binarized-mnist, or on digits for the digits
probe), or trained here for a time budget (``--train`` on binarized-mnist, ``--digits-train``
on digits). Writes ``benchmarks/results/features.json``.

Examples::

    # CPU, small: NADE trained 3 min on 5000 binarized-MNIST images, and 1 min on digits
    python benchmarks/features.py --train nade --budget-min 3 --digits-train nade,pixelcnn
    # GPU
    python benchmarks/features.py --device cuda --size large --train nade,pixelcnn,row-lstm \\
        --budget-min 2.5 --max-train 0 --digits-train nade,pixelcnn,row-lstm
    # models trained elsewhere (e.g. by benchmarks/anomaly.py --runs-dir benchmarks/runs)
    python benchmarks/features.py --checkpoint benchmarks/runs/nade-binarized-mnist
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json  # noqa: E402
from anomaly import ROOT, SIZES, get_models, header  # noqa: E402

import chainrule  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.probe import dataset_features, linear_probe, raw_pixels  # noqa: E402
from chainrule.train import resolve_device  # noqa: E402


def probe_row(model, splits, pixels_acc: float) -> dict:
    t0 = time.perf_counter()
    feats = dataset_features(model, splits, batch_size=512)
    r = linear_probe(feats, name=f"{model.name} features")
    return {
        "test_accuracy": round(r["test_accuracy"], 4),
        "ratio_to_pixels": round(r["test_accuracy"] / pixels_acc, 4),
        "valid_accuracy": round(r["valid_accuracy"], 4),
        "C": r["C"],
        "dim": r["dim"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def untrained_like(model) -> chainrule.AutoregressiveModel:
    torch.manual_seed(0)
    fresh = chainrule.build(
        model.name, event_shape=model.event_shape, levels=model.levels, **vars(model.config)
    )
    return fresh.to(next(model.parameters()).device).eval()


def probe_all(models: dict, splits, out: dict, untrained: bool) -> None:
    t0 = time.perf_counter()
    px = linear_probe(raw_pixels(splits), name=f"pixels of {splits.name}")
    res: dict = {
        "pixels": {
            "test_accuracy": round(px["test_accuracy"], 4),
            "ratio_to_pixels": 1.0,
            "C": px["C"],
            "dim": px["dim"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    }
    print(f"[{splits.name}] raw pixels: test accuracy {px['test_accuracy']:.4f}", flush=True)
    for key, (model, info) in models.items():
        if tuple(model.event_shape) != splits.event_shape:
            continue
        res[key] = {**probe_row(model, splits, px["test_accuracy"]), "model": info}
        print(
            f"[{splits.name}] {key}: test accuracy {res[key]['test_accuracy']:.4f} "
            f"({res[key]['ratio_to_pixels']:.3f} x pixels, dim {res[key]['dim']})",
            flush=True,
        )
        if untrained:
            u = f"{key} (untrained)"
            res[u] = probe_row(untrained_like(model), splits, px["test_accuracy"])
            print(f"[{splits.name}] {u}: test accuracy {res[u]['test_accuracy']:.4f}", flush=True)
    out["probe"][splits.name] = res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", action="append", help="run folder (binarized-mnist or digits model)"
    )
    p.add_argument(
        "--train", default="", help="models to train here on binarized-mnist (nade,pixelcnn,...)"
    )
    p.add_argument(
        "--digits-train",
        default="nade,pixelcnn",
        help="models to train here on digits ('' for none)",
    )
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--options", default="{}", help="JSON options per model")
    p.add_argument(
        "--budget-min", type=float, default=3.0, help="training minutes per binarized-MNIST model"
    )
    p.add_argument(
        "--digits-budget-min", type=float, default=1.0, help="training minutes per digits model"
    )
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument(
        "--max-train",
        type=int,
        default=5000,
        help="first N binarized-MNIST training images (0: all)",
    )
    p.add_argument("--n-eval-train", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-untrained", action="store_true", help="skip the untrained-model baselines")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default=None)
    p.add_argument(
        "--data-dir", default=os.environ.get("CHAINRULE_DATA", str(ROOT.parent / "shared" / "data"))
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "features.json"))
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    runs_dir = (
        Path(args.runs_dir)
        if args.runs_dir
        else Path(tempfile.mkdtemp(prefix="chainrule-features-"))
    )

    out = header(args, device)
    out.update(
        {
            "probe_method": "logistic regression on standardized features, C in {0.01, 0.1, 1} chosen on valid, "
            "test accuracy; reference: the same probe on raw pixels, same run",
            "data": {
                "mnist:binarize": "8-bit MNIST test set thresholded at 128, split 8000/1000/1000 (seed 0); "
                "probes models trained on binarized-mnist (fixed binarization)",
                "digits": "scikit-learn digits binarized at 8, split 1257/270/270 (seed 0)",
            },
            "probe": {},
        }
    )
    mnist_models = get_models(
        args, load_dataset("binarized-mnist", data_dir=args.data_dir), device, runs_dir
    )
    if any(tuple(m.event_shape) == (1, 28, 28) for m, _ in mnist_models.values()):
        probe_all(
            mnist_models,
            load_dataset("mnist:binarize", data_dir=args.data_dir),
            out,
            not args.no_untrained,
        )
    digits = load_dataset("digits")
    dargs = argparse.Namespace(
        **{
            **vars(args),
            "checkpoint": None,
            "train": args.digits_train,
            "budget_min": args.digits_budget_min,
            "max_train": 0,
            "n_eval_train": 270,
        }
    )
    digit_models = {k: v for k, v in mnist_models.items() if tuple(v[0].event_shape) == (1, 8, 8)}
    digit_models.update(get_models(dargs, digits, device, runs_dir))
    if digit_models:
        probe_all(digit_models, digits, out, not args.no_untrained)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
