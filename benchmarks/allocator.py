"""glibc's defaults against freed memory kept (``chainrule.allocator``): a training step's time.

Each configuration runs in its own process (glibc's thresholds cannot be put back once set):
``default`` (glibc as it comes: large freed blocks go back to the system, so a step's tensors
can be fresh pages every time) and ``kept`` (:func:`chainrule.allocator.keep_freed_memory`, as
the trainer and the commands run), each in two processes: ``data``, which loads binarized MNIST
first as the trainer does, and ``bare``, which trains on a random binary batch without loading
anything (a script of the user's own). glibc's default threshold moves up after a large block
is freed, so what the process did before the first step decides whether the default reuses
memory; ``kept`` does not depend on it. Per process: the trainer's step (log-likelihood,
backward, Adam) of the paper-size networks at ``--batch``, ``--steps`` steps after two of
warm-up; the median step, the page faults (``ru_minflt``) per step and the resident size at the
end. Rounds alternate the order of the configurations; medians over ``--repeats`` rounds; the
ratio of the medians.

    python benchmarks/allocator.py                 # about 8 minutes on 2 cores
    python benchmarks/allocator.py --models row-lstm --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, child_json, header, load_average, write_json

CONFIGS = ("default", "kept")
SOURCES = ("data", "bare")


def child(
    model_name: str, config: str, source: str, batch: int, steps: int, data_dir: str | None
) -> None:
    """One process's measurement, printed as one JSON line."""
    from chainrule import allocator

    if config == "kept":
        assert allocator.keep_freed_memory(), "glibc's thresholds could not be set"
    import torch
    from _common import binarized_mnist
    from roofline import options, train_step

    import chainrule

    torch.manual_seed(0)
    model = chainrule.build(model_name, (1, 28, 28), 2, **options(model_name, "paper"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if source == "data":
        x = binarized_mnist(data_dir)["train"][:batch].float()
    else:
        x = (torch.rand(batch, 1, 28, 28) < 0.3).float()
    for _ in range(2):
        train_step(model, opt, x, "float32")
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, opt, x, "float32")
        times.append(time.perf_counter() - t0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * resource.getpagesize()
    print(
        json.dumps(
            {
                "step_s": statistics.median(times),
                "img_per_s": batch / statistics.median(times),
                "page_faults_per_step": (usage.ru_minflt - faults0) / steps,
                "resident_mib": rss / 2**20,
                "threads": torch.get_num_threads(),
            }
        )
    )


def measure(model: str, config: str, source: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", model, config, source]
    cmd += ["--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return child_json(cmd, f"{model} ({config}, {source})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="row-lstm,diagonal-bilstm,pixelcnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "allocator.json")
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.batch, args.steps, args.data_dir)
        return
    models = args.models.split(",")
    doc = header(batch=args.batch, steps=args.steps, repeats=args.repeats, loads=[])
    runs: dict[str, dict[str, list[dict]]] = {
        m: {f"{c}, {src}": [] for src in SOURCES for c in CONFIGS} for m in models
    }
    for r in range(args.repeats):
        doc["loads"].append(load_average())
        for m in models:
            for src in SOURCES:
                for c in CONFIGS if r % 2 == 0 else reversed(CONFIGS):
                    runs[m][f"{c}, {src}"].append(measure(m, c, src, args))
    doc["loads"].append(load_average())
    doc["results"] = {}
    print(f"batch {args.batch}, {args.steps} steps per process, medians of {args.repeats}")
    print(f"{'model':16} {'glibc, source':15} {'step ms':>8} {'img/s':>7} {'faults/step':>11} "
          f"{'resident MiB':>12}")  # fmt: skip
    for m in models:
        doc["results"][m] = {}
        for key, rs in runs[m].items():
            med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
            doc["results"][m][key] = {**med, "runs": rs}
            print(f"{m:16} {key:15} {1e3 * med['step_s']:8.1f} {med['img_per_s']:7.1f} "
                  f"{med['page_faults_per_step']:11.0f} {med['resident_mib']:12.0f}")  # fmt: skip
        for src in SOURCES:
            res = doc["results"][m]
            ratio = res[f"default, {src}"]["step_s"] / res[f"kept, {src}"]["step_s"]
            res[f"speedup, {src}"] = ratio
            print(f"{m:16} {src}: kept {ratio:.2f}x glibc's defaults")
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
