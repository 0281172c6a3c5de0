"""Sampling speed: cached incremental vs naive (one full pass per pixel and channel).

For each layer type (PixelCNN 12 x 64, Row LSTM and Diagonal BiLSTM 7 x 16, the paper's
binarized-MNIST sizes) at 28 x 28 binary and at 32 x 32 RGB with 256 levels (same networks), and
batch sizes 16 and 128: images/s of ``sample(n, method="cached")`` and of the naive sampler, and
the speed-up ratio. NADE (500 hidden units, the paper's size) sampling beside them.

The naive sampler takes hundreds to thousands of seconds per batch on two CPU cores, so by
default its time is EXTRAPOLATED, and the JSON says so in every row: the naive sampler's step
for pixel row ``r`` is exactly one network pass over rows ``0..r`` plus one head draw; that step
is timed (median of repeats) at a few rows, interpolated linearly over ``r`` and summed over all
``C * H * W`` steps. ``--check`` also times one complete naive run of a small case and reports
measured vs predicted. ``--naive full`` times complete naive runs instead (for a GPU).

Usage:
    python benchmarks/sampling.py                      # CPU, writes benchmarks/results/sampling.json
    python benchmarks/sampling.py --device cuda        # writes benchmarks/results/sampling_cuda.json
    python benchmarks/sampling.py --quick              # a smoke run (small, seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import write_json

import chainrule
from chainrule.models.pixelrnn import PRESETS

CONFIGS = {"mnist": ((1, 28, 28), 2), "rgb": ((3, 32, 32), 256)}
MODELS = ["pixelcnn", "row-lstm", "diagonal-bilstm"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def naive_extrapolated(
    model, n: int, device: str, rows: int, repeats: int
) -> tuple[float, list[int]]:
    """Predicted seconds of one naive ``sample(n, method="naive")``: the step at row ``r`` (one
    pass over rows 0..r and a head draw) timed at ``rows`` rows, interpolated, summed."""
    c, h, w = model.event_shape
    x = torch.zeros(n, c, h, w, device=device)
    u = torch.rand(n, device=device, dtype=torch.float64)
    at = sorted({round(i * (h - 1) / max(rows - 1, 1)) for i in range(rows)})

    @torch.no_grad()
    def step(r):
        params = model._params(x[:, :, : r + 1])[:, c - 1, r, w - 1]
        x[:, c - 1, r, w - 1] = model.head.sample(params, u)

    step(h - 1)  # warm up
    t_at = [timed(lambda r=r: step(r), device, repeats) for r in at]
    total = 0.0
    for r in range(h):  # linear interpolation between the timed rows
        j = max(i for i, a in enumerate(at) if a <= r)
        if at[j] == r or j == len(at) - 1:
            t = t_at[j]
        else:
            f = (r - at[j]) / (at[j + 1] - at[j])
            t = (1 - f) * t_at[j] + f * t_at[j + 1]
        total += t * w * c
    return total, at


def sample_fn(model, n: int, method: str | None, seed: int = 0, **options):
    """A closure drawing ``n`` images. ``"cached"``: ``model.sample(n, method="cached")`` (the
    library's incremental decoder, :mod:`chainrule.sampling`); ``"naive"``: ``model.sample(n, method="naive")``;
    ``None``: the model's own sampler (NADE)."""

    def fn():
        g = torch.Generator().manual_seed(seed)
        if method is None:
            return model.sample(n, generator=g, **options)
        return model.sample(n, generator=g, method=method, **options)

    return fn


def machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--batches", nargs="+", type=int, default=[16, 128])
    p.add_argument(
        "--repeats", type=int, default=1, help="timed repeats of each cached run (median)"
    )
    p.add_argument("--naive", choices=["extrapolate", "full"], default="extrapolate")
    p.add_argument(
        "--naive-rows", type=int, default=4, help="rows at which the naive step is timed"
    )
    p.add_argument("--check", action="store_true", help="also time one full naive run (small case)")
    p.add_argument(
        "--check-only",
        action="store_true",
        help="only the --check run, added to the existing JSON at --out (its command is appended)",
    )
    p.add_argument("--nade-hidden", type=int, default=500)
    p.add_argument("--no-graph", action="store_true", help="cuda: skip the CUDA-graph rows")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 x 8 images, batch 4")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 1
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = dict(CONFIGS)
    if args.quick:
        configs = {"mnist": ((1, 8, 8), 2), "rgb": ((3, 6, 6), 256)}
        args.batches = [4]
    out = Path(
        args.out
        or f"benchmarks/results/sampling{'_cuda' if dev == 'cuda' else ''}{'_quick' if args.quick else ''}.json"
    )
    torch.manual_seed(0)
    results, nade_rows = [], []
    if args.check_only:
        args.check, args.configs = True, []
    for cname in args.configs:
        shape, levels = configs[cname]
        for name in args.models:
            opts = PRESETS[name]["paper-mnist"]
            model = chainrule.build(name, event_shape=shape, levels=levels, **opts).to(dev).eval()
            for n in args.batches:
                sample_fn(model, n, "cached")()  # warm-up (allocator, kernels)
                t_cached = timed(sample_fn(model, n, "cached"), dev, args.repeats)
                if args.naive == "full":
                    t_naive, how = (
                        timed(sample_fn(model, n, "naive"), dev, 1),
                        "measured: one complete run",
                    )
                else:
                    t_naive, at = naive_extrapolated(model, n, dev, args.naive_rows, 3)
                    how = (
                        f"EXTRAPOLATED: the naive step (one pass over rows 0..r + head draw) timed at "
                        f"rows {at} (median of 3), interpolated linearly in r, summed over all "
                        f"{shape[0] * shape[1] * shape[2]} steps"
                    )
                graph = {}
                if dev == "cuda" and not args.no_graph:
                    try:  # record once (timed), then replays
                        fn = sample_fn(model, n, "cached", cuda_graph=True)
                        graph["cached_graph_first_call_s"] = round(timed(fn, dev, 1), 4)
                        t_graph = timed(fn, dev, max(args.repeats, 3))
                        graph["cached_graph_replay_s"] = round(t_graph, 4)
                        graph["cached_graph_images_per_s"] = round(n / t_graph, 3)
                        graph["speedup_graph"] = round(t_naive / t_graph, 1)
                        same = torch.equal(fn(), sample_fn(model, n, "cached")())
                        graph["graph_equals_eager"] = same
                        print(
                            f"      cuda graph: replay {t_graph:.3f} s, speed-up "
                            f"{t_naive / t_graph:.1f}x, same images as eager: {same}",
                            flush=True,
                        )
                    except Exception as e:  # report, keep the other figures
                        graph["cached_graph_error"] = f"{type(e).__name__}: {e}"
                        print(f"      cuda graph failed: {graph['cached_graph_error']}", flush=True)
                row = {
                    "model": name,
                    "config": cname,
                    "event_shape": list(shape),
                    "levels": levels,
                    "options": opts,
                    "parameters": model.num_parameters(),
                    "batch": n,
                    "cached_s": round(t_cached, 4),
                    "cached_images_per_s": round(n / t_cached, 3),
                    "naive_s": round(t_naive, 3),
                    "naive_images_per_s": round(n / t_naive, 5),
                    "naive_method": how,
                    "speedup": round(t_naive / t_cached, 1),
                    **graph,
                }
                results.append(row)
                print(
                    f"{cname:5s} {name:16s} batch {n:4d}: cached {t_cached:8.2f} s ({n / t_cached:8.2f} img/s), "
                    f"naive {t_naive:9.1f} s ({'extrapolated' if args.naive != 'full' else 'measured'}), "
                    f"speed-up {t_naive / t_cached:7.1f}x",
                    flush=True,
                )
        nade = (
            chainrule.build("nade", event_shape=shape, levels=levels, hidden=args.nade_hidden)
            .to(dev)
            .eval()
        )
        for n in args.batches:
            fn = sample_fn(nade, n, None)
            fn()
            t = timed(fn, dev, args.repeats)
            nade_rows.append(
                {
                    "model": "nade",
                    "config": cname,
                    "event_shape": list(shape),
                    "levels": levels,
                    "hidden": args.nade_hidden,
                    "batch": n,
                    "sample_s": round(t, 4),
                    "images_per_s": round(n / t, 3),
                }
            )
            print(
                f"{cname:5s} {'nade':16s} batch {n:4d}: {t:8.2f} s ({n / t:8.2f} img/s)", flush=True
            )
    check = None
    if args.check:
        shape, levels = configs["mnist"]
        model = chainrule.build(
            "row-lstm", event_shape=shape, levels=levels, **PRESETS["row-lstm"]["paper-mnist"]
        ).to(dev)
        n = 4
        predicted, at = naive_extrapolated(model, n, dev, args.naive_rows, 3)
        measured = timed(sample_fn(model, n, "naive"), dev, 1)
        check = {
            "model": "row-lstm",
            "config": "mnist",
            "batch": n,
            "predicted_s": round(predicted, 2),
            "measured_s": round(measured, 2),
            "measured_over_predicted": round(measured / predicted, 3),
        }
        print(
            f"extrapolation check (row-lstm, mnist, batch {n}): predicted {predicted:.1f} s, "
            f"measured {measured:.1f} s (ratio {measured / predicted:.2f})",
            flush=True,
        )
    if args.check_only:
        doc = json.loads(out.read_text())
        doc["extrapolation_check"] = check
        doc["check_command"] = " ".join([sys.executable.split("/")[-1], *sys.argv])
        doc["check_date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        )
        write_json(out, doc)
        print(f"updated {out}")
        return 0
    doc = {
        "benchmark": "sampling",
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(dev),
        "device": dev,
        "torch": torch.__version__,
        "dtype": str(torch.get_default_dtype()),
        "note": (
            "images/s of model.sample(n, method='cached') vs method='naive' (one network pass per "
            "pixel and channel), same weights (random init), median of repeats; "
            + (
                "naive times are EXTRAPOLATED from per-step timings (see naive_method in each row)"
                if args.naive == "extrapolate"
                else "naive times are measured complete runs"
            )
            + (
                f". CPU: {torch.get_num_threads()} torch thread(s) for the naive passes (the cached "
                "sampler always runs its small products on one thread)"
                if dev == "cpu"
                else ""
            )
            + ". The rgb rows use the MNIST-size networks on 32x32x3, 256 levels (not the paper's "
            "larger CIFAR networks). NADE: default sampler, O(DH) per image."
        ),
        "results": results,
        "nade": nade_rows,
        "extrapolation_check": check,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
