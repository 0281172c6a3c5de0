"""The ladder on the embedded digits data set: every rung is a recipe (``digits-ladder-*`` in
:mod:`chainrule.recipes`), trained by the CLI's own command ``chainrule train --recipe NAME``.

Closed-form fits for the tabular rungs, the model's trainer defaults for the others; writes the
test NLL of each to ``benchmarks/results/ladder_digits.json``; the README's digits rows come
from here. The reference is the independent-pixel model fitted in the same run
(ratio = its NLL / model's). ``--keep DIR`` keeps the run folders (the shipped
``pretrained:digits-ladder-*`` weights come from such runs: ``python -m chainrule.pretrained
add DIR/NAME --recipe NAME``).

    python benchmarks/ladder_digits.py [--keep DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, header, write_json

from chainrule import recipes

RUNGS = [n for n in recipes.names() if n.startswith("digits-ladder-")]
FIELDS = (
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep", default=None, help="keep the run folders in this folder")
    p.add_argument("--out", default=str(RESULTS / "ladder_digits.json"), help="result JSON")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep) if args.keep else Path(tmp)
        for name in RUNGS:
            out = where / name
            cmd = [sys.executable, "-m", "chainrule", "train", "--recipe", name, "--quiet"]
            subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, text=True)
            result = json.loads((out / "result.json").read_text())
            rows.append(
                {
                    "command": recipes.recipe_command(name),
                    "recipe": name,
                    **{k: result[k] for k in FIELDS},
                }
            )
            print(f"{name:32s} {result['test_nll_nats']:8.3f} nats  {result['seconds']:6.1f} s")
    ref = rows[0]["test_nll_nats"]
    for r in rows:
        r["ratio_reference_over_model"] = ref / r["test_nll_nats"]
    doc = {
        "benchmark": "ladder_digits",
        **header(),
        "data": "digits (scikit-learn 8x8, binarized at 8; 1257/270/270, seed 0)",
        "reference": "independent pixels, closed-form fit",
        "rows": rows,
    }
    path = write_json(args.out, doc)
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
