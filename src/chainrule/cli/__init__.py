"""The ``chainrule`` command line (entry point ``chainrule.cli:main``).

    chainrule train                     # the main job: the default model on the embedded digits
    chainrule train --model M --data D [--epochs N] [--batch-size B] [--lr LR] [--seed S]
                    [--out RUN_DIR] [--resume RUN_DIR] [--overwrite] [--device auto|cpu|cuda] ...
    chainrule train --recipe NAME [flags that override it]         # see `chainrule recipes`
    chainrule eval --checkpoint RUN_DIR|pretrained:NAME [--data D] [--split test]
    chainrule sample --checkpoint RUN_DIR [--n N] [--out FILE.png] [--npz FILE.npz]
    chainrule complete --checkpoint RUN_DIR [--data D] --occlude bottom-half|right-half|box:x,y,w,h
                       |checkerboard|random:FRACTION [--n 8] [--samples 3] [--out completions.png]
    chainrule params --shape 1x28x28 --levels 2
    chainrule score --checkpoint RUN_DIR [--data D] [--out scores.csv]     # + per-pixel NLL maps
                    [--mask SPEC]                       # NLL of the visible pixels alone
    chainrule detect --checkpoint RUN_DIR [--in D_in] --ood D_out          # AUROC, histograms, ROC
                     [--mask SPEC]
    chainrule features --checkpoint RUN_DIR [--data D] [--out feats.npz]
    chainrule probe --checkpoint RUN_DIR --data D                          # features vs raw pixels
    chainrule receptive-field --model row-lstm                             # which pixels feed one
    chainrule recipes [NAME] [--json]                                      # named recipes
    chainrule pretrained                                                   # shipped weights

Modules: ``common`` (parser classes, argparse types, the shared flags --checkpoint --data
--device --batch-size --data-dir --quiet, checkpoint/data/default-output helpers),
``options`` (model and training flags generated from the config dataclasses), ``train``,
``evaluate`` (eval, sample, complete, params), ``tools`` (score, detect, features, probe),
``receptive_field``, ``recipes`` (recipes, pretrained), ``main`` (parser, main, errors).

What a user meets (tested command by command in tests/test_sweep_*.py):

* A mistake (a wrong option, a missing file, a foreign checkpoint, data of the wrong shape, an
  output path that cannot be written) ends in one line on stderr, before any work where it can
  be known before, and exit status 1 (2 for a malformed command line).
* A fault of the machine (a full disk, too little memory) ends in one line and exit status 1;
  every output file is written atomically, so nothing is ever half-written or lost.
* Ctrl-C (SIGINT) or SIGTERM: training saves its state and says how to resume (exit 130 / 143);
  other commands stop at once, leaving nothing behind.
* Progress bars only on a terminal; off one, plain lines; ``--quiet``: neither.
"""

from __future__ import annotations

from .common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    MAX_GRID,
    SAMPLE_BATCH,
    UserError,
    parse_shape,
)
from .main import build_parser, main
from .options import model_options
from .train import RESUME_MAY_CHANGE

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_MODEL",
    "MAX_GRID",
    "RESUME_MAY_CHANGE",
    "SAMPLE_BATCH",
    "UserError",
    "build_parser",
    "main",
    "model_options",
    "parse_shape",
]
