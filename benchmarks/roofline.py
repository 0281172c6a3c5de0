"""How close each model's CPU step comes to the machine's matrix-multiply peak (a roofline).

For each model (``pixelcnn`` 12 layers x 64 maps, ``row-lstm`` and ``diagonal-bilstm`` 7 x 16:
the ``paper-mnist`` presets; ``nade`` and ``made`` with H = 500), batch size (``--batch``,
default 64) and dtype (float32, and bf16 autocast on the CPU), on 28 x 28 binary images of the
fixed binarized MNIST:

* ``train``: one training step, what the trainer does (``-model.training_log_prob(x).sum()``, backward, Adam);
* ``eval``: ``model.log_prob(x)`` under ``torch.no_grad()``.

Reported per row: images/s (median over ``--repeats`` interleaved rounds), GFLOP per image
(``torch.utils.flop_counter.FlopCounterMode``: forward + backward for ``train``, forward for
``eval``; it counts matrix products and convolutions, and here matrix-vector products and
in-place matrix products (``addmm_``, ``baddbmm_``) too, never elementwise work such as the
LSTM gates), achieved GFLOP/s, and the share of the matmul peak measured *in the same process*: the best of many
bursts of 1024 x 1024 matrix products (float32, and bfloat16 for the bf16 rows), one burst
before each model in each round, so that the drift of a shared machine touches both. Only these
same-process shares are comparable between runs; the absolute figures move with the load
(recorded per round).

bf16: the weights stay float32; ``torch.autocast("cpu", dtype=torch.bfloat16)`` casts the
products (as ``chainrule train --bf16`` does). The script reports whether the CPU has bf16
matrix units (``/proc/cpuinfo``: ``amx_bf16``, ``avx512_bf16``; torch's CPU capability and
oneDNN's bf16 check). Without them a bf16 product is emulated and far slower: a variant whose
warm-up call (train + eval) takes longer than ``--slow-s`` keeps that one call as its
measurement and is not repeated (``"repeats": 1, "warmup_kept": true`` in the JSON). A call
shorter than ``--min-time-s`` is repeated k times within one measurement (k set at the warm-up);
every other round runs the models and variants in reverse order.

CPU autocast casts matrix products (mm, bmm, addmm, convolutions) but not matrix-vector
products: NADE's loop (``torch.mv``) runs in float32 under it, so its bf16 rows time the same
float32 work twice, a measure of the noise.

Written to ``benchmarks/results/roofline.json`` (``--out``) and printed as a table.

Examples::

    python benchmarks/roofline.py --threads 2                       # the default run (< 10 min)
    python benchmarks/roofline.py --quick                           # smoke run, about a minute
    python benchmarks/roofline.py --models pixelcnn --batch 16,64 --dtypes float32
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from functools import partial
from typing import Any

import torch
from _common import RESULTS, binarized_mnist, header, load_average, set_threads, timed, write_json
from torch.utils.flop_counter import FlopCounterMode

import chainrule  # noqa: E402
from chainrule import native  # noqa: E402
from chainrule.models.pixelrnn import PRESETS, preset_options  # noqa: E402

MODELS = ("pixelcnn", "row-lstm", "diagonal-bilstm", "nade", "made")
DTYPES = ("float32", "bf16")
LABELS = {
    ("pixelcnn", "paper"): "PixelCNN 12 layers x 64 maps",
    ("row-lstm", "paper"): "Row LSTM 7 x 16",
    ("diagonal-bilstm", "paper"): "Diagonal BiLSTM 7 x 16",
    ("nade", "paper"): "NADE H=500",
    ("made", "paper"): "MADE H=500",
}
PEAK_N = 1024


# ---------------------------------------------------------------------- the machine
def bf16_hardware() -> dict[str, Any]:
    """What the CPU offers for bf16 products: the library's check (/proc/cpuinfo flags, torch's
    CPU capability, :mod:`chainrule.training.bf16`) and oneDNN's own answer."""
    from chainrule.training.bf16 import cpu_bf16

    info = cpu_bf16()
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # a private op: absent in some builds
        onednn = None
    return {
        "cpu": info["cpu"],
        "bf16_flags_found": info["bf16_flags_found"],
        "torch_cpu_capability": info["torch_cpu_capability"],
        "onednn_bf16_supported": onednn,
        "has_bf16_matrix_units": info["has_bf16_units"],
        "summary": f"{info['summary']}; torch CPU capability {info['torch_cpu_capability']}; "
        f"oneDNN bf16 supported: {onednn}",
    }


