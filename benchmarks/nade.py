"""NADE on fixed binarized MNIST: test NLL, and training / sampling speed against the loop.

Two parts, both written to ``benchmarks/results/nade.json`` (and printed):

1. Throughput at one batch size (default 512), NADE with H hidden units (default 500), raster
   order: a training step (forward, backward, Adam step) and sampling, for chainrule's NADE
   (``impl=auto``: the compiled kernel on CPU, :mod:`chainrule.native`, with the PyTorch
   sparse in-place path it replaces timed beside it; the blockwise recomputing path on CUDA)
   beside the *reference*: the per-dimension Python loop that public implementations use
   (``a = a + x_i W_i; h = sigmoid(a); logit_i = h . V_i + b_i``, autograd through the loop),
   run on the same weights, the same data, in the same process, interleaved repeat by repeat.
   Reported: images/s of each, medians over ``--repeats``, and the ratio of the medians.
2. Training (unless ``--throughput-only``) with chainrule's model-agnostic trainer: Adam,
   cosine learning-rate decay, early stopping on the 10000 validation images (patience), test
   NLL in nats on the 10000 test images of the fixed binarization (Larochelle & Murray 2011).
   With ``--time-budget-min`` the number of epochs is cut so that the cosine schedule ends
   within the budget (estimated from the measured training throughput), so the budget is not
   spent on an un-annealed run.

Examples::

    python benchmarks/nade.py --throughput-only                 # CPU: speed only (~5 min)
    python benchmarks/nade.py --max-train 2000 --epochs 2       # CPU: check the training part
    python benchmarks/nade.py --device cuda --time-budget-min 6 # GPU: the full benchmark
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ROOT, binarized_mnist, load_average, machine, now, timed, write_json

import chainrule  # noqa: E402
from chainrule.models.base import draw_uniforms  # noqa: E402
from chainrule.models.nade import activate  # noqa: E402


# ---------------------------------------------------------------------- the reference loop
def reference_log_prob(model, x: torch.Tensor) -> torch.Tensor:
    """The per-dimension loop of public NADE code, on ``model``'s weights (raster order only).

    x: (B, D) binary, float. Returns (B,) log p(x) in nats.
    """
    w, v = model.weight_in[:, 0], model.weight_out[:, 0]  # (D, H), (D, H)
    b, act = model.bias_out[:, 0], model.config.activation
    a = model.bias_hidden.expand(x.shape[0], -1)
    logits = []
    for i in range(x.shape[1]):
        h = activate(a, act)
        logits.append(h @ v[i] + b[i])
        a = a + x[:, i : i + 1] * w[i]
    logits = torch.stack(logits, 1)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)


@torch.no_grad()
def reference_sample(model, n: int, generator: torch.Generator) -> torch.Tensor:
    """The per-dimension sampling loop of public NADE code (raster order): (n, D)."""
    w, v = model.weight_in[:, 0], model.weight_out[:, 0]
    b, act = model.bias_out[:, 0], model.config.activation
    d = w.shape[0]
    u = draw_uniforms(n, (d,), generator, device=w.device).to(w.dtype)  # the model's uniforms
    a = model.bias_hidden.expand(n, -1)
    out = []
    for i in range(d):
        x_i = (u[:, i] < torch.sigmoid(activate(a, act) @ v[i] + b[i])).to(w.dtype)  # u < p
        out.append(x_i)
        a = a + x_i[:, None] * w[i]
    return torch.stack(out, 1)


# ---------------------------------------------------------------------- helpers
def init_output_bias(model, train_x: torch.Tensor) -> None:
    """Output biases at the data's log-frequencies: the model's own method, which the
    trainer's ``init_output_bias`` hook (``--init-output-bias``) calls too."""
    model.init_output_bias(train_x.to(torch.uint8))


