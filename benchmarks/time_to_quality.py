"""Time to quality: record finished training runs (their learning curves, test NLL, CPU hours
and command) in one JSON, and draw their curves on one picture.

    python benchmarks/time_to_quality.py runs/diagonal-bilstm-2h [RUN ...]

Each run folder's own files are read (``config.json``, ``metrics.jsonl``, ``result.json``,
written by ``chainrule train``); nothing is recomputed. The JSON
(``benchmarks/results/time_to_quality.json``) keeps one entry per run name, so runs recorded in
different sessions accumulate; the picture (``docs/time_to_quality.png``) draws the valid NLL of
every recorded run against the minutes of its budget's clock (CPU minutes under
``--budget-clock cpu``: all threads together, so two busy cores give two CPU minutes a minute),
with each run's test NLL at its end and the published figure, where there is one, as a line.

A run trained with the ``cosine-time`` schedule anneals its learning rate over its whole budget:
a point of its curve is where that run was at that minute, not what a shorter budget would give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import RESULTS, ROOT, header, now, write_json

#: test NLL (nats) published for fixed binarized MNIST (PixelRNN paper, Table 4; NADE 2016)
PUBLISHED = {
    "pixelcnn": 81.30,
    "row-lstm": 80.54,
    "diagonal-bilstm": 79.20,
    "nade": 88.33,
}


def read_run(path: Path) -> dict:
    """One run's record from its folder (a finished run: ``result.json`` must be there)."""
    missing = [
        n for n in ("config.json", "metrics.jsonl", "result.json") if not (path / n).is_file()
    ]
    if missing:
        raise SystemExit(f"error: {path} is not a finished run (no {', '.join(missing)})")
    config = json.loads((path / "config.json").read_text())
    result = json.loads((path / "result.json").read_text())
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
    clock = result.get("clock", "wall")
    seconds = float(result["seconds"])
    return {
        "run": path.name,
        "command": config.get("command"),
        "resume": f"chainrule train --resume {path}",
        "model": config["model"],
        "options": config.get("options"),
        "data": config.get("data"),
        "recipe": (config.get("recipe") or {}).get("name"),
        "threads": result.get("threads"),
        "clock": clock,
        "seconds": seconds,
        # the whole run (training, validation, test, samples) and the training with its
        # validations alone (the budget's part: the last epoch's row)
        "cpu_hours": round(seconds / 3600, 3) if clock == "cpu" else None,
        "wall_hours": round(seconds / 3600, 3) if clock != "cpu" else None,
        "training_minutes": round(rows[-1]["seconds"] / 60, 2) if rows else None,
        "epochs": result.get("epochs"),
        "best_epoch": result.get("best_epoch"),
        "stop_reason": result.get("stop_reason"),
        "best_valid_nll": result.get("best_valid_nll"),
        "test_nll_nats": result.get("test_nll_nats"),
        "test_nll_stderr": result.get("test_nll_stderr"),
        "num_parameters": result.get("num_parameters"),
        "published_test_nll": PUBLISHED.get(config["model"]),
        "curve": [
            {
                "minutes": round(r["seconds"] / 60, 2),
                "epoch": r["epoch"],
                "train_nll": r["train_nll"],
                "valid_nll": r.get("valid_nll"),
            }
            for r in rows
        ],
        "recorded": now(),
    }


def draw(runs: list[dict], path: Path) -> Path:
    from chainrule import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(sorted(runs, key=lambda r: r["run"])):
        colour = colours[i % len(colours)]
        pts = [p for p in r["curve"] if p["valid_nll"] is not None]
        unit = "CPU min" if r["clock"] == "cpu" else "min"
        end = r["training_minutes"]
        label = f"{r['run']} ({r['model']}): test {r['test_nll_nats']:.2f} after {end:.0f} {unit}"
        ax.plot([p["minutes"] for p in pts], [p["valid_nll"] for p in pts], "o-", ms=3,
                color=colour, label=label)  # fmt: skip
        ax.plot([end], [r["test_nll_nats"]], "*", ms=10, color=colour)
        if r.get("published_test_nll"):
            ax.axhline(r["published_test_nll"], color=colour, ls=":", lw=1)
    ax.set_xlabel("minutes of training on the run's clock (CPU minutes: both threads counted)")
    ax.set_ylabel("valid NLL (nats per image); star: test")
    ax.set_title("time to quality, fixed binarized MNIST (dotted: published test NLL)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return plots._save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--json", type=Path, default=RESULTS / "time_to_quality.json")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "time_to_quality.png")
    args = p.parse_args()
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": {}}
    for path in args.runs:
        rec = read_run(path)
        doc["runs"][rec["run"]] = rec
        print(
            f"{rec['run']}: {rec['model']}, test {rec['test_nll_nats']:.3f} "
            f"± {rec['test_nll_stderr']:.3f} nats after {rec['training_minutes']:.1f} "
            f"{'CPU ' if rec['clock'] == 'cpu' else ''}min of training ({rec['seconds'] / 60:.1f} "
            f"with the test), {rec['epochs']} epochs "
            f"(published {rec['published_test_nll']})"
        )
    doc.update(header())
    write_json(args.json, doc)
    print(f"wrote {args.json} and {draw(list(doc['runs'].values()), args.png)}")


if __name__ == "__main__":
    main()
