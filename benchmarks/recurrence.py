"""The Row LSTM and Diagonal BiLSTM layers' CPU training step: the fused recurrence against
the plain eager oracle (and, optionally, an earlier commit's fast path), in one process.

For each layer (paper size by default: 32 input features, 16 units, ``1 x 3`` Row LSTM
kernels, the Diagonal BiLSTM with the image as context, 28 x 28 maps, batch ``--batch``) and
each variant, one training step of the layer alone: forward, then backward of ``(y * v).sum()``
with respect to the input and every parameter. Variants:

* ``fused``: the library's layer (the whole recurrence one autograd node with a hand-written
  backward through time, :mod:`chainrule.models.layers`);
* ``oracle``: the eager oracle of the tests (``tests/oracles/pixelrnn.py``, imported as ``tests.oracles``:
  the Row LSTM one row at a time, the Diagonal BiLSTM one pixel at a time, plain autograd);
* ``previous``: with ``--previous REV``, the layer's ``forward`` of ``src/chainrule/models/
  layers.py`` at git revision ``REV`` (read with ``git show``) on the same module and weights
  (the path before the fused recurrence: one product per step, autograd through the loop).

The variants run interleaved, ``--repeats`` rounds after one call of each (the warm-up and the
check), the order reversed every other round; reported: the median seconds per step, images/s
and the ratio of each variant's median to the fused one (> 1: the fused path is that many times
faster). The outputs and gradients of the variants are compared once (per tensor, the max abs
difference over the max abs value of the fused one; the largest over the output and all
gradients; float32).
The machine is shared: the load average is recorded at the start and per round, with the
thread count and torch version (``machine`` in the JSON).

Written to ``benchmarks/results/recurrence.json`` (``--out``)::

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 python benchmarks/recurrence.py --threads 2 \\
        --previous d1a31c8
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import types
from typing import Any

import torch
from _common import RESULTS, ROOT, header, load_average, set_threads, timed, write_json

from chainrule.models.layers import DiagonalBiLSTMLayer, RowLSTMLayer  # noqa: E402
from tests.oracles import pixelrnn as oracle_module  # noqa: E402

LAYERS = ("row", "diag")


def module_from_source(name: str, source: str):
    """A module made from source text (a file of an earlier revision)."""
    mod = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def previous_forward(rev: str):
    """The recurrent layers' ``forward`` functions of ``layers.py`` at git revision ``rev``."""
    src = subprocess.run(
        ["git", "show", f"{rev}:src/chainrule/models/layers.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    old = module_from_source(f"layers_{rev}", src)
    return {"row": old.RowLSTMLayer.forward, "diag": old.DiagonalBiLSTMLayer.forward}


def build(layer: str, features: int, units: int, size: int, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    if layer == "row":
        mod: torch.nn.Module = RowLSTMLayer(features, units, 1, kernel=3)
        context = None
    else:
        mod = DiagonalBiLSTMLayer(features, units, 1, context_ch=1)
        context = torch.rand(batch, 1, size, size).round() * 2 - 1  # a binary image in [-1, 1]
    x = torch.randn(batch, features, size, size, requires_grad=True)
    v = torch.randn(batch, units, size, size)
    return mod, x, context, v


def variants(layer: str, mod, oracle, previous) -> dict[str, Any]:
    if layer == "row":
        out = {
            "fused": lambda x, c: mod(x),
            "oracle": lambda x, c: oracle.row_lstm_reference(mod, x),
        }
    else:
        out = {
            "fused": lambda x, c: mod(x, c),
            "oracle": lambda x, c: oracle.diagonal_bilstm_reference(mod, x, c),
        }
    if previous is not None:
        fwd = types.MethodType(previous[layer], mod)
        out["previous"] = (lambda x, c: fwd(x)) if layer == "row" else (lambda x, c: fwd(x, c))
    return out


def train_step(fn, mod, x, context, v) -> list[torch.Tensor]:
    y = fn(x, context)
    return list(torch.autograd.grad((y * v).sum(), [x, *mod.parameters()])) + [y.detach()]


def run(args) -> dict[str, Any]:
    set_threads(args.threads)
    previous = previous_forward(args.previous) if args.previous else None
    doc: dict[str, Any] = header(
        benchmark="recurrence",
        settings={
            "batch": args.batch,
            "size": args.size,
            "features": args.features,
            "units": args.units,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "previous": args.previous,
            "layers": args.layers,
        },
        notes=[
            "one training step of the layer alone: forward + backward of (y * v).sum() w.r.t. "
            "the input and every parameter; float32; medians over the measured rounds",
            "ratio = median seconds of the variant / median seconds of fused (> 1: fused faster)",
            "oracle: tests/oracles/pixelrnn.py (plain eager, autograd through every step)",
        ],
    )
    doc["load_average_per_round"] = []
    doc["results"] = []
    for layer in args.layers:
        mod, x, context, v = build(layer, args.features, args.units, args.size, args.batch)
        fns = variants(layer, mod, oracle_module, previous)
        ref = train_step(fns["fused"], mod, x, context, v)  # warm-up, and the check
        diffs = {}
        for name, fn in fns.items():
            if name != "fused":
                got = train_step(fn, mod, x, context, v)
                diffs[name] = max(
                    ((a - b).abs().max() / b.abs().max()).item()
                    for a, b in zip(got, ref, strict=True)
                )
        times: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        for rnd in range(args.repeats):
            for name in names if rnd % 2 == 0 else names[::-1]:
                args_ = (fns[name], mod, x, context, v)
                t, _ = timed(lambda a=args_: train_step(*a))
                times[name].append(t)
            doc["load_average_per_round"].append(load_average())
            print(f"  {layer} round {rnd + 1}/{args.repeats} load {load_average()}", flush=True)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        row = {
            "layer": "Row LSTM" if layer == "row" else "Diagonal BiLSTM (context)",
            "seconds_per_step": med,
            "img_per_s": {name: args.batch / t for name, t in med.items()},
            "ratio_to_fused": {name: t / med["fused"] for name, t in med.items()},
            "all_seconds": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
            "max_rel_difference_to_fused": diffs,
        }
        doc["results"].append(row)
    doc["load_average_at_end"] = load_average()
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [f"{'layer':28s} {'variant':9s} {'s/step':>8s} {'img/s':>8s} {'x fused':>8s}"]
    for r in doc["results"]:
        for name, t in r["seconds_per_step"].items():
            lines.append(
                f"{r['layer']:28s} {name:9s} {t:8.3f} {r['img_per_s'][name]:8.1f} "
                f"{r['ratio_to_fused'][name]:8.2f}"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", default="row,diag", help="comma-separated, of: row,diag")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28, help="H = W of the maps")
    p.add_argument("--features", type=int, default=32, help="input features (paper: 2 x 16)")
    p.add_argument("--units", type=int, default=16)
    p.add_argument("--repeats", type=int, default=11, help="measured rounds after the warm-up call")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--previous", default="", help="git revision whose layer forward is timed too ('': none)"
    )
    p.add_argument("--quick", action="store_true", help="batch 4, 8 x 8, 2 rounds: a smoke run")
    p.add_argument("--out", default=str(RESULTS / "recurrence.json"))
    args = p.parse_args(argv)
    args.layers = [s for s in args.layers.split(",") if s]
    for layer in args.layers:
        if layer not in LAYERS:
            raise SystemExit(f"unknown layer {layer!r}: use {', '.join(LAYERS)}")
    if args.quick:
        args.batch, args.size, args.repeats = 4, 8, 2
    doc = run(args)
    print(table(doc))
    print(f"wrote {write_json(args.out, doc)}")


if __name__ == "__main__":
    sys.exit(main())
