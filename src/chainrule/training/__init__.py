"""The trainer, in parts.

* :mod:`~chainrule.training.config`: :class:`TrainConfig` (the options) and its validation;
* :mod:`~chainrule.training.trainer`: :class:`Trainer` (``Trainer(model, splits, cfg,
  out).fit()``) and :func:`train`, its one-call form;
* :mod:`~chainrule.training.run_folder`: every file of a run folder, written and read
  (:func:`read_run_config`, the state files, the overwrite/preflight checks);
* :mod:`~chainrule.training.schedules`: the learning-rate schedules;
* :mod:`~chainrule.training.hooks`: named start-of-run hooks (``init_output_bias``);
* :mod:`~chainrule.training.report`: the text printed at the end (:func:`describe_result`).
"""

from .config import TrainConfig, resolve_device
from .errors import TrainingError, TrainingInterrupted
from .hooks import START_HOOKS, start_hook
from .report import describe_result
from .run_folder import (
    RUN_FILES,
    STATE_FORMAT,
    RunConfig,
    RunFolder,
    check_run_folder,
    load_state,
    preflight_run_folder,
    read_counters,
    read_run_config,
    read_state,
    save_state,
)
from .trainer import Trainer, train, train_subset

__all__ = [
    "RUN_FILES",
    "START_HOOKS",
    "STATE_FORMAT",
    "RunConfig",
    "RunFolder",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "check_run_folder",
    "describe_result",
    "load_state",
    "preflight_run_folder",
    "read_counters",
    "read_run_config",
    "read_state",
    "resolve_device",
    "save_state",
    "start_hook",
    "train",
    "train_subset",
]
