"""Before and after a change: sampling and training speed of two source trees, in alternating
processes.

Each measurement runs in a fresh process that imports ``chainrule`` from the given ``src``
folder. Sampling: a model with fixed weights (28 x 28 binary, the benchmark sizes of
``benchmarks/sampling.py``), ``sample(16)`` timed (median of 3 after a warm-up, one thread).
Training (``--train``): the whole run of ``chainrule train --model M --epochs 3 --quiet`` on the
embedded digits (one thread; loading, three epochs with validation, test, pictures).
The two trees alternate, model by model, round by round (the order flips every round), so
that the machine's drift falls on both; the ratio of the medians over rounds is reported.

Example (the tree before the one-sampler redesign against this one)::

    git worktree add /tmp/old 925766c^
    python benchmarks/compare_trees.py /tmp/old/src src --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import _common as common

CHILD = """
import sys, time, statistics
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import chainrule
opts = {"pixelcnn": dict(hidden=32, layers=12), "row-lstm": dict(hidden=16, layers=7),
        "diagonal-bilstm": dict(hidden=16, layers=7), "nade": dict(hidden=500)}[sys.argv[2]]
torch.manual_seed(0)
m = chainrule.build(sys.argv[2], event_shape=(1, 28, 28), levels=2, **opts).eval()
m.sample(16, generator=torch.Generator().manual_seed(0))
ts = []
for _ in range(3):
    t = time.perf_counter()
    x = m.sample(16, generator=torch.Generator().manual_seed(1))
    ts.append(time.perf_counter() - t)
print(statistics.median(ts), float(x.sum()))
"""


TRAIN_CHILD = """
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from chainrule.cli import main
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    main(["train", "--model", sys.argv[2], "--epochs", "3", "--out", d + "/r", "--quiet"])
    seconds = time.perf_counter() - t
    print(seconds, json.load(open(d + "/r/result.json"))["test_nll_nats"])
"""


def measure(src: str, model: str, train: bool = False) -> tuple[float, float]:
    child = TRAIN_CHILD if train else CHILD
    p = subprocess.run(
        [sys.executable, "-c", child, src, model], capture_output=True, text=True, check=True
    )
    seconds, total = p.stdout.split()[-2:]
    return float(seconds), float(total)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", help="the src folder of the tree before the change")
    p.add_argument("new", help="the src folder of the tree after it")
    p.add_argument("--models", default="nade,pixelcnn,row-lstm,diagonal-bilstm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train", action="store_true", help="time training runs instead of sampling")
    p.add_argument("--out", default=str(common.RESULTS / "compare_trees.json"))
    args = p.parse_args(argv)
    what = "train: chainrule train --epochs 3 on digits" if args.train else "sample(16)"
    doc = common.header(old=args.old, new=args.new, measured=what, threads=1)
    rows = []
    for model in args.models.split(","):
        times: dict[str, list[float]] = {"old": [], "new": []}
        sums = set()
        for r in range(args.rounds):
            for tag in ("old", "new") if r % 2 == 0 else ("new", "old"):
                s, total = measure(getattr(args, tag), model, args.train)
                times[tag].append(s)
                sums.add(total)
        ratio = statistics.median(times["new"]) / statistics.median(times["old"])
        rows.append(
            {
                "model": model,
                "old_s": times["old"],
                "new_s": times["new"],
                "new_over_old_time": ratio,
                ("same_test_nll" if args.train else "same_samples"): len(sums) == 1,
            }
        )
        same = "same test NLL" if args.train else "same samples"
        print(f"{model:16s} new/old time {ratio:.2f}  ({same}: {len(sums) == 1})", flush=True)
    doc["results"] = rows
    doc["load_average_at_end"] = common.load_average()
    print(f"wrote {common.write_json(args.out, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