# ---------------------------------------------------------------------- part 1: throughput
def throughput(args, device, data) -> dict:
    torch.manual_seed(args.seed)
    opts = dict(hidden=args.hidden, activation=args.activation)
    if args.block:
        opts["block"] = args.block
    model = chainrule.build("nade", (1, 28, 28), 2, **opts)
    init_output_bias(model, data["train"])  # samples then have the data's density of ones
    model = model.to(device)
    x = data["train"][: args.batch_size].to(device)
    xf = x.flatten(1)
    # the two computations agree (float32): same weights, same data
    with torch.no_grad():
        diff = (model.log_prob(x) - reference_log_prob(model, xf)).abs().max().item()
    assert diff < 1e-3 * model.dim, f"fast path and reference disagree by {diff}"
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step_fast():
        opt.zero_grad(set_to_none=True)
        (-model.log_prob(x).mean()).backward()
        opt.step()

    def step_ref():
        opt.zero_grad(set_to_none=True)
        (-reference_log_prob(model, xf).mean()).backward()
        opt.step()

    def step_sparse():  # the PyTorch in-place path, timed beside the compiled one
        opt.zero_grad(set_to_none=True)
        (-model._log_prob(x, "sparse").mean()).backward()
        opt.step()

    def sample_sparse():
        impl, model.config.impl = model.config.impl, "sparse"
        try:
            model.sample(n, generator=torch.Generator(gen_device).manual_seed(0))
        finally:
            model.config.impl = impl

    gen_device = "cpu"
    n = args.batch_size

    def sample_fast():
        model.sample(n, generator=torch.Generator(gen_device).manual_seed(0))

    def sample_ref():
        reference_sample(model, n, torch.Generator(gen_device).manual_seed(0))

    # sampling: the fast sampler and the reference draw the same images from the same uniforms
    with torch.no_grad():
        ones = model.sample(n, generator=torch.Generator(gen_device).manual_seed(2)).mean().item()
        same = torch.equal(
            model.sample(n, generator=torch.Generator(gen_device).manual_seed(1)).flatten(1),
            reference_sample(model, n, torch.Generator(gen_device).manual_seed(1)),
        )
    fns = {
        "train_fast": step_fast,
        "train_ref": step_ref,
        "sample_fast": sample_fast,
        "sample_ref": sample_ref,
    }
    if model._impl(xf) == "native":
        fns.update(train_sparse=step_sparse, sample_sparse=sample_sparse)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu = {k: [] for k in times}
    for r in range(args.repeats):
        for k, fn in fns.items():
            wall, c = timed(fn, device)
            times[k].append(wall)
            cpu[k].append(c)
        print(
            f"  repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    res = {
        "batch_size": n,
        "hidden": args.hidden,
        "repeats": args.repeats,
        "fast_impl": model._impl(xf),
        "reference": "per-dimension Python loop with autograd (a = a + x_i W_i; h = act(a); logit_i = h.V_i + b_i)",
        "train_images_per_s": n / med["train_fast"],
        "train_images_per_s_reference": n / med["train_ref"],
        "train_speedup": med["train_ref"] / med["train_fast"],
        "sample_images_per_s": n / med["sample_fast"],
        "sample_images_per_s_reference": n / med["sample_ref"],
        "sample_speedup": med["sample_ref"] / med["sample_fast"],
        "sampler_equals_reference_bit_for_bit": bool(same),
        "native_kernel": model.uses_native(),
        "weights": "random (default init) with output biases at the logits of the training pixel means",
        "fraction_of_ones_in_samples": ones,
        "fraction_of_ones_in_data": data["train"].mean().item(),
        "max_abs_logprob_diff_vs_reference_float32": diff,
        "seconds_per_repeat": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "cpu_seconds_per_repeat": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
        "train_speedup_cpu_time": med_cpu["train_ref"] / med_cpu["train_fast"],
        "sample_speedup_cpu_time": med_cpu["sample_ref"] / med_cpu["sample_fast"],
        "load_average_at_end": load_average(),
        "threads": torch.get_num_threads(),
        "note": "a training step is forward + backward + Adam step of -mean log p(x) over one batch",
    }
    if "train_sparse" in med:  # the PyTorch path the compiled kernel replaces
        res.update(
            train_images_per_s_sparse=n / med["train_sparse"],
            train_speedup_sparse=med["train_ref"] / med["train_sparse"],
            sample_images_per_s_sparse=n / med["sample_sparse"],
            sample_speedup_sparse=med["sample_ref"] / med["sample_sparse"],
        )
        print(
            f"(PyTorch sparse path: train {res['train_speedup_sparse']:.2f}x, sample "
            f"{res['sample_speedup_sparse']:.2f}x the reference)",
            flush=True,
        )
    print(
        f"train: {res['train_images_per_s']:.0f} img/s vs reference {res['train_images_per_s_reference']:.0f} img/s "
        f"-> {res['train_speedup']:.2f}x;  sample: {res['sample_images_per_s']:.0f} img/s vs reference "
        f"{res['sample_images_per_s_reference']:.0f} img/s -> {res['sample_speedup']:.2f}x  "
        f"(by process CPU time: train {res['train_speedup_cpu_time']:.2f}x, sample {res['sample_speedup_cpu_time']:.2f}x)",
        flush=True,
    )
    return res


