"""The ladder on the embedded digits data set: every model trained by the CLI's own command.

Runs ``chainrule train`` for each rung (closed-form fits for the tabular ones, the model's
trainer defaults for the others) and writes the test NLL of each to
``benchmarks/results/ladder_digits.json``; the README's digits rows come from here.
The reference is the independent-pixel model fitted in the same run (ratio = its NLL / model's).

    python benchmarks/ladder_digits.py
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNGS = [
    ["--model", "independent", "--closed-form"],
    ["--model", "markov", "--closed-form", "--order", "1"],
    ["--model", "markov", "--closed-form", "--order", "2"],
    ["--model", "fvsbn"],
    [],  # the main job: `chainrule train` (NADE)
    ["--model", "pixelcnn"],
    ["--model", "row-lstm"],
    ["--model", "diagonal-bilstm"],
]


def main() -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, args in enumerate(RUNGS):
            out = Path(tmp) / f"run{i}"
            cmd = [sys.executable, "-m", "chainrule", "train", *args, "--quiet", "--out", str(out)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads((out / "result.json").read_text())
            shown = "chainrule train " + " ".join(shlex.quote(a) for a in args)
            rows.append(
                {
                    "command": shown.strip(),
                    **{
                        k: result[k]
                        for k in (
                            "model",
                            "test_nll_nats",
                            "test_nll_stderr",
                            "test_bits_per_dim",
                            "num_parameters",
                            "epochs",
                            "best_epoch",
                            "stop_reason",
                            "seconds",
                            "threads",
                        )
                    },
                }
            )
            print(
                f"{shown.strip():60s} {result['test_nll_nats']:8.3f} nats  {result['seconds']:6.1f} s"
            )
    ref = rows[0]["test_nll_nats"]
    for r in rows:
        r["ratio_reference_over_model"] = ref / r["test_nll_nats"]
    doc = {
        "benchmark": "ladder_digits",
        "command": "python benchmarks/ladder_digits.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}",
        "torch": torch.__version__,
        "data": "digits (scikit-learn 8x8, binarized at 8; 1257/270/270, seed 0)",
        "reference": "independent pixels, closed-form fit",
        "rows": rows,
    }
    path = ROOT / "benchmarks" / "results" / "ladder_digits.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