class Peak:
    """Bursts of ``PEAK_N`` x ``PEAK_N`` products in one dtype; the burst is sized once (at
    least one product, about ``target_s`` seconds), so a slow dtype costs one product a burst."""

    def __init__(self, dtype: torch.dtype, target_s: float):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(PEAK_N, PEAK_N, generator=g).to(dtype)
        self.b = torch.randn(PEAK_N, PEAK_N, generator=g).to(dtype)
        self.out = torch.empty(PEAK_N, PEAK_N, dtype=dtype)
        torch.mm(self.a, self.b, out=self.out)  # warm-up
        one = math.inf  # the size of a burst: from the fastest of three products
        for _ in range(3):
            t0 = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            one = min(one, time.perf_counter() - t0)
            if one > 1.0:  # a slow dtype: one is enough
                break
        self.per_burst = max(1, min(64, round(target_s / max(one, 1e-6))))
        self.gflops: list[float] = []

    def burst(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.per_burst):
            torch.mm(self.a, self.b, out=self.out)
        el = time.perf_counter() - t0
        self.gflops.append(2 * PEAK_N**3 * self.per_burst / el / 1e9)
        return self.gflops[-1]

    def summary(self) -> dict[str, Any]:
        return {
            "best_gflops": max(self.gflops),
            "median_gflops": statistics.median(self.gflops),
            "bursts": len(self.gflops),
            "products_per_burst": self.per_burst,
            "all_gflops": [round(v, 3) for v in self.gflops],
        }


# ---------------------------------------------------------------------- the models
def options(name: str, size: str) -> dict[str, Any]:
    if name in PRESETS:
        return preset_options(name, "paper-mnist" if size == "paper" else "cpu-small")
    return {"hidden": 500 if size == "paper" else 100}


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def train_step(model, opt, x: torch.Tensor, dtype: str) -> None:
    model.train()
    with autocast(dtype):
        nll_sum = -model.training_log_prob(x).sum()
    opt.zero_grad(set_to_none=True)
    (nll_sum.float() / len(x)).backward()  # the trainer's step: float32 loss under bf16
    opt.step()


def eval_pass(model, x: torch.Tensor, dtype: str) -> None:
    model.eval()
    with torch.no_grad(), autocast(dtype):
        model.log_prob(x).sum().item()


def _mv_flop(a_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]  # (n, m) @ (m,)


def _addmv_flop(self_shape, a_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _addr_flop(self_shape, u_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * u_shape[0] * v_shape[0]  # self + u v^T: a multiply and an add per entry


def _dot_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0]


#: matrix-vector products, which the counter leaves out by default (NADE's per-step loop is
#: made of them: torch.mv for v_i . h_i, addr_ in its backward)
VECTOR_PRODUCTS = {
    torch.ops.aten.mv: _mv_flop,
    torch.ops.aten.addmv: _addmv_flop,
    torch.ops.aten.addr: _addr_flop,
    torch.ops.aten.addr_: _addr_flop,
    torch.ops.aten.dot: _dot_flop,
}


def _addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]  # as the counter's own addmm


def _baddbmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]


