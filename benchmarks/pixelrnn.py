"""PixelRNN / PixelCNN on 28 x 28 binary images: speed of the fast layers against the eager
oracle, and test NLL on fixed binarized MNIST after a time budget.

Written to ``benchmarks/results/pixelrnn.json`` (``--out``) and printed.

1. Throughput, per model (``row-lstm``, ``diagonal-bilstm``, ``pixelcnn``) and size (``paper``:
   7 layers x 16 units for the recurrent models, 12 layers x 64 feature maps for PixelCNN;
   ``small``: the ``cpu-small`` preset): images/s of a training step (forward, backward, Adam
   step) and of an evaluation pass (``log_prob`` without gradients), for the library's fast
   layers and for the *reference* (the plain eager oracle of the tests,
   ``tests/oracles/pixelrnn.py``: the Row LSTM one row at a time with
   ``F.conv2d``/``F.conv1d``, the Diagonal BiLSTM one *pixel* at a time) on the
   same weights and the same batch, interleaved repeat by repeat in one process. Medians of
   ``--repeats`` (the reference, far slower, gets ``--ref-repeats``); ratio = fast / reference.
   PixelCNN has no recurrence: its one implementation is timed alone.
2. Training (``--time-budget-min M``, per model in ``--train``): Adam on the 50000 training
   images for M minutes, then test NLL (nats) on the 10000 test images of the fixed
   binarization (Larochelle & Murray 2011), the figure the paper reports (Diagonal BiLSTM 79.20,
   Row LSTM 80.54, PixelCNN 81.30, after far longer training).

Examples::

    python benchmarks/pixelrnn.py --quick                                   # CPU smoke, ~2 min
    nice -n 10 python benchmarks/pixelrnn.py                                # CPU throughput
    nice -n 10 python benchmarks/pixelrnn.py --skip-throughput --train diagonal-bilstm \\
        --time-budget-min 10 --size small                                   # CPU NLL budget
    python benchmarks/pixelrnn.py --device cuda --batch-size 256 \\
        --train diagonal-bilstm --time-budget-min 3                         # GPU, ~5 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import ROOT, binarized_mnist, machine, now, write_json  # noqa: E402
from _common import timed as _timed  # noqa: E402

import chainrule  # noqa: E402
from chainrule.models.pixelrnn import preset_options  # noqa: E402
from tests.oracles.pixelrnn import with_oracle_layers  # noqa: E402

MODELS = ("row-lstm", "diagonal-bilstm", "pixelcnn")
#: the issue's reference points (plain eager PyTorch reading of the paper, 7 x 16, Adam step)
ISSUE_REFERENCE_IMG_S = {
    "diagonal-bilstm": {"cpu2_b64": 3.5, "h200_b256": 876, "h200_b1024": 1622},
    "row-lstm": {"cpu2_b64": 52, "h200_b256": 2784, "h200_b1024": 8519},
    "pixelcnn": {"cpu2_b64": 46, "h200_b256": 26700, "h200_b1024": 30700},
}


#: where the time went (torch.profiler, CPU, 1 thread, paper size, B=64), and what was done
NOTES = [
    "reference = the test oracle: Row LSTM one row at a time (F.conv2d + F.conv1d, gates one "
    "by one); Diagonal BiLSTM one pixel at a time on the unskewed image. Ratios compare it "
    "with the library's layers on the same weights and batch, interleaved in one process.",
    "Diagonal BiLSTM: the first fast version sliced each diagonal out of the skewed gate map; "
    "the backward of every slice zero-filled a full-map gradient (aten::fill_/copy_ were 60-75% "
    "of the step). Gathering the valid skewed cells once (index_select) and splitting per "
    "diagonal made the training step 2x faster; only valid cells are computed (H*W, not "
    "H*(W+H-1)); both directions share one batched matmul per state tap.",
    "Both recurrences are one autograd node each with a hand-written backward through time "
    "(benchmarks/recurrence.py times them alone): the Row LSTM's input-to-state product runs "
    "inside the recurrence, one product per row over the input and state taps; tanh is "
    "2 sigmoid(2x) - 1 (one sigmoid over all four gates). A torch.compile of the old LSTM cell "
    "had given <= 1.1x on CPU; the fused recurrences do not call that cell, so the option that "
    "timed it is gone.",
    "CPU numbers are single-threaded (--threads 1) on a 2-core machine shared with other "
    "processes (load average recorded); the issue's reference points used 2 cores.",
]


def options(name: str, size: str) -> dict:
    return preset_options(name, "paper-mnist" if size == "paper" else "cpu-small")


def load_binarized_mnist(data_dir: str | None):
    """(train, test) uint8 tensors ``(N, 1, 28, 28)`` of the fixed binarization, through the
    library's loader (sha256-checked)."""
    d = binarized_mnist(data_dir)
    return d["train"], d["test"]


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def train_step(model, opt, x, device, amp) -> float:
    with autocast(device, amp):
        loss = -model.log_prob(x).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


