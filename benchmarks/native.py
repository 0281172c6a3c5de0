"""The compiled kernels (``chainrule.native``) against the PyTorch paths they replace, one process.

For each model (paper sizes, 28x28 binarized MNIST: the Diagonal BiLSTM 7 x 16, whose
recurrence's walk is compiled; NADE H=500, whose whole loop is) and batch size: a training step
(forward, backward, Adam step) with the kernel and with ``chainrule.native.disabled()`` (the
PyTorch path), interleaved round by round, the order flipped every other round; medians,
their ratio, and the share of a 1024 x 1024 float32 matmul burst timed in the same process
(FLOPs counted on the PyTorch path by ``FlopCounterMode``, as in ``benchmarks/roofline.py``).
Writes ``benchmarks/results/native.json``.

    python benchmarks/native.py                                   # ~3 min on 2 cores
    python benchmarks/native.py --models diagonal-bilstm --batch 32 64 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import ROOT, binarized_mnist, header, load_average, set_threads, write_json
from roofline import Peak, count_flops, options

import chainrule  # noqa: E402
from chainrule import native  # noqa: E402

MODELS = ("diagonal-bilstm", "row-lstm", "nade")


def row_product(batches: list[int], peak: Peak) -> list[dict]:
    """The Row LSTM's product of a row (paper size: B*28 pixels x (3*32 input + 3*16 state
    taps) @ (144 x 64 gates)) timed alone, best of 5 bursts of 100, as a share of the peak."""
    out = []
    for b in batches:
        m, k, n = b * 28, 3 * 32 + 3 * 16, 64
        a, w, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
        res = torch.empty(m, n)
        torch.addmm(bias, a, w, out=res)
        best = min(
            timed_burst(lambda a=a, w=w, bias=bias, res=res: torch.addmm(bias, a, w, out=res))
            for _ in range(5)
        )
        gflops = 2 * m * k * n / best / 1e9
        share = gflops / max(peak.burst(), max(peak.gflops))
        out.append({"batch": b, "shape": [m, k, n], "gflops": gflops, "share_of_peak": share})
        print(
            f"Row LSTM row product {m} x {k} @ {k} x {n}: {gflops:.0f} GFLOP/s, {share:.0%} of the peak"
        )
    return out


def timed_burst(fn, n: int = 100) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", nargs="+", type=int, default=[32, 64])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "native.json"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    for stem in native.STEMS:  # build (or load) before any timing
        if native.load(stem) is None:
            raise SystemExit(f"the native {stem} kernel is unavailable: {native.why_not(stem)}")
    data = binarized_mnist(args.data_dir)["train"]
    peak = Peak(torch.float32, 0.25)
    doc = header(threads=torch.get_num_threads(), load_average_at_start=load_average())
    rows = []
    for name in args.models:
        opts = options(name, "paper") if name != "nade" else {"hidden": 500}
        torch.manual_seed(0)
        model = chainrule.build(name, (1, 28, 28), 2, **opts)
        opt = torch.optim.Adam(model.parameters(), lr=1e-6)
        for b in args.batch:
            x = data[:b].float()
            flops = count_flops(model, x)["train"]

            def step(model=model, opt=opt, x=x) -> None:
                opt.zero_grad(set_to_none=True)
                (-model.training_log_prob(x).mean()).backward()
                opt.step()

            def step_pytorch(step=step) -> None:
                with native.disabled():
                    step()

            fns = {"native": step, "pytorch": step_pytorch}
            for fn in fns.values():
                fn()
            times: dict[str, list[float]] = {k: [] for k in fns}
            peaks = []
            for r in range(args.repeats):
                peaks.append(peak.burst())
                for k in reversed(fns) if r % 2 else fns:
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            best_peak = max(peaks)
            row = {
                "model": name,
                "batch": b,
                "img_per_s_native": b / med["native"],
                "img_per_s_pytorch": b / med["pytorch"],
                "speedup": med["pytorch"] / med["native"],
                "gflop_per_image_train": flops / 1e9,
                "matmul_peak_gflops_best": best_peak,
                "share_of_peak_native": flops * b / med["native"] / 1e9 / best_peak,
                "share_of_peak_pytorch": flops * b / med["pytorch"] / 1e9 / best_peak,
                "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
            }
            rows.append(row)
            print(
                f"{name} B={b}: native {row['img_per_s_native']:.1f} img/s, PyTorch "
                f"{row['img_per_s_pytorch']:.1f} img/s -> {row['speedup']:.2f}x; share of the "
                f"{best_peak:.0f} GFLOP/s matmul peak {row['share_of_peak_native']:.1%} "
                f"(PyTorch {row['share_of_peak_pytorch']:.1%})",
                flush=True,
            )
    doc["rows"] = rows
    if "row-lstm" in args.models:  # how fast the Row LSTM's per-row product runs alone
        doc["row_lstm_row_product"] = row_product(args.batch, peak)
    doc["load_average_at_end"] = load_average()
    print(f"wrote {write_json(args.out, doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
