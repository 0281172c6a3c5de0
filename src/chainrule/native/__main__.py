"""``python -m chainrule.native``: build the compiled kernels now (each once per machine) and say
where they are, or why the PyTorch paths will run instead (exit status 1 then)."""

from __future__ import annotations

import sys
import warnings

from . import STEMS, load, report


def main() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reason is in the report
        lines = report()
    print("\n".join(lines))
    return 0 if all(load(s) is not None for s in STEMS) else 1


if __name__ == "__main__":
    sys.exit(main())
