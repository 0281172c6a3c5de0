"""Anomaly detection on fixed binarized MNIST: AUROC by model, OOD set and score.

In-distribution: the fixed binarization of MNIST (Larochelle & Murray 2011); the test split is
scored, the threshold of each score is chosen on the valid split (5% false alarms). OOD sets:

* ``notmnist:binarize``: the 10000 notMNIST letters thresholded at 128 (the shared copy);
* ``noise``: uniform binary noise (fair coins, seed 0);
* ``flip``: the binarized-MNIST test digits turned upside down.

Scores (``chainrule.anomaly``): ``nll`` (nats), ``bits_per_dim`` (same ranking as nll),
``complexity`` (Serra et al. 2020: NLL in bits minus the PNG code length of the image).

Models come from run folders (``--checkpoint RUN``, e.g. written by ``chainrule train`` or
``benchmarks/nade.py --run-dir``) or are trained here for a time budget (``--train``,
``--budget-min`` per model, on the first ``--max-train`` training images). The *reference* is
the independent-pixel model (rung 1), fitted in closed form in the same run: every AUROC is
also given as a ratio to the reference's on the same OOD set and score.

Writes ``benchmarks/results/anomaly.json``: ``auroc[model][ood][score]``, the full metrics, the
models' test NLL and where they came from, and the command, date, machine and torch version.

Examples::

    # CPU, small: two small models trained 3 minutes each, 2000 images per set
    python benchmarks/anomaly.py --train nade,pixelcnn --budget-min 3 --n 2000
    # GPU: bigger models trained here, every image (see --size)
    python benchmarks/anomaly.py --device cuda --size large --train nade,pixelcnn,row-lstm \\
        --budget-min 2.5 --max-train 0 --runs-dir benchmarks/runs
    # models trained elsewhere
    python benchmarks/anomaly.py --checkpoint runs/nade-binarized-mnist --checkpoint runs/pixelcnn
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import header as _header  # noqa: E402
from _common import write_json  # noqa: E402

import chainrule  # noqa: E402
from chainrule import anomaly  # noqa: E402
from chainrule.data import Splits, load_dataset  # noqa: E402
from chainrule.train import TrainConfig, resolve_device, train  # noqa: E402

OOD_SETS = ("notmnist:binarize", "noise", "flip")
#: notMNIST is never trained on: all 10000 letters; flipped digits: the 10000 test digits
OOD_SPLIT = {"notmnist:binarize": "all", "noise": "test", "flip": "test"}
REFERENCE = "independent"

#: model options by size: "small" suits a few CPU minutes, "large" a GPU
SIZES: dict[str, dict[str, dict]] = {
    "small": {
        "nade": {"hidden": 100},
        "pixelcnn": {"hidden": 16, "layers": 3},
        "row-lstm": {"preset": "cpu-small"},
        "diagonal-bilstm": {"preset": "cpu-small"},
        "fvsbn": {},
    },
    "large": {  # the papers' binarized-MNIST sizes (NADE: Larochelle & Murray 2011)
        "nade": {"hidden": 500},
        "pixelcnn": {"preset": "paper-mnist"},
        "row-lstm": {"preset": "paper-mnist"},
        "diagonal-bilstm": {"preset": "paper-mnist"},
        "fvsbn": {},
    },
}


def header(args: argparse.Namespace, device: torch.device) -> dict:
    return _header(device, device=str(device))


def subset(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """``n`` images drawn without replacement with a fixed seed, kept in order (all if n is None)."""
    if not n or n >= len(x):
        return x
    return x[
        torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    ]


def budget_splits(s: Splits, max_train: int, n_eval: int) -> Splits:
    """The training data cut to a budget: the first ``max_train`` training images (0: all) and
    ``n_eval`` valid / test images for the trainer's own evaluation."""
    tr = s.train[:max_train] if max_train else s.train
    # random subsets, not the first images: the first 2000 test images of binarized MNIST are
    # not typical (images 1000-1999 hold about half the ink of the others)
    return Splits(
        s.name,
        tr,
        subset(s.valid, n_eval, 4),
        subset(s.test, n_eval, 5),
        levels=s.levels,
        binarization=s.binarization,
        labels={k: (None if v is None else v) for k, v in s.labels.items()},
    )


