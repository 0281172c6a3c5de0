"""The two ways training stops before its end (shared by every module of :mod:`chainrule.training`)."""

from __future__ import annotations

from pathlib import Path


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable run folder); one clear message."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM stopped training; the state was saved where it stopped."""

    def __init__(self, run: Path | None, where: str, signum: int):
        self.run, self.where, self.signum = run, where, signum
        super().__init__(f"interrupted at {where}")
