"""The trainer's options (:class:`TrainConfig`, the ``chainrule train`` flags) and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .hooks import START_HOOKS
from .schedules import SCHEDULES


@dataclass
class TrainConfig:
    """Options of the trainer (the CLI's ``chainrule train`` flags).

    Every field is written into the run folder's ``config.json`` (key ``"train"``) and read back
    by :func:`chainrule.training.run_folder.read_run_config`.
    """

    epochs: int = 20
    batch_size: int = 64  # the global batch: split over the processes under torchrun
    lr: float = 1e-3
    seed: int = 0
    patience: int = 5  # epochs without a better valid NLL before stopping; 0 never stops early
    #: validate every N epochs (and always when the run stops): for models whose validation
    #: costs more than an epoch (a MADE ensemble); patience then counts validations
    valid_every: int = field(
        default=1,
        metadata={
            "help": "validate every N epochs (and when the run stops); the best weights are "
            "chosen among the validated epochs, and --patience counts validations"
        },
    )
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    #: "constant"; "cosine" (decays to 0 over `epochs`); "cosine-time" (decays to 0 over the
    #: time budget, step by step: the run anneals fully whatever the machine's speed)
    lr_schedule: str = "constant"
    eval_batch_size: int = 256
    device: str = "auto"
    closed_form: bool = False  # fit by counting (models with a `fit` method) instead of Adam
    max_train: int = 0  # use only N training images, a random subset (0: all)
    time_budget_min: float = 0.0  # stop after this many minutes of training (0: no budget)
    #: what the time budget (and cosine-time, and the reported seconds) counts: "wall" clock
    #: time, or the process's "cpu" time (all threads: on a shared machine a run then gets the
    #: same computation whatever the load beside it)
    budget_clock: str = field(
        default="wall",
        metadata={
            "choices": ["wall", "cpu"],
            "help": "what --time-budget counts: wall-clock minutes, or CPU minutes of this "
            "process (all threads together: two threads spend a CPU minute in 30 s; a run on a "
            "loaded machine then does the same work, only later)",
        },
    )
    num_samples: int = 64  # images drawn for samples.png
    progress: bool = True
    checkpoint_every: int = 0  # also save the training state every N steps (0: not by steps)
    checkpoint_minutes: float = 5.0  # ... and at least every M minutes within an epoch (0: off)
    bf16: bool = False  # bf16 autocast for the training forward/backward (CUDA, or bf16 CPUs)
    dtype: str = ""  # "float32" or "float64": cast the model first ("": keep its dtype)
    #: a start-of-run hook (chainrule.training.hooks): output biases at the data's
    #: log-frequencies, on fresh runs
    init_output_bias: bool = False

    def hooks(self) -> list[str]:
        """The start-of-run hooks this run asks for: every registered hook whose bool field of
        the same name is True, in the order they were registered."""
        return [name for name in START_HOOKS if getattr(self, name, False) is True]

    def validate(self) -> None:
        """Raise ValueError (one line naming the field) for any option out of its range."""
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "num_samples",
            "checkpoint_every",
            "valid_every",
        ):
            v = getattr(self, name)
            low = 0 if name == "checkpoint_every" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                kind = "an int >= 0" if low == 0 else "a positive int"
                raise ValueError(f"{name} must be {kind}, got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip", "time_budget_min", "checkpoint_minutes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("patience", "max_train"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("weight_decay", "grad_clip", "time_budget_min", "checkpoint_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(
                f"lr_schedule must be 'constant', 'cosine' or 'cosine-time', got {self.lr_schedule!r}"
            )
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock must be wall or cpu, got {self.budget_clock!r}")
        if self.lr_schedule == "cosine-time" and not self.time_budget_min:
            raise ValueError("lr_schedule cosine-time needs a time budget (--time-budget MIN)")
        if not isinstance(self.device, str) or (
            self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:")
        ):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("", "float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        for name in START_HOOKS:
            if not isinstance(getattr(self, name, False), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
