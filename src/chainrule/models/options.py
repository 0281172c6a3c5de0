"""Fields and checks shared by the models' config dataclasses (one wording of each option and
of each error)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from ..orderings import SPEC_NAMES

#: the ``ordering`` option's help where a model has one ordering
ORDERING_HELP = f"pixel ordering: {SPEC_NAMES} or a permutation (default raster)"


def ordering_field(help: str = ORDERING_HELP) -> Any:
    """The ``ordering`` option (``raster``, ``random:SEED`` or a permutation), raster by
    default; checked by :func:`chainrule.orderings.check_ordering_spec`."""
    return field(default="raster", metadata={"help": help})


def smoothing_field(counted: str) -> Any:
    """The pseudo-count of a closed-form fit, added to every ``counted``."""
    return field(
        default=0.5,
        metadata={"help": f"pseudo-count added to every {counted} by the closed-form fit"},
    )


def check_int(v: Any, name: str, lo: int) -> None:
    """``v`` is an int (not a bool) ``>= lo``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def check_nonnegative(v: Any, name: str) -> None:
    """``v >= 0`` (NaN refused)."""
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v}")


def check_choice(v: Any, name: str, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")
