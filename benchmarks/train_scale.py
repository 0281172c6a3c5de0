"""What reliability and devices cost: training time of the trainer with step checkpoints and
with bf16 autocast, against plain training in the same process (the reference).

Variants, each one epoch of ``chainrule.train.train`` on the first ``--max-train`` images, with
a small valid split (``--n-valid``) so that the epoch's time is mostly training:

* ``fp32``: the reference: float32, state saved at the epoch end only;
* ``fp32+ckpt``: the same with the full training state written atomically (fsync, rename)
  every ``--checkpoint-every`` steps, what ``--resume`` after a kill needs;
* ``bf16``: bf16 autocast for the forward/backward (on CUDA; on CPU only with ``--bf16-cpu``).

Reported per variant: median seconds for the epoch over ``--repeats`` runs (variants
interleaved), images/s, the ratio to the reference, the valid NLL after the epoch (nats), and
the size of one state checkpoint. Writes ``benchmarks/results/train_scale[_cuda].json`` with
the command, date, machine and torch version.

Several processes (torchrun) are not timed here: this project's CPU machine has 2 shared
cores, so a speed-up figure would be noise; ``tests/test_distributed.py`` shows the result is
the same as one process.

Examples::

    # CPU, small (about a minute)
    python benchmarks/train_scale.py --model fvsbn --data digits --max-train 1200 --batch-size 32
    # GPU (about 1-2 minutes on one H100)
    python benchmarks/train_scale.py --device cuda --model pixelcnn --data binarized-mnist \\
        --data-dir ../shared/data --max-train 20000 --batch-size 128 --hidden 64 --layers 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import machine, now, write_json  # noqa: E402

import chainrule  # noqa: E402
from chainrule.data import Splits, load_dataset  # noqa: E402
from chainrule.train import TrainConfig, resolve_device, train  # noqa: E402


def _splits(args) -> Splits:
    s = load_dataset(args.data, data_dir=args.data_dir)
    return Splits(
        s.name,
        s.train[: args.max_train],
        s.valid[: args.n_valid],
        s.test[: args.n_valid],
        s.levels,
        binarization=s.binarization,
    )


def _one(args, splits: Splits, variant: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    opts = {k: getattr(args, k) for k in ("hidden", "layers") if getattr(args, k) is not None}
    levels = (
        None if chainrule.models.model_class(args.model).supports == ("real",) else splits.levels
    )
    model = chainrule.build(args.model, event_shape=splits.event_shape, levels=levels, **opts)
    cfg = TrainConfig(
        epochs=1,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=0,
        device=str(device),
        progress=False,
        num_samples=1,
        patience=0,
        eval_batch_size=512,
        checkpoint_minutes=0.0,
        checkpoint_every=args.checkpoint_every if variant == "fp32+ckpt" else 0,
        bf16=variant == "bf16",
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(model, splits, cfg, run)
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        state_bytes = (run / "state.safetensors").stat().st_size
    return {"seconds": row["seconds"], "valid_nll": row["valid_nll"], "state_bytes": state_bytes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="fvsbn")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-train", type=int, default=1200)
    p.add_argument("--n-valid", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument(
        "--checkpoint-every", type=int, default=1, help="steps between state checkpoints"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16-cpu", action="store_true", help="also time bf16 autocast on CPU")
    p.add_argument(
        "--out", default=None, help="JSON file (default benchmarks/results/train_scale[_cuda].json)"
    )
    args = p.parse_args()

    device = resolve_device(args.device)
    splits = _splits(args)
    variants = ["fp32", "fp32+ckpt"] + (["bf16"] if device.type == "cuda" or args.bf16_cpu else [])
    _one(args, splits, "fp32", device)  # warm-up (allocator, kernels, caches)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            runs[v].append(_one(args, splits, v, device))
            print(f"repeat {r + 1} {v:10s} {runs[v][-1]['seconds']:.3f} s", file=sys.stderr)
    n = len(splits.train)
    steps = -(-n // args.batch_size)
    ref = statistics.median(x["seconds"] for x in runs["fp32"])
    results = {}
    for v in variants:
        sec = statistics.median(x["seconds"] for x in runs[v])
        results[v] = {
            "epoch_seconds_median": sec,
            "epoch_seconds_all": [x["seconds"] for x in runs[v]],
            "images_per_second": n / sec,
            "ratio_to_fp32": sec / ref,
            "valid_nll_nats": runs[v][0]["valid_nll"],
            "state_checkpoint_bytes": runs[v][0]["state_bytes"],
        }
    ck = results["fp32+ckpt"]
    per_ckpt_ms = 1000 * (ck["epoch_seconds_median"] - ref) / max(steps // args.checkpoint_every, 1)
    out = {
        "command": " ".join(["python", *sys.argv]),
        "date": now(),
        "machine": machine(device),
        "torch_version": torch.__version__,
        "device": str(device),
        "model": args.model,
        "data": splits.name,
        "train_images": n,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps,
        "checkpoint_every": args.checkpoint_every,
        "repeats": args.repeats,
        "reference": "fp32 (state saved at the epoch end only), same process",
        "variants": results,
        "checkpoint_overhead_ms_each": per_ckpt_ms,
    }
    path = (
        Path(args.out)
        if args.out
        else ROOT
        / "benchmarks"
        / "results"
        / ("train_scale_cuda.json" if device.type == "cuda" else "train_scale.json")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    print(
        f"{args.model} on {splits.name}, {n} images, batch {args.batch_size}, {steps} steps, {device}"
    )
    for v, r in results.items():
        print(
            f"  {v:10s} {r['epoch_seconds_median']:8.3f} s/epoch  {r['images_per_second']:9.1f} img/s  "
            f"x{r['ratio_to_fp32']:.3f} vs fp32  valid NLL {r['valid_nll_nats']:.3f} nats"
        )
    print(
        f"  state checkpoint: {ck['state_checkpoint_bytes'] / 2**20:.2f} MiB, about {per_ckpt_ms:.2f} ms each "
        f"(every {args.checkpoint_every} steps)"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