class GraphedTrainStep:
    """A whole training step (forward, backward, Adam) captured in one CUDA graph and
    replayed: the recurrence's thousands of small kernels are launched by one call.

    Uses the private ``_conditional_log_probs`` (the public ``log_prob`` checks its input on
    the host, which a graph cannot capture) and Adam with ``capturable=True``. The three
    warm-up steps on the example batch update the weights like ordinary steps.
    """

    def __init__(self, model, lr: float, x_example: torch.Tensor, amp: bool):
        self.model, self.amp = model, amp
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=True)
        self.x = x_example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self._loss().backward()
                self.opt.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss = self._loss()
            self.loss.backward()
            self.opt.step()

    def _loss(self) -> torch.Tensor:
        with autocast(self.x.device, self.amp):
            return -self.model._conditional_log_probs(self.x).flatten(1).sum(1).mean()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.loss


@torch.no_grad()
def eval_pass(model, x, device, amp) -> float:
    with autocast(device, amp):
        return model.log_prob(x).mean().item()


def timed(fn, device) -> float:
    return _timed(fn, device)[0]


def throughput(args, device, x) -> list[dict]:
    rows = []
    b = x.shape[0]
    for name in args.models:
        for size in args.sizes:
            opts = options(name, size)
            torch.manual_seed(0)
            fast = chainrule.build(name, (1, 28, 28), 2, **opts).to(device)
            variants = {"fast": fast}
            if name != "pixelcnn" and not args.no_reference:
                variants["reference"] = with_oracle_layers(fast)
            res = {v: {"train": [], "eval": []} for v in variants}
            opts_ = {v: torch.optim.Adam(m.parameters(), lr=1e-4) for v, m in variants.items()}
            if args.cuda_graph and device.type == "cuda":
                import copy

                gm = copy.deepcopy(fast)
                try:
                    graphed = GraphedTrainStep(gm, 1e-4, x, args.amp)
                    variants["fast+cuda-graph"] = gm
                    res["fast+cuda-graph"] = {"train": [], "eval": []}
                    opts_["fast+cuda-graph"] = graphed
                except Exception as e:  # record why, go on without it
                    res["fast+cuda-graph"] = {
                        "train": [],
                        "eval": [],
                        "compile_error": repr(e)[:300],
                    }
            for rep in range(args.warmup + args.repeats):
                for v, m in variants.items():
                    if v == "reference":  # the oracle is slow: no warm-up, ref_repeats runs
                        if rep >= args.ref_repeats:
                            continue
                        keep = True
                    else:
                        keep = rep >= args.warmup
                    optional = v not in ("fast", "reference")
                    if optional and "compile_error" in res[v]:
                        continue
                    try:
                        if v == "fast+cuda-graph":
                            tt = timed(lambda o=opts_[v]: o(x), device)
                        else:
                            tt = timed(
                                lambda m=m, o=opts_[v]: train_step(m, o, x, device, args.amp),
                                device,
                            )
                        te = timed(lambda m=m: eval_pass(m, x, device, args.amp), device)
                    except Exception as e:
                        # an optional variant (the CUDA-graph one) may fail: note it, go on
                        if not optional:
                            raise
                        res[v]["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        continue
                    if keep:
                        res[v]["train"].append(b / tt)
                        res[v]["eval"].append(b / te)
            row = {"model": name, "size": size, "options": opts, "batch_size": b}
            for v, r in res.items():
                if "compile_error" in r or not r["train"]:
                    row[v] = {"error": r.get("compile_error", "no measurement")}
                    continue
                row[v] = {
                    "train_img_s": statistics.median(r["train"]),
                    "eval_img_s": statistics.median(r["eval"]),
                    "train_all": r["train"],
                    "eval_all": r["eval"],
                }
            if "reference" in res and "error" not in row["reference"]:
                for v in res:
                    if v != "reference" and "error" not in row[v]:
                        row[f"ratio_{v}_vs_reference"] = {
                            k: row[v][f"{k}_img_s"] / row["reference"][f"{k}_img_s"]
                            for k in ("train", "eval")
                        }
            rows.append(row)
            print(
                json.dumps({k: v for k, v in row.items() if k != "options"}, default=_short),
                flush=True,
            )
    return rows


def _short(o):
    return round(o, 2) if isinstance(o, float) else str(o)


def nll(model, data, device, batch, amp) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            xb = data[i : i + batch].to(device, torch.float32)
            with autocast(device, amp):
                total += -model.log_prob(xb).double().sum().item()
    model.train()
    return total / len(data)


def train_budget(args, device, train, test) -> list[dict]:
    rows = []
    for name in args.train:
        size = args.train_size
        opts = options(name, size)
        torch.manual_seed(args.seed)
        model = chainrule.build(name, (1, 28, 28), 2, **opts).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        graphed = None
        if args.cuda_graph and device.type == "cuda":
            try:
                graphed = GraphedTrainStep(
                    model, args.lr, train[: args.batch_size].to(device, torch.float32), args.amp
                )
            except Exception as e:
                print(f"  CUDA graph capture failed, training eagerly: {e!r}"[:300], flush=True)
        g = torch.Generator().manual_seed(args.seed)
        budget = args.time_budget_min * 60
        t0, steps, seen, losses = time.perf_counter(), 0, 0, []
        while time.perf_counter() - t0 < budget:
            perm = torch.randperm(len(train), generator=g)
            for i in range(0, len(train) - args.batch_size + 1, args.batch_size):
                xb = train[perm[i : i + args.batch_size]].to(device, torch.float32)
                if graphed is not None:
                    loss_t = graphed(xb)
                    if steps % 50 == 49:
                        losses.append(loss_t.item())
                else:
                    losses.append(train_step(model, opt, xb, device, args.amp))
                steps += 1
                seen += len(xb)
                if steps % 50 == 0:
                    el = time.perf_counter() - t0
                    print(
                        f"  {name} step {steps} {el:.0f}s loss {statistics.mean(losses[-50:]):.2f}",
                        flush=True,
                    )
                if time.perf_counter() - t0 >= budget:
                    break
        train_s = time.perf_counter() - t0
        test_x = test
        if args.test_images:  # a random subset: the MNIST test set's first half is the easier
            pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
            test_x = test[pick[: args.test_images]]
        t1 = time.perf_counter()
        test_nll = nll(model, test_x, device, args.eval_batch, args.amp)
        row = {
            "model": name,
            "size": size,
            "options": opts,
            "time_budget_min": args.time_budget_min,
            "train_seconds": train_s,
            "steps": steps,
            "images_seen": seen,
            "epochs": seen / len(train),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "cuda_graph": graphed is not None,
            "final_train_loss_last50": statistics.mean(losses[-50:]) if losses else math.nan,
            "test_images": len(test_x),
            "test_nll_nats": test_nll,
            "eval_seconds": time.perf_counter() - t1,
        }
        rows.append(row)
        print(json.dumps(row, default=_short), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (cpu), 256 (cuda)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default="paper,small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-reference", action="store_true", help="skip the eager oracle")
    p.add_argument(
        "--cuda-graph", action="store_true", help="also time (and train with) a CUDA-graphed step"
    )
    p.add_argument("--amp", action="store_true", help="bf16 autocast (cuda only)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument(
        "--train", default="", help="models to train for the time budget, comma-separated"
    )
    p.add_argument("--train-size", default="paper", choices=["paper", "small"])
    p.add_argument("--time-budget-min", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--test-images", type=int, default=0, help="a random subset of N test images (0: all)"
    )
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat, B=16: a smoke run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pixelrnn.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.models = [m for m in args.models.split(",") if m]
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.train = [m for m in args.train.split(",") if m]
    for m in args.models + args.train:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}: use {', '.join(MODELS)}")
    if args.batch_size is None:
        args.batch_size = 256 if device.type == "cuda" else 64
    if args.quick:
        args.sizes, args.repeats, args.warmup, args.batch_size = ["small"], 1, 0, 16

    train, test = load_binarized_mnist(args.data_dir)
    x = train[: args.batch_size].to(device, torch.float32)
    result = {
        "benchmark": "pixelrnn",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": now(),
        "machine": {
            **machine(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        },
        "torch": torch.__version__,
        "dtype": "float32" + (" + bf16 autocast" if args.amp and device.type == "cuda" else ""),
        "data": "binarized MNIST, fixed binarization (50000/10000/10000)",
        "issue_reference_img_s": ISSUE_REFERENCE_IMG_S,
        "notes": NOTES,
        "throughput": [],
        "training": [],
    }
    if not args.skip_throughput:
        result["throughput"] = throughput(args, device, x)
    if args.train and args.time_budget_min > 0:
        result["training"] = train_budget(args, device, train, test)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # keep the other part of an earlier run (throughput vs training)
        old = json.loads(out.read_text())
        for part, ran in (
            ("throughput", not args.skip_throughput),
            ("training", bool(result["training"])),
        ):
            if not ran and old.get(part):
                result[part] = old[part]
                result[f"{part}_from_run"] = {k: old.get(k) for k in ("command", "date", "machine")}
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