#: in-place matrix products, which the counter does not know either (the Diagonal BiLSTM's
#: fused recurrence adds the pixel-to-the-left product, and in its backward the products back
#: to the previous diagonal, in place with baddbmm_)
IN_PLACE_PRODUCTS = {
    torch.ops.aten.addmm_: _addmm_flop,
    torch.ops.aten.baddbmm_: _baddbmm_flop,
}


def counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={**VECTOR_PRODUCTS, **IN_PLACE_PRODUCTS})


def count_flops(model, x: torch.Tensor) -> dict[str, float]:
    """FLOPs per image: the training step's forward + backward, and evaluation's forward.

    The counter sees only PyTorch's operations, not a compiled kernel's arithmetic
    (``chainrule.native``: NADE's loop, the recurrences' walks), so the FLOPs are counted
    on the PyTorch paths, which do the same products."""
    with native.disabled():
        return _count_flops(model, x)


def _count_flops(model, x: torch.Tensor) -> dict[str, float]:
    model.train()
    with counter() as fc:
        (-model.training_log_prob(x).sum() / len(x)).backward()
    train = fc.get_total_flops()
    model.zero_grad(set_to_none=True)
    model.eval()
    with counter() as fc, torch.no_grad():
        model.log_prob(x)
    return {"train": train / len(x), "eval": fc.get_total_flops() / len(x)}