# ---------------------------------------------------------------------- part 2: training
def training(args, device, data) -> dict:
    from chainrule.data import Splits
    from chainrule.train import TrainConfig, train

    to_u8 = lambda t: t.to(torch.uint8)  # noqa: E731
    train_x = data["train"][: args.max_train] if args.max_train else data["train"]
    splits = Splits(
        name="binarized-mnist",
        train=to_u8(train_x),
        valid=to_u8(data["valid"]),
        test=to_u8(data["test"]),
        levels=2,
        binarization="fixed",
    )
    epochs = args.epochs
    planned = None
    torch.manual_seed(args.seed)
    opts = dict(hidden=args.hidden, activation=args.activation, ensemble=args.ensemble)
    if args.block:
        opts["block"] = args.block
    model = chainrule.build("nade", (1, 28, 28), 2, **opts)
    if not args.zero_init_bias:
        init_output_bias(model, train_x)
    if args.time_budget_min:
        # time a few training steps at the training batch size to fit the cosine schedule
        probe = chainrule.build("nade", (1, 28, 28), 2, **opts).to(device)
        xb = train_x[: args.train_batch_size].to(device)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-6)

        def one_step():
            opt.zero_grad(set_to_none=True)
            (-probe.log_prob(xb).mean()).backward()
            opt.step()

        one_step()
        step_s = statistics.median(timed(one_step, device)[0] for _ in range(5))
        steps = math.ceil(len(train_x) / args.train_batch_size)
        # + one evaluation of the validation images per epoch (forward only: ~1/3 of a step)
        epoch_s = steps * step_s + len(data["valid"]) / args.train_batch_size * step_s / 3
        planned = max(1, int(0.9 * 60 * args.time_budget_min / epoch_s))
        epochs = min(epochs, planned)
        print(
            f"~{epoch_s:.1f} s per epoch -> {planned} epochs fit the {args.time_budget_min} min budget",
            flush=True,
        )
        del probe
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=args.train_batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        patience=args.patience,
        seed=args.seed,
        device=str(device),
        time_budget_min=args.time_budget_min,
        eval_batch_size=args.eval_batch_size,
        progress=args.progress,
    )
    print(
        f"training NADE H={args.hidden} for up to {epochs} epochs (batch {cfg.batch_size}, lr {cfg.lr}, "
        f"{cfg.lr_schedule}, patience {cfg.patience}) on {len(train_x)} images",
        flush=True,
    )
    result = train(model, splits, cfg, out=args.run_dir)
    result["planned_epochs"] = epochs
    result["epochs_from_time_budget"] = planned
    result["train_config"] = {
        k: getattr(cfg, k)
        for k in (
            "epochs",
            "batch_size",
            "lr",
            "lr_schedule",
            "patience",
            "seed",
            "time_budget_min",
        )
    }
    result["model_options"] = opts
    result["output_bias_init"] = "zeros" if args.zero_init_bias else "logit of training pixel means"
    print(
        f"test NLL {result['test_nll_nats']:.2f} nats after {result['epochs']} epochs, {result['seconds']:.0f} s",
        flush=True,
    )
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--activation", default="sigmoid", choices=["sigmoid", "relu"])
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="orderings in the trained mixture (1: one NADE, raster)",
    )
    p.add_argument(
        "--block",
        type=int,
        default=0,
        help="steps per block of the blockwise path (0: the default; 64 on CUDA)",
    )
    p.add_argument(
        "--batch-size", type=int, default=512, help="batch size of the throughput comparison"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument(
        "--skip-throughput", action="store_true", help="train only (no speed comparison)"
    )
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--time-budget-min", type=float, default=0.0)
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument(
        "--max-train",
        type=int,
        default=0,
        help="use only the first N training images (a quick check)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads for both paths (0: default)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--zero-init-bias",
        action="store_true",
        help="keep output biases at 0 (default: logits of the training means)",
    )
    p.add_argument("--progress", action="store_true")
    p.add_argument("--run-dir", default=None, help="keep the trained model in this run folder")
    p.add_argument(
        "--data-dir", default=os.environ.get("CHAINRULE_DATA", str(ROOT.parent / "shared" / "data"))
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nade.json"))
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not args.block:
        args.block = 64
    data = binarized_mnist(args.data_dir, dtype=torch.float32)
    out = {
        "benchmark": "nade",
        "command": "python "
        + " ".join(
            [os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": now(),
        f"machine_{device.type}": machine(device),
        "torch_version": torch.__version__,
        "data": "binarized MNIST, fixed binarization (Larochelle & Murray 2011), 50000/10000/10000",
    }
    print(f"{out['command']}\n{machine(device)}", flush=True)
    dev = device.type + (f"_threads{args.threads}" if args.threads else "")
    if not args.skip_throughput:
        t = throughput(args, device, data)
        out[f"throughput_{dev}"] = t
        out[f"train_images_per_s_{dev}"] = t["train_images_per_s"]
        out[f"train_speedup_vs_loop_{dev}"] = t["train_speedup"]
        out[f"sample_images_per_s_{dev}"] = t["sample_images_per_s"]
        out[f"sample_speedup_vs_loop_{dev}"] = t["sample_speedup"]
    if not args.throughput_only:
        result = training(args, device, data)
        out["training"] = result
        out["test_nll_nats"] = result["test_nll_nats"]
        out["test_nll_stderr"] = result.get("test_nll_stderr")
        out["epochs"] = result["epochs"]
        out["wall_time_s"] = result["seconds"]
        out["training_device"] = str(device)
        out["training_command"] = out["command"]
        out["published_test_nll_nats"] = {
            "Larochelle & Murray 2011": 88.86,
            "Uria et al. 2016": 88.33,
        }
        out["target_test_nll_nats"] = 88.0
        check = bool(args.max_train) or result["epochs"] < 20
        out["training_is_check_run"] = check
        out["training_note"] = (
            "A CHECK RUN of the training part (subset and/or few epochs), not the benchmark "
            "figure: run the full command on a GPU for the published-comparable test NLL."
            if check
            else "Full training run on the fixed binarization."
        )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # merge with the file: a GPU training run keeps the CPU throughput figures and vice versa
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    history = old.pop("history", [])
    summary = {k: out[k] for k in ("command", "date") if k in out}
    summary.update(
        {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    history.append(summary)
    if old.get("training_is_check_run") is False and out.get("training_is_check_run"):
        for k in [
            k
            for k in out
            if k.startswith("training")
            or k in ("test_nll_nats", "test_nll_stderr", "epochs", "wall_time_s")
        ]:
            out.pop(k)  # a check run never replaces a full training result
    merged = {**old, **out, "history": history[-20:]}
    write_json(path, merged)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