def train_small(name: str, options: dict, splits: Splits, args, device, runs_dir: Path) -> tuple:
    """Train ``name`` for ``args.budget_min`` minutes; returns (model, info)."""
    torch.manual_seed(args.seed)
    model = chainrule.build(name, event_shape=splits.event_shape, levels=splits.levels, **options)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        patience=0,
        device=str(device),
        time_budget_min=args.budget_min,
        num_samples=4,
        progress=False,
        eval_batch_size=512,
    )
    run = runs_dir / f"{name}-{splits.name}"
    t0 = time.perf_counter()
    result = train(model, budget_splits(splits, args.max_train, args.n_eval_train), cfg, out=run)
    seconds = time.perf_counter() - t0
    model = chainrule.load(run).to(device).eval()  # the best epoch's weights
    info = {
        "source": "trained here",
        "run": str(run),
        "options": options,
        "train_seconds": round(seconds, 1),
        "epochs": result.get("epochs"),
        "max_train": args.max_train or len(splits.train),
    }
    return model, info


def get_models(args, splits: Splits, device, runs_dir: Path) -> dict:
    """``{key: (model, info)}`` from --checkpoint folders and --train names."""
    models: dict = {}
    for ck in args.checkpoint or []:
        model = chainrule.load(ck).to(device).eval()
        key = model.name if model.name not in models else f"{model.name}@{Path(ck).name}"
        models[key] = (
            model,
            {
                "source": "checkpoint",
                "run": str(ck),
                "options": {k: v for k, v in vars(model.config).items()},
            },
        )
    for name in [t for t in (args.train or "").split(",") if t]:
        if name in models:
            print(f"[{name}] a checkpoint is given: not training it again", file=sys.stderr)
            continue
        opts = {**SIZES[args.size].get(name, {}), **json.loads(args.options).get(name, {})}
        print(f"[{name}] training {opts} for {args.budget_min} min on {device}", file=sys.stderr)
        models[name] = train_small(name, opts, splits, args, device, runs_dir)
    return models