# ---------------------------------------------------------------------- the measurement
def run(args) -> dict[str, Any]:
    data = binarized_mnist(args.data_dir)["train"]
    hw = bf16_hardware()
    print(hw["summary"], flush=True)
    peaks = {"float32": Peak(torch.float32, args.burst_s)}
    if "bf16" in args.dtypes:
        peaks["bf16"] = Peak(torch.bfloat16, args.burst_s)

    variants = []  # one per (model, batch, dtype)
    models = {}
    for name in args.models:
        opts = options(name, args.size)
        torch.manual_seed(0)
        model = chainrule.build(name, (1, 28, 28), 2, **opts)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        flops = {b: count_flops(model, data[:b].float()) for b in args.batch}
        models[name] = (model, opt, opts, flops)
        for b in args.batch:
            for dt in args.dtypes:
                variants.append(
                    {
                        "model": name,
                        "batch": b,
                        "dtype": dt,
                        "train_s": [],
                        "eval_s": [],
                        "round": [],
                        "slow": False,
                    }
                )

    loads = []
    fp32_before: dict[tuple[int, str], float] = {}  # (round, model) -> the burst just before
    t_start = time.perf_counter()
    for r in range(args.repeats + 1):  # round 0 is the warm-up
        loads.append(load_average())
        if "bf16" in peaks:  # once a round: without bf16 units a burst is seconds long
            peaks["bf16"].burst()
        flip = r % 2 == 1  # every other round in reverse order, so that no variant is always first
        for name in reversed(args.models) if flip else args.models:
            fp32_before[(r, name)] = peaks["float32"].burst()
            model, opt, _, _ = models[name]
            mine = [v for v in variants if v["model"] == name]
            for v in reversed(mine) if flip else mine:
                if v["slow"] and r > 0:
                    continue
                x = data[: v["batch"]].float()
                train = partial(train_step, model, opt, x, v["dtype"])
                evaluate = partial(eval_pass, model, x, v["dtype"])
                if r == 0:  # the warm-up: decide how many calls one measurement makes
                    t_train, t_eval = timed(train)[0], timed(evaluate)[0]
                    if t_train + t_eval > args.slow_s:  # too slow to repeat: keep this call
                        v["slow"] = True
                        v["train_s"].append(t_train)
                        v["eval_s"].append(t_eval)
                        v["round"].append(r)
                    else:  # fast calls are timed k at a time (at least --min-time-s)
                        t_train, t_eval = timed(train)[0], timed(evaluate)[0]
                        v["calls"] = {
                            "train": max(1, math.ceil(args.min_time_s / t_train)),
                            "eval": max(1, math.ceil(args.min_time_s / t_eval)),
                        }
                    continue
                for mode, fn in (("train", train), ("eval", evaluate)):
                    k = v["calls"][mode]
                    v[f"{mode}_s"].append(timed(partial(_calls, fn, k))[0] / k)
                v["round"].append(r)
        el = time.perf_counter() - t_start
        what = "warm-up" if r == 0 else f"round {r}/{args.repeats}"
        print(f"  {what} done, {el:.0f} s, load {loads[-1]}", flush=True)

    best = {k: p.summary()["best_gflops"] for k, p in peaks.items()}
    rows = []
    for v in variants:
        model, _, opts, flops = models[v["model"]]
        for mode in ("train", "eval"):
            times = v[f"{mode}_s"]
            ips = [v["batch"] / t for t in times]
            med = statistics.median(ips)
            gfi = flops[v["batch"]][mode] / 1e9
            ach = med * gfi
            # the same round's fp32 burst, taken just before this model's measurements
            same = [
                (v["batch"] / t) * gfi / fp32_before[(r, v["model"])]
                for t, r in zip(times, v["round"], strict=True)
            ]
            row = {
                "model": v["model"],
                "label": LABELS.get((v["model"], args.size), v["model"]),
                "size": args.size,
                "options": opts,
                "batch": v["batch"],
                "dtype": "float32" if v["dtype"] == "float32" else "bf16 autocast",
                "mode": mode,
                "img_per_s": med,
                "img_per_s_all": [round(i, 3) for i in ips],
                "repeats": len(ips),
                "calls_per_measurement": v.get("calls", {}).get(mode, 1),
                "warmup_kept": v["slow"],
                "gflop_per_image": gfi,
                "achieved_gflops": ach,
                "share_of_fp32_peak": ach / best["float32"],
                "share_of_fp32_burst_same_round_median": statistics.median(same),
            }
            if v["dtype"] == "bf16":
                row["share_of_bf16_peak"] = ach / best["bf16"]
            rows.append(row)

    ratios: dict[str, Any] = {}
    if {"float32", "bf16"} <= set(args.dtypes):
        by = {(r["model"], r["batch"], r["dtype"], r["mode"]): r for r in rows}
        for name in args.models:
            for b in args.batch:
                ratios.setdefault(name, {})[str(b)] = {
                    mode: by[(name, b, "bf16 autocast", mode)]["img_per_s"]
                    / by[(name, b, "float32", mode)]["img_per_s"]
                    for mode in ("train", "eval")
                }
    return {
        "bf16_hardware": hw,
        "matmul_peak": {
            "size": f"{PEAK_N}x{PEAK_N} @ {PEAK_N}x{PEAK_N}",
            "float32": peaks["float32"].summary(),
            **({"bf16": peaks["bf16"].summary()} if "bf16" in peaks else {}),
            **(
                {"bf16_over_float32_best": best["bf16"] / best["float32"]} if "bf16" in best else {}
            ),
        },
        "load_average_per_round": loads,
        "load_average_at_end": load_average(),
        "seconds": time.perf_counter() - t_start,
        "results": rows,
        "bf16_over_float32_img_per_s": ratios,
    }


def _calls(fn, k: int) -> None:
    for _ in range(k):
        fn()


