"""Threads and OpenMP's wait policy: what a training step gets from the second core.

Each configuration runs in its own process (OpenMP reads ``OMP_WAIT_POLICY`` once, at start):
one thread; two threads with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep); two threads with
the default policy (idle threads spin a while before sleeping). Per configuration: training
steps (the trainer's: log-likelihood, backward, Adam) of the paper-size networks on binarized
MNIST at ``--batch`` for ``--seconds``, the images per second of wall time, the cores the
process kept busy (its CPU time over the wall time), and the images per CPU second, which is
what a run under ``--budget-clock cpu`` gets for its budget. Rounds alternate the order of the
configurations; medians over ``--repeats`` rounds; ratios against one thread measured in the
same run.

    python benchmarks/threads.py                        # about 5 minutes on a quiet machine
    python benchmarks/threads.py --models diagonal-bilstm --seconds 10 --repeats 1

Run it on a quiet machine: a second process on the two cores changes the figures (spinning
threads suffer most from it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, child_json, header, load_average, write_json

CONFIGS = {  # name: (threads, OMP_WAIT_POLICY or None for the default)
    "1 thread": (1, None),
    "2 threads, passive": (2, "PASSIVE"),
    "2 threads, default": (2, None),
}


def child(model_name: str, batch: int, seconds: float, data_dir: str | None) -> None:
    """One configuration's measurement, printed as one JSON line (runs in its own process)."""
    import torch
    from _common import binarized_mnist
    from roofline import options, train_step

    import chainrule

    torch.manual_seed(0)
    model = chainrule.build(model_name, (1, 28, 28), 2, **options(model_name, "paper"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = binarized_mnist(data_dir)["train"][:batch].float()
    train_step(model, opt, x, "float32")  # warm-up
    t0, c0, steps = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < seconds:
        train_step(model, opt, x, "float32")
        steps += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "img_per_s": batch * steps / wall,
                "cores_busy": cpu / wall,
                "img_per_cpu_s": batch * steps / cpu,
                "steps": steps,
            }
        )
    )


def measure(model: str, config: str, args) -> dict:
    threads, policy = CONFIGS[config]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--child", model, "--batch", str(args.batch)]
    cmd += ["--seconds", str(args.seconds)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return child_json(cmd, f"{model} ({config})", env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="diagonal-bilstm,row-lstm,pixelcnn")
    p.add_argument("--batch", type=int, default=32, help="the PixelRNN recipes' batch size")
    p.add_argument("--seconds", type=float, default=12.0, help="of training steps per measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "threads.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.batch, args.seconds, args.data_dir)
        return
    models = args.models.split(",")
    doc = header(batch=args.batch, seconds=args.seconds, repeats=args.repeats, loads=[])
    runs: dict[str, dict[str, list[dict]]] = {m: {c: [] for c in CONFIGS} for m in models}
    for r in range(args.repeats):
        doc["loads"].append(load_average())
        for m in models:
            configs = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
            for c in configs:
                runs[m][c].append(measure(m, c, args))
    doc["loads"].append(load_average())
    doc["results"] = {}
    print(f"batch {args.batch}, {args.seconds:g} s per measurement, medians of {args.repeats}")
    print(f"{'model':16} {'configuration':20} {'img/s':>7} {'vs 1 thread':>11} "
          f"{'cores busy':>10} {'img per CPU s':>13}")  # fmt: skip
    for m in models:
        base = statistics.median(x["img_per_s"] for x in runs[m]["1 thread"])
        doc["results"][m] = {}
        for c in CONFIGS:
            med = {k: statistics.median(x[k] for x in runs[m][c]) for k in runs[m][c][0]}
            med["vs_1_thread"] = med["img_per_s"] / base
            doc["results"][m][c] = {**med, "runs": runs[m][c]}
            print(f"{m:16} {c:20} {med['img_per_s']:7.1f} {med['vs_1_thread']:10.2f}x "
                  f"{med['cores_busy']:10.2f} {med['img_per_cpu_s']:13.1f}")  # fmt: skip
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
