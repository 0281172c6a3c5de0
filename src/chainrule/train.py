"""The trainer's former home, kept so that ``from chainrule.train import ...`` goes on working.

Everything lives in :mod:`chainrule.training` now (options, :class:`Trainer`, the run folder,
schedules, hooks); this module only re-exports its public names.
"""

from __future__ import annotations

from .evaluate import bits_per_dim
from .training import (
    RUN_FILES,
    STATE_FORMAT,
    RunConfig,
    RunFolder,
    TrainConfig,
    Trainer,
    TrainingError,
    TrainingInterrupted,
    check_run_folder,
    describe_result,
    load_state,
    preflight_run_folder,
    read_counters,
    read_run_config,
    read_state,
    resolve_device,
    save_state,
    train,
    train_subset,
)

__all__ = [
    "RUN_FILES",
    "STATE_FORMAT",
    "RunConfig",
    "RunFolder",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "bits_per_dim",
    "check_run_folder",
    "describe_result",
    "load_state",
    "preflight_run_folder",
    "read_counters",
    "read_run_config",
    "read_state",
    "resolve_device",
    "save_state",
    "train",
    "train_subset",
]