def table(doc: dict[str, Any]) -> str:
    pk = doc["matmul_peak"]
    lines = [
        f"matmul peak (best of {pk['float32']['bursts']} bursts): float32 "
        f"{pk['float32']['best_gflops']:.1f} GFLOP/s"
        + (
            f", bf16 {pk['bf16']['best_gflops']:.2f} GFLOP/s"
            f" ({pk['bf16_over_float32_best']:.3f}x float32)"
            if "bf16" in pk
            else ""
        ),
        f"{'model':30} {'B':>4} {'dtype':6} {'mode':5} {'img/s':>9} {'GFLOP/img':>9} "
        f"{'GFLOP/s':>8} {'%fp32pk':>7} {'%bf16pk':>7} {'n':>2}",
    ]
    for r in doc["results"]:
        dt = "fp32" if r["dtype"] == "float32" else "bf16"
        bf = f"{100 * r['share_of_bf16_peak']:6.1f}%" if "share_of_bf16_peak" in r else ""
        lines.append(
            f"{r['label']:30} {r['batch']:>4} {dt:6} {r['mode']:5} {r['img_per_s']:9.1f} "
            f"{r['gflop_per_image']:9.4f} {r['achieved_gflops']:8.2f} "
            f"{100 * r['share_of_fp32_peak']:6.1f}% {bf:>7} {r['repeats']:>2}"
        )
    for name, per_b in doc.get("bf16_over_float32_img_per_s", {}).items():
        for b, rr in per_b.items():
            lines.append(
                f"bf16/float32 {name} B={b}: train {rr['train']:.2f}x, eval {rr['eval']:.2f}x"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: %(default)s")
    p.add_argument("--batch", default="64", help="batch sizes, comma-separated (default 64)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="float32 and/or bf16")
    p.add_argument("--size", default="paper", choices=["paper", "small"])
    p.add_argument("--repeats", type=int, default=3, help="measured rounds after the warm-up")
    p.add_argument(
        "--slow-s",
        type=float,
        default=20.0,
        help="a variant whose warm-up train + eval takes longer is measured once (that call)",
    )
    p.add_argument(
        "--min-time-s",
        type=float,
        default=0.3,
        help="a faster call is repeated within one measurement to last at least this long",
    )
    p.add_argument("--burst-s", type=float, default=0.5, help="seconds of one matmul burst")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data-dir", default=None, help="default: $CHAINRULE_DATA")
    p.add_argument(
        "--quick", action="store_true", help="small sizes, batch 16, one round: a smoke run"
    )
    p.add_argument("--out", default=str(RESULTS / "roofline.json"))
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.batch = [int(b) for b in args.batch.split(",") if b]
    for m in args.models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}: use {', '.join(MODELS)}")
    for d in args.dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r}: use {', '.join(DTYPES)}")
    if args.quick:
        args.size, args.repeats, args.batch, args.slow_s = "small", 1, [16], 3.0
        args.min_time_s, args.burst_s = 0.1, 0.25
    set_threads(args.threads)
    doc = header(
        benchmark="roofline",
        settings={
            "models": args.models,
            "batch": args.batch,
            "dtypes": args.dtypes,
            "size": args.size,
            "repeats": args.repeats,
            "slow_s": args.slow_s,
            "min_time_s": args.min_time_s,
            "burst_s": args.burst_s,
            "threads": torch.get_num_threads(),
            "env": {
                k: os.environ.get(k)
                for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
            },
        },
        data="binarized MNIST (fixed binarization), the first B training images",
        notes=[
            "img_per_s: median over the measured rounds; the matmul peak: best burst.",
            "FLOPs: torch.utils.flop_counter (matrix products and convolutions only, plus the "
            "matrix-vector products mv/addmv/addr/dot it leaves out by default: NADE's loop is "
            "made of them, and the in-place products addmm_/baddbmm_ of the Diagonal BiLSTM's "
            "fused recurrence); train = forward + backward of the training objective, eval = "
            "forward of log_prob; elementwise work (LSTM gates, activations) is not counted.",
            "share_of_fp32_peak = achieved GFLOP/s / best float32 burst of the whole run; "
            "share_of_fp32_burst_same_round_median uses the burst taken just before the model "
            "in the same round (drift-corrected).",
            "CPU autocast leaves torch.mv in float32: NADE's bf16 rows are float32 work, their "
            "ratio to the float32 rows shows the noise of the measurement.",
            "The machine is shared: absolute figures move with the load (per round below); "
            "only the same-process shares and ratios compare across runs.",
        ],
    )
    doc.update(run(args))
    write_json(args.out, doc)
    print(table(doc))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
