"""Learning-rate schedules of the trainer (``TrainConfig.lr_schedule``).

* ``constant``: ``lr`` throughout;
* ``cosine``: set at the start of every epoch, from ``lr`` down to 0 over ``epochs``;
* ``cosine-time``: set before every step, from ``lr`` down to 0 over the time budget (the run
  anneals fully whatever the machine's speed); needs ``time_budget_min``.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "cosine-time")


def epoch_lr(schedule: str, lr: float, epoch: int, epochs: int) -> float:
    """The learning rate at the start of epoch ``epoch`` (0-based)."""
    if schedule == "cosine" and epochs > 0:
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    return lr  # constant; cosine-time is set step by step (step_lr)


def step_lr(schedule: str, lr: float, elapsed: float, budget: float | None) -> float | None:
    """The learning rate of a step taken ``elapsed`` seconds into a run of ``budget`` seconds;
    None when the schedule does not change it step by step."""
    if schedule != "cosine-time" or not budget:
        return None
    frac = min(1.0, elapsed / budget)
    return 0.5 * lr * (1 + math.cos(math.pi * frac))