def reference_model(splits: Splits, device) -> tuple:
    model = chainrule.build(REFERENCE, event_shape=splits.event_shape, levels=splits.levels)
    model.fit(splits.train.float())
    return model.to(device).eval(), {"source": "closed-form fit on all training images (reference)"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", action="append", help="run folder of a model trained on binarized-mnist"
    )
    p.add_argument(
        "--train", default="", help="comma-separated models to train here (nade,pixelcnn,row-lstm)"
    )
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="model options preset")
    p.add_argument(
        "--options", default="{}", help='JSON options per model, e.g. \'{"nade": {"hidden": 500}}\''
    )
    p.add_argument(
        "--budget-min",
        type=float,
        default=3.0,
        help="training minutes per model (checked per epoch)",
    )
    p.add_argument(
        "--epochs", type=int, default=1000, help="epoch cap (the budget usually stops first)"
    )
    p.add_argument(
        "--max-train", type=int, default=5000, help="first N training images (0: all 50000)"
    )
    p.add_argument(
        "--n-eval-train", type=int, default=2000, help="valid/test images the trainer evaluates"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--n", type=int, default=0, help="images per set (in test, in valid, each OOD set; 0: all)"
    )
    p.add_argument("--compressor", default="png", choices=["png", "zlib"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--runs-dir", default=None, help="keep the models trained here in this folder")
    p.add_argument(
        "--data-dir", default=os.environ.get("CHAINRULE_DATA", str(ROOT.parent / "shared" / "data"))
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "anomaly.json"))
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))

    splits = load_dataset("binarized-mnist", data_dir=args.data_dir)
    runs_dir = (
        Path(args.runs_dir)
        if args.runs_dir
        else Path(tempfile.mkdtemp(prefix="chainrule-anomaly-"))
    )
    models = {
        REFERENCE: reference_model(splits, device),
        **get_models(args, splits, device, runs_dir),
    }
    n = args.n or None

    out = header(args, device)
    out.update(
        {
            "data": "binarized-mnist (fixed binarization, Larochelle & Murray 2011): test scored, valid for thresholds",
            "ood_sets": {
                "notmnist:binarize": "all 10000 notMNIST letters thresholded at 128",
                "noise": "uniform binary noise (seed 0)",
                "flip": "binarized-MNIST test digits upside down",
            },
            "scores": {
                "nll": "nats per image",
                "bits_per_dim": "NLL / (784 ln 2): same ranking as nll",
                "complexity": f"NLL in bits minus the {args.compressor.upper()} code length (Serra et al. 2020)",
            },
            "n_images_per_set": n or "all (10000)",
            "reference": REFERENCE,
            "auroc": {},
            "auroc_ratio_to_reference": {},
            "metrics": {},
            "models": {},
        }
    )
    x_test, x_valid = subset(splits.test, n, 1), subset(splits.valid, n, 2)
    x_ood = {
        ood: subset(
            anomaly.load_ood(ood, splits, split=OOD_SPLIT[ood], data_dir=args.data_dir)[0], n, 3
        )
        for ood in OOD_SETS
    }
    # code lengths do not depend on the model: computed once per set
    bits = {
        k: anomaly.compression_bits(v, 2, args.compressor)
        for k, v in {"test": x_test, "valid": x_valid, **x_ood}.items()
    }
    for key, (model, info) in models.items():
        t0 = time.perf_counter()
        kw = {"compressor": args.compressor, "batch_size": 512}
        s_test = anomaly.anomaly_scores(model, x_test, 2, code_bits=bits["test"], **kw)
        s_valid = anomaly.anomaly_scores(model, x_valid, 2, code_bits=bits["valid"], **kw)
        info = {
            **info,
            "model": model.name,
            "parameters": model.num_parameters(),
            "test_nll_nats": round(float(s_test["nll"].mean()), 3),
            "test_nll_images": len(x_test),
        }
        out["models"][key] = info
        out["auroc"][key], out["metrics"][key] = {}, {}
        for ood in OOD_SETS:
            det = anomaly.compare_scores(
                anomaly.Detection("binarized-mnist", ood, args.compressor, 0.05),
                s_test,
                s_valid,
                anomaly.anomaly_scores(model, x_ood[ood], 2, code_bits=bits[ood], **kw),
            )
            out["auroc"][key][ood] = {s: round(det.metrics[s]["auroc"], 4) for s in anomaly.SCORES}
            out["metrics"][key][ood] = {
                s: {
                    k: (round(v, 5) if isinstance(v, float) else v)
                    for k, v in det.metrics[s].items()
                }
                for s in anomaly.SCORES
            }
        info["scoring_seconds"] = round(time.perf_counter() - t0, 1)
        print(
            f"{key:18s} test NLL {info['test_nll_nats']:8.2f} nats  "
            + "  ".join(
                f"{ood}: "
                + "/".join(f"{out['auroc'][key][ood][s]:.3f}" for s in ("nll", "complexity"))
                for ood in OOD_SETS
            )
            + "  (AUROC nll/complexity)",
            flush=True,
        )
    ref = out["auroc"][REFERENCE]
    for key in out["auroc"]:
        out["auroc_ratio_to_reference"][key] = {
            ood: {
                s: round(out["auroc"][key][ood][s] / max(ref[ood][s], 1e-9), 4)
                for s in anomaly.SCORES
            }
            for ood in OOD_SETS
        }
    trained = [k for k in out["auroc"] if k != REFERENCE] or [REFERENCE]

    def best(ood: str) -> dict:
        k, s = max(
            ((k, s) for k in trained for s in anomaly.SCORES),
            key=lambda ks: out["auroc"][ks[0]][ood][ks[1]],
        )
        return {"model": k, "score": s, "auroc": out["auroc"][k][ood][s]}

    out["best"] = {ood: best(ood) for ood in OOD_SETS}
    out["targets"] = {
        "notmnist_auroc_at_least_0.95": out["best"]["notmnist:binarize"]["auroc"] >= 0.95,
        "noise_auroc_at_least_0.99": out["best"]["noise"]["auroc"] >= 0.99,
        "flip_raw_likelihood_auroc": {k: out["auroc"][k]["flip"]["nll"] for k in out["auroc"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(json.dumps({"best": out["best"], "targets": out["targets"]}, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
